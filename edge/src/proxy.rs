//! The reverse proxy: one request to one allocation over a pooled HTTP/1.1 connection, bodies
//! streamed both ways, hop-by-hop headers removed, forwarding headers added, and WebSocket
//! upgrades spliced into a byte pipe that lives as long as both sides keep it open.
//!
//! Each worker (one per core, see `server.rs`) has its own [`Proxy`]: a pool of idle hyper
//! HTTP/1 client connections per allocation address. A connection is taken for a request and
//! given back when the response body ends; no task is spawned per request and no lock is
//! shared between workers.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::{Body as HttpBody, Bytes, Frame, Incoming},
    client::conn::http1::SendRequest,
    header::{self, CONNECTION, HeaderMap, HeaderName, HeaderValue, UPGRADE},
    http::{Extensions, uri::Authority},
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use rhone_edge_classify::{connection_tokens, is_websocket_upgrade};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::{
    activity::Activity,
    body::Body,
    error::{BoxError, EdgeError},
    route::Target,
};

/// How long connecting to an allocation may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an allocation may take to send its response headers (the body may take longer).
const RESPONSE_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle pooled connection to an allocation is kept.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per allocation address and worker; more are closed.
const POOL_MAX_IDLE: usize = 512;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// historical `Proxy-Connection`. They are never forwarded, except `Connection` and `Upgrade`
/// on a WebSocket upgrade.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    UPGRADE,
];

/// One worker's client side: its pool of idle connections to allocations.
pub(crate) struct Proxy {
    pool: Arc<Pool>,
}

/// Idle HTTP/1 connections by allocation address.
#[derive(Default)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<Authority, Arc<Slot>>>,
}

/// The idle connections to one allocation address. A response body holds its slot to give
/// its connection back, so no key is cloned or hashed again per request.
#[derive(Default)]
pub(crate) struct Slot {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<Outgoing>,
    since: Instant,
}

impl Pool {
    /// The slot of `authority`, made on first use.
    fn slot(&self, authority: &Authority) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(authority) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        slots.insert(authority.clone(), slot.clone());
        slot
    }

    /// Closes connections idle for longer than [`POOL_IDLE_TIMEOUT`] or closed by the
    /// allocation, and forgets addresses left with none and no request in flight.
    pub(crate) fn sweep(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|_, slot| {
            let mut idle = slot.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < POOL_IDLE_TIMEOUT);
            !idle.is_empty() || Arc::strong_count(slot) > 1
        });
    }
}

impl Slot {
    /// An open idle connection, if one is kept.
    fn take(&self) -> Option<SendRequest<Outgoing>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request, unless it is closed.
    fn put(&self, sender: SendRequest<Outgoing>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

impl Proxy {
    pub(crate) fn new() -> Self {
        Self {
            pool: Arc::default(),
        }
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Sends `req` to the first of `targets` that takes it and returns its response with
    /// the body still streaming, and which target answered. A target that cannot be
    /// connected to has seen nothing of the request, so the next one is tried (an instance
    /// whose host died does not fail the requests routed to it). A `GET`, `HEAD` or
    /// `OPTIONS` without a body whose connection fails before any answer (the allocation
    /// died under it) is sent to the next one too: it is safe to send again. Any other
    /// failure is the answer. A WebSocket upgrade the allocation accepts is answered 101
    /// here and spliced to the allocation's socket in a task of its own.
    pub(crate) async fn forward<'t>(
        &self,
        mut req: Request<Incoming>,
        first: &'t Target,
        others: &[&'t Target],
        client: &Client,
        activity: &Arc<Activity>,
    ) -> Result<(Response<Body>, &'t Target), (EdgeError, &'t Target)> {
        let upgrade = req.headers().contains_key(UPGRADE) && is_websocket_upgrade(req.headers());
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        for_allocation(&mut parts, client, upgrade);
        // A safe request without a body can be sent again: its head is kept for that.
        let again = (!upgrade
            && body.is_end_stream()
            && matches!(
                parts.method,
                hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
            ))
        .then(|| {
            let mut head = Request::new(());
            *head.method_mut() = parts.method.clone();
            *head.uri_mut() = parts.uri.clone();
            *head.version_mut() = parts.version;
            *head.headers_mut() = parts.headers.clone();
            head
        });
        let mut req = Request::from_parts(parts, Outgoing::Client(body));

        let mut target = first;
        let mut tried = others.iter();
        let (target, slot, mut resp, sender) = loop {
            let authority = target.authority();
            let slot = self.pool.slot(authority);
            let sent = tokio::time::timeout(RESPONSE_HEADERS_TIMEOUT, send(req, authority, &slot));
            let failed = |source| EdgeError::Backend {
                allocation: target.allocation_id,
                address: target.address(),
                source,
            };
            match sent.await {
                Ok(Ok((resp, sender))) => break (target, slot, resp, sender),
                Ok(Err(Unsent::NotSent(back, source))) if tried.len() > 0 => {
                    tracing::warn!(
                        allocation = %target.allocation_id, address = %target.address(),
                        error = %source, "allocation unreachable; trying the next one"
                    );
                    req = back;
                    target = tried.next().copied().unwrap_or(target);
                }
                Ok(Err(Unsent::Sent(source))) if tried.len() > 0 && again.is_some() => {
                    tracing::warn!(
                        allocation = %target.allocation_id, address = %target.address(),
                        error = %source, "allocation failed before answering; sending the request to the next one"
                    );
                    req = again
                        .as_ref()
                        .map(|head| head.clone().map(|()| Outgoing::Empty))
                        .unwrap_or_else(|| Request::new(Outgoing::Empty));
                    target = tried.next().copied().unwrap_or(target);
                }
                Ok(Err(Unsent::NotSent(_, source) | Unsent::Sent(source))) => {
                    return Err((failed(source), target));
                }
                Err(_) => {
                    let timed_out = EdgeError::BackendTimeout {
                        allocation: target.allocation_id,
                        address: target.address(),
                        after: RESPONSE_HEADERS_TIMEOUT,
                    };
                    return Err((timed_out, target));
                }
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The allocation's connection is the upgraded socket now, never pooled again.
            drop(sender);
            let Some(client_side) = client_side else {
                let unexpected = EdgeError::UnexpectedUpgrade {
                    allocation: target.allocation_id,
                };
                return Err((unexpected, target));
            };
            let backend_side = hyper::upgrade::on(&mut resp);
            // The socket counts as the route's activity while it is open, so an app with a
            // live session is never put to sleep.
            let open = activity.socket();
            tokio::spawn(
                async move {
                    splice(client_side, backend_side).await;
                    drop(open);
                }
                .in_current_span(),
            );
            let (mut parts, _empty) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Ok((Response::from_parts(parts, Body::empty()), target));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let mut body = Returning {
            body,
            sender: Some(sender),
            slot,
        };
        if body.body.is_end_stream() {
            body.release();
        }
        Ok((Response::from_parts(parts, Body::backend(body)), target))
    }
}

/// A response read whole, for the idempotency store.
pub(crate) struct Buffered {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The response body was longer than the edge keeps, by this many bytes in all.
    pub(crate) too_large: Option<usize>,
}

/// Why a request the edge held was not answered, and whether it may have reached the app.
pub(crate) struct NotAnswered {
    pub(crate) error: EdgeError,
    /// The request was (or may have been) sent: the app may have applied it.
    pub(crate) sent: bool,
}

/// Sends a request whose body the edge already holds to `target` on a connection of its
/// own, once, and reads the response whole. A response body past `max_body` bytes is not
/// kept: `body` is then empty and `too_large` says how many bytes were dropped.
pub(crate) async fn forward_buffered(
    mut parts: hyper::http::request::Parts,
    body: Bytes,
    target: &Target,
    client: &Client,
    max_body: usize,
) -> Result<Buffered, NotAnswered> {
    for_allocation(&mut parts, client, false);
    parts
        .headers
        .insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let req = Request::from_parts(parts, Body::full(body));
    let failed = |source: BoxError, sent| NotAnswered {
        error: EdgeError::Backend {
            allocation: target.allocation_id,
            address: target.address(),
            source,
        },
        sent,
    };
    // Nothing has left the edge until the handshake is done.
    let connect = async {
        let stream = TcpStream::connect(target.authority().as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok::<_, BoxError>(sender)
    };
    let mut sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            let timed_out = io::Error::new(io::ErrorKind::TimedOut, "connecting timed out");
            failed(timed_out.into(), false)
        })?
        .map_err(|e| failed(e, false))?;
    let resp = tokio::time::timeout(RESPONSE_HEADERS_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| NotAnswered {
            error: EdgeError::BackendTimeout {
                allocation: target.allocation_id,
                address: target.address(),
                after: RESPONSE_HEADERS_TIMEOUT,
            },
            sent: true,
        })?
        .map_err(|e| failed(e.into(), true))?;
    let (mut parts, mut incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let mut bytes = Vec::new();
    let mut dropped = 0usize;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut incoming).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| failed(e.into(), true))?;
        if let Ok(data) = frame.into_data() {
            if dropped > 0 || bytes.len() + data.len() > max_body {
                dropped += bytes.len() + data.len();
                bytes = Vec::new();
            } else {
                bytes.extend_from_slice(&data);
            }
        }
    }
    Ok(Buffered {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(bytes),
        too_large: (dropped > 0).then_some(dropped),
    })
}

/// What the edge sends an allocation: the client's body as it streams, or none (a bodiless
/// request sent again to the next allocation after the first failed under it).
pub(crate) enum Outgoing {
    Client(Incoming),
    Empty,
}

impl HttpBody for Outgoing {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Outgoing::Client(body) => std::pin::Pin::new(body).poll_frame(cx),
            Outgoing::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Client(body) => body.is_end_stream(),
            Outgoing::Empty => true,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Outgoing::Client(body) => body.size_hint(),
            Outgoing::Empty => hyper::body::SizeHint::with_exact(0),
        }
    }
}

/// Why [`send`] has no response.
enum Unsent {
    /// Nothing of the request left the edge (no connection could be made): it is back.
    NotSent(Request<Outgoing>, BoxError),
    /// The request went out (or may have).
    Sent(BoxError),
}

/// Sends `req` on a pooled connection to `authority`, or a new one. A pooled connection found
/// closed before the request went out is replaced by a new one, once.
async fn send(
    mut req: Request<Outgoing>,
    authority: &Authority,
    slot: &Slot,
) -> Result<(Response<Incoming>, SendRequest<Outgoing>), Unsent> {
    if let Some(mut sender) = slot.take()
        && sender.ready().await.is_ok()
    {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, sender)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(Unsent::Sent(e.into_error().into())),
            },
        }
    }
    let mut sender = match connect(authority).await {
        Ok(sender) => sender,
        Err(e) => return Err(Unsent::NotSent(req, e)),
    };
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Unsent::Sent(e.into()))?;
    Ok((resp, sender))
}

/// A new HTTP/1 connection to `authority`, driven by a task of its own on this worker.
async fn connect(authority: &Authority) -> Result<SendRequest<Outgoing>, BoxError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority.as_str()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "connection to an allocation ended with an error");
        }
    });
    Ok(sender)
}

/// A client's request head made the allocation's: hop-by-hop headers out (the upgrade ones
/// kept for a WebSocket), forwarding headers in, the origin form of its path and query as
/// the client sent them, HTTP/1.1, and none of the server's extensions.
fn for_allocation(parts: &mut hyper::http::request::Parts, client: &Client, upgrade: bool) {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // Only the edge says how a live session reaches its allocation (set on upgrades by the
    // cold path, which removes what a client sent first).
    if !upgrade {
        crate::session::strip(&mut parts.headers);
    }
    client.forwarding.apply(&mut parts.headers);
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = origin_form(&parts.uri);
    }
    parts.version = Version::HTTP_11;
    parts.extensions = Extensions::new();
}

/// `uri` in origin form: its path and query only.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// An allocation's response body that gives its connection back to the pool when it ends.
pub(crate) struct Returning {
    body: Incoming,
    sender: Option<SendRequest<Outgoing>>,
    slot: Arc<Slot>,
}

impl Returning {
    pub(crate) fn body(&self) -> &Incoming {
        &self.body
    }

    fn release(&mut self) {
        if let Some(s) = self.sender.take() {
            self.slot.put(s);
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // A body that failed half way leaves its connection unusable.
            Poll::Ready(Some(Err(_))) => drop(self.sender.take()),
            _ => {}
        }
        polled
    }
}

/// Copies bytes both ways between the client's and the allocation's upgraded connections
/// until either side closes. No idle timeout: a live Vango socket may be quiet for long.
async fn splice(client_side: OnUpgrade, backend_side: OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client_side, backend_side) {
        Ok(both) => both,
        Err(err) => {
            tracing::warn!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
        Err(err) => tracing::debug!(error = %err, "upgraded connection ended with an error"),
    }
}

/// What the edge knows about one client connection, worked out once for all its requests.
pub(crate) struct Client {
    pub(crate) peer: SocketAddr,
    forwarding: Forwarding,
}

impl Client {
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            forwarding: Forwarding::new(peer),
        }
    }
}

/// The forwarding headers of one client connection.
struct Forwarding {
    /// The client's address, as `X-Forwarded-For` lists it.
    ip: HeaderValue,
    /// `for=<node>`, as `Forwarded` lists it.
    for_node: String,
    /// The `Host` of the connection's first request and the `Forwarded` element for it:
    /// later requests with the same host reuse it.
    first: OnceLock<(HeaderValue, HeaderValue)>,
}

impl Forwarding {
    fn new(peer: SocketAddr) -> Self {
        let ip = peer.ip().to_canonical();
        let ip_text = ip.to_string();
        let for_node = if ip.is_ipv6() {
            format!("for=\"[{ip}]\"")
        } else {
            format!("for={ip_text}")
        };
        Self {
            ip: HeaderValue::from_str(&ip_text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            for_node,
            first: OnceLock::new(),
        }
    }

    /// Adds where the request came from: the client address appended to `X-Forwarded-For`
    /// and `Forwarded`, the original host in `X-Forwarded-Host`, and `X-Forwarded-Proto:
    /// http` (the edge speaks plain HTTP; whatever a client claimed is replaced). `Host` is
    /// kept as the client sent it, so an app checking `Origin` against `Host` sees its public
    /// name.
    fn apply(&self, headers: &mut HeaderMap) {
        let host = headers
            .get(header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned();
        if headers.contains_key(&X_FORWARDED_FOR) {
            let ip = self.ip.to_str().unwrap_or("unknown");
            append_list(headers, &X_FORWARDED_FOR, ip);
        } else {
            headers.insert(X_FORWARDED_FOR.clone(), self.ip.clone());
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        let element = self.element(host.as_ref());
        match host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        if headers.contains_key(&FORWARDED) {
            let element = element.to_str().unwrap_or("for=unknown");
            append_list(headers, &FORWARDED, element);
        } else {
            headers.insert(FORWARDED.clone(), element);
        }
    }

    /// This connection's `Forwarded` element for a request to `host` (visible ASCII).
    fn element(&self, host: Option<&HeaderValue>) -> HeaderValue {
        let Some(host) = host else {
            return self.build(None);
        };
        if let Some((h, v)) = self.first.get() {
            if h == host {
                return v.clone();
            }
            return self.build(Some(host));
        }
        let v = self.build(Some(host));
        let _ = self.first.set((host.clone(), v.clone()));
        v
    }

    fn build(&self, host: Option<&HeaderValue>) -> HeaderValue {
        let host = host
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.contains(['"', '\\']));
        let mut s = String::with_capacity(self.for_node.len() + host.map_or(0, str::len) + 20);
        s.push_str(&self.for_node);
        if let Some(h) = host {
            s.push_str(";host=\"");
            s.push_str(h);
            s.push('"');
        }
        s.push_str(";proto=http");
        HeaderValue::from_maybe_shared(Bytes::from(s))
            .unwrap_or_else(|_| HeaderValue::from_static("for=unknown;proto=http"))
    }
}

/// Removes the hop-by-hop headers and those `Connection` names. On an upgrade, keeps
/// `Upgrade` and leaves `Connection: upgrade` alone. One pass over the names finds which
/// are present; a message with none costs no lookup.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 && !upgrade {
        return;
    }
    if present & 1 != 0 {
        // Names `Connection` lists beyond the fixed ones (rare: no allocation otherwise).
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| {
                !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 && !(upgrade && (name == UPGRADE || name == CONNECTION)) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sets `name` to its current values and `item`, as one comma-separated list. Values that are
/// not visible ASCII are dropped rather than forwarded mangled.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    let mut list: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    list.push(item);
    let joined = list.join(", ");
    let value = HeaderValue::from_str(&joined)
        .or_else(|_| HeaderValue::from_str(item))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    headers.insert(name.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("accept", "text/html"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept"]);
        let mut h = headers(&[("accept", "text/html"), ("host", "a")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept", "host"]);
    }

    #[test]
    fn upgrades_keep_connection_and_upgrade() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h[CONNECTION], "upgrade");
        assert!(!is_websocket_upgrade(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(!is_websocket_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("host", "shop.localhost:8081"),
        ]);
        let f = Forwarding::new("10.1.2.3:5555".parse().expect("addr"));
        f.apply(&mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.7, 10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.localhost:8081");
        assert_eq!(
            h[&FORWARDED],
            "for=10.1.2.3;host=\"shop.localhost:8081\";proto=http"
        );
        // The same connection, another host: not the first host's element.
        let mut h = headers(&[("host", "other.localhost"), ("forwarded", "for=192.0.2.1")]);
        f.apply(&mut h);
        assert_eq!(
            h[&FORWARDED],
            "for=192.0.2.1, for=10.1.2.3;host=\"other.localhost\";proto=http"
        );
        let mut h = headers(&[("host", "shop.localhost:8081")]);
        f.apply(&mut h);
        assert_eq!(
            h[&FORWARDED],
            "for=10.1.2.3;host=\"shop.localhost:8081\";proto=http"
        );

        let mut h = HeaderMap::new();
        Forwarding::new("[::1]:5555".parse().expect("addr")).apply(&mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
        assert_eq!(h[&FORWARDED], "for=\"[::1]\";proto=http");
        assert!(!h.contains_key(&X_FORWARDED_HOST));
        let mut h = HeaderMap::new();
        Forwarding::new("[::ffff:10.0.0.1]:1".parse().expect("addr")).apply(&mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let uri: Uri = "http://shop.localhost/a/b?c=d".parse().expect("uri");
        assert_eq!(origin_form(&uri), "/a/b?c=d");
        let uri: Uri = "http://shop.localhost".parse().expect("uri");
        assert_eq!(origin_form(&uri), "/");
    }
}
