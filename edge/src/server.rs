//! The edge's HTTP server: one current-thread tokio runtime per worker thread (one per core
//! by default), each accepting on its own clone of the listener, serving its connections with
//! hyper's HTTP/1 server and keeping its own pool of connections to allocations. A request
//! never leaves the thread that accepted its connection; only the route source is shared.
//!
//! The caller's future ([`run`]) starts the workers, waits for `shutdown`, then tells them
//! to stop accepting and waits until every in-flight request is answered (upgraded
//! WebSockets are not waited for). Dropping that future instead stops the workers at once.

use std::{
    convert::Infallible, future::Future, io, net::SocketAddr, pin::pin, sync::Arc, time::Duration,
};

use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    runtime::Runtime,
    sync::{mpsc, watch},
};
use tracing::Instrument;

use crate::{
    ServeError,
    body::Body,
    cold::{Cold, Decision, needs_policy},
    error::{self, EdgeError, Failed},
    proxy::{Client, Proxy},
    route::{RouteSource, Target, affinity_key, request_key},
};

/// How long a client may take to send a request's headers (also how long an idle keep-alive
/// connection stays open).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often each worker closes idle connections to allocations that expired.
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(15);
/// How long a worker waits after an accept error that is not one connection's (too many
/// open files…) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Worker threads by default: `RHONE_EDGE_WORKERS` if set to a positive number, else one
/// per available core.
pub fn default_workers() -> usize {
    std::env::var("RHONE_EDGE_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Serves `routes` on `listener` with `workers` threads until `shutdown` resolves.
pub(crate) async fn run<R: RouteSource>(
    listener: TcpListener,
    routes: R,
    cold: Option<Arc<Cold>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    workers: usize,
) -> Result<(), ServeError> {
    let workers = workers.max(1);
    let listener = listener.into_std().map_err(ServeError::Serve)?;
    let routes = Arc::new(routes);
    // `true`: stop accepting and finish in-flight requests. Dropped: stop at once.
    let (stop, stopped) = watch::channel(false);
    let (done_tx, mut done) = mpsc::unbounded_channel::<io::Result<()>>();
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let span = tracing::Span::current();
    for i in 0..workers {
        let listener = listener.try_clone().map_err(ServeError::Serve)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Serve)?;
        let worker = Worker {
            routes: routes.clone(),
            proxy: Proxy::new(),
            http: server_builder(),
            cold: cold.clone(),
        };
        let done = Done(Some(done_tx.clone()));
        let (dispatch, span, stopped) = (dispatch.clone(), span.clone(), stopped.clone());
        std::thread::Builder::new()
            .name(format!("rhone-edge-{i}"))
            .spawn(move || {
                let _dispatch = tracing::dispatcher::set_default(&dispatch);
                let result = work(runtime, listener, Arc::new(worker), stopped, span);
                done.send(result);
            })
            .map_err(ServeError::Serve)?;
    }
    drop((listener, done_tx));
    let mut shutdown = pin!(shutdown);
    let mut running = workers;
    let mut failed = None;
    tokio::select! {
        () = &mut shutdown => {}
        Some(result) = done.recv() => {
            // A worker stops only when told to: anything else stops the edge.
            running -= 1;
            failed = Some(result.err().unwrap_or_else(|| io::Error::other("an edge worker stopped")));
        }
    }
    let _ = stop.send(true);
    while running > 0 {
        let Some(result) = done.recv().await else {
            break;
        };
        running -= 1;
        if let Err(e) = result {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(ServeError::Serve(e)),
        None => Ok(()),
    }
}

/// Sends a worker's result when it ends, or that it panicked.
struct Done(Option<mpsc::UnboundedSender<io::Result<()>>>);

impl Done {
    fn send(mut self, result: io::Result<()>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(io::Error::other("an edge worker panicked")));
        }
    }
}

fn server_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b
}

/// What one worker thread holds.
struct Worker<R> {
    routes: Arc<R>,
    proxy: Proxy,
    http: http1::Builder,
    /// Waking, holding and the request classes, for a route with no ready allocation; none
    /// for an edge that only proxies (`serve_routes`).
    cold: Option<Arc<Cold>>,
}

/// One worker thread: accepts and serves until stopped.
fn work<R: RouteSource>(
    runtime: Runtime,
    listener: std::net::TcpListener,
    worker: Arc<Worker<R>>,
    stopped: watch::Receiver<bool>,
    span: tracing::Span,
) -> io::Result<()> {
    runtime.block_on(accept_loop(listener, worker, stopped).instrument(span))
}

async fn accept_loop<R: RouteSource>(
    listener: std::net::TcpListener,
    worker: Arc<Worker<R>>,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let pool = worker.proxy.pool().clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(POOL_SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            pool.sweep();
        }
    });
    // Connections hold a sender each: when all are dropped, every connection has ended.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let (drain, draining) = watch::channel(false);
    let graceful = loop {
        let accepted = tokio::select! {
            biased;
            changed = stopped.changed() => match changed {
                Ok(()) if *stopped.borrow() => break true,
                Ok(()) => continue,
                Err(_) => break false,
            },
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    worker.clone(),
                    stream,
                    peer,
                    draining.clone(),
                    open.clone(),
                ));
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    _ = stopped.changed() => {}
                }
            }
        }
    };
    drop(listener);
    if graceful {
        let _ = drain.send(true);
        drop(open);
        let _ = all_closed.recv().await;
    }
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one client connection until it closes, or finishes its request in flight and
/// closes once the worker drains.
async fn connection<R: RouteSource>(
    worker: Arc<Worker<R>>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    mut draining: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
) {
    let client = Arc::new(Client::new(peer));
    let w = worker.clone();
    let service = service_fn(move |req| {
        let (w, client) = (w.clone(), client.clone());
        async move { Ok::<_, Infallible>(w.handle(req, &client).await) }
    });
    let conn = worker
        .http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = pin!(conn);
    let drained = tokio::select! {
        biased;
        ended = conn.as_mut() => Some(ended),
        _ = draining.wait_for(|d| *d) => None,
    };
    let ended = match drained {
        Some(ended) => ended,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "client connection ended with an error");
    }
}

impl<R: RouteSource> Worker<R> {
    async fn handle(&self, req: Request<Incoming>, client: &Client) -> Response<Body> {
        // The load balancer's probe; the status is on the admin listener only.
        if req.uri().path() == "/_rhone/healthz" {
            return crate::admin::healthz(&*self.routes, req.method());
        }
        // A debug span: at the default `info` filter it is never built. Warnings name the
        // route key, epoch and allocation themselves.
        let span = tracing::debug_span!(
            "edge_request",
            route_key = tracing::field::Empty,
            epoch = tracing::field::Empty,
            allocation = tracing::field::Empty,
            method = %req.method(),
            path = req.uri().path(),
            peer = %client.peer,
        );
        if span.is_disabled() {
            self.route_and_forward(req, client, &span).await
        } else {
            let inner = span.clone();
            async move {
                let resp = self.route_and_forward(req, client, &inner).await;
                tracing::debug!(status = resp.status().as_u16(), "answered");
                resp
            }
            .instrument(span)
            .await
        }
    }

    async fn route_and_forward(
        &self,
        req: Request<Incoming>,
        client: &Client,
        span: &tracing::Span,
    ) -> Response<Body> {
        let mut req = req;
        let mut route = {
            let Some(key) = request_key(req.headers()) else {
                return error::respond(&EdgeError::MissingHost, Failed::default());
            };
            if !span.is_disabled() {
                span.record("route_key", &*key);
            }
            let failed = |e: &EdgeError| {
                let at = Failed {
                    route_key: Some(&key),
                    ..Failed::default()
                };
                error::respond(e, at)
            };
            match self.routes.route(&key).await {
                Ok(Some(route)) => route,
                Ok(None) => {
                    let e = EdgeError::NoRouteOwner {
                        route_key: (*key).to_owned(),
                    };
                    return failed(&e);
                }
                Err(e) => return failed(&e),
            }
        };
        route.activity.touch();
        let mut pinned = None;
        if let Some(cold) = &self.cold
            && (route.targets.is_empty() || needs_policy(req.method(), req.headers()))
        {
            match cold.decide(req, route, &*self.routes, client).await {
                Decision::Answer(resp) => return resp,
                Decision::Forward(r, ready) => (req, route) = (r, ready),
                Decision::ForwardTo(r, ready, allocation) => {
                    (req, route) = (r, ready);
                    pinned = Some(allocation);
                }
            }
        }
        let owner = &route.owner;
        let mut at = Failed {
            route_key: Some(&owner.route_key),
            epoch: Some(owner.epoch),
            allocation: None,
        };
        if !span.is_disabled() {
            span.record("epoch", owner.epoch);
        }
        let session = if route.targets.len() > 1 {
            affinity_key(req.headers(), req.uri())
        } else {
            None
        };
        let picked = match pinned {
            Some(id) => route.targets.iter().find(|t| t.allocation_id == id),
            None => route.pick(session.as_deref()),
        };
        let Some(target) = picked else {
            let e = EdgeError::NoReadyAllocation {
                route_key: owner.route_key.clone(),
                epoch: owner.epoch,
            };
            return error::respond(&e, at);
        };
        // The picked one first; the route's others if it cannot be reached (a pinned
        // request goes to its allocation only).
        let others: Vec<&Target> = match pinned {
            Some(_) => Vec::new(),
            None => route
                .targets
                .iter()
                .filter(|t| t.allocation_id != target.allocation_id)
                .collect(),
        };
        match self
            .proxy
            .forward(req, target, &others, client, &route.activity)
            .await
        {
            Ok((resp, answered)) => {
                if !span.is_disabled() {
                    span.record(
                        "allocation",
                        tracing::field::display(answered.allocation_id),
                    );
                }
                resp
            }
            Err((e, failed)) => {
                at.allocation = Some(failed.allocation_id);
                error::respond(&e, at)
            }
        }
    }
}
