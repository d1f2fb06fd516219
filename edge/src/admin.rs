//! The edge's admin listener, for on-call and the platform's own probes: `GET
//! /_rhone/status` (the route table: every route key, epoch and allocation address, the held
//! keys, the cold path's counters) and `GET /_rhone/healthz`. The status is served here only,
//! never on the public listener, whose `/_rhone/status` is an app's path like any other.
//! Bind it to a private address (`RHONE_EDGE_ADMIN_LISTEN`, default 127.0.0.1:9081).

use std::{convert::Infallible, sync::Arc};

use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

use crate::{body::Body, cold::Cold, page::answer, route::RouteSource};

const TEXT: &str = "text/plain; charset=utf-8";

/// Serves the admin paths on `listener` until `stopped` turns true (or its sender drops).
pub(crate) async fn serve<R: RouteSource>(
    listener: TcpListener,
    routes: R,
    cold: Option<Arc<Cold>>,
    mut stopped: watch::Receiver<bool>,
) {
    let shared = Arc::new((routes, cold));
    loop {
        let accepted = tokio::select! {
            biased;
            changed = stopped.changed() => match changed {
                Ok(()) if *stopped.borrow() => return,
                Ok(()) => continue,
                Err(_) => return,
            },
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    let (routes, cold) = &*shared;
                    Ok::<_, Infallible>(respond(
                        req.uri().path(),
                        req.method(),
                        routes,
                        cold.as_deref(),
                    ))
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn respond<R: RouteSource>(
    path: &str,
    method: &Method,
    routes: &R,
    cold: Option<&Cold>,
) -> Response<Body> {
    match path {
        "/_rhone/healthz" => healthz(routes, method),
        "/_rhone/status" => status(routes, cold, method),
        _ => answer(
            StatusCode::NOT_FOUND,
            TEXT,
            "the edge's admin listener serves /_rhone/status and /_rhone/healthz",
        ),
    }
}

/// `ok` once the edge can route: a route table answers 503 until its first snapshot.
pub(crate) fn healthz<R: RouteSource>(routes: &R, method: &Method) -> Response<Body> {
    if let Some(refused) = get_only(method) {
        return refused;
    }
    match routes.status() {
        Some(s) if !s.loaded => answer(StatusCode::SERVICE_UNAVAILABLE, TEXT, "loading"),
        _ => answer(StatusCode::OK, TEXT, "ok"),
    }
}

fn status<R: RouteSource>(routes: &R, cold: Option<&Cold>, method: &Method) -> Response<Body> {
    if let Some(refused) = get_only(method) {
        return refused;
    }
    match routes.status() {
        Some(s) => match serde_json::to_value(&s).and_then(|mut v| {
            // What the cold path did (holds, wakes, assets, writes, webhooks).
            if let Some(cold) = cold {
                v["cold"] = serde_json::to_value(cold.status())?;
            }
            serde_json::to_vec(&v)
        }) {
            Ok(json) => answer(StatusCode::OK, "application/json", json),
            Err(e) => {
                tracing::error!(error = %e, "the route table status did not serialize");
                answer(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "internal error")
            }
        },
        None => answer(
            StatusCode::NOT_FOUND,
            TEXT,
            "this edge keeps no route table",
        ),
    }
}

/// `None` for GET and HEAD; a 405 otherwise.
fn get_only(method: &Method) -> Option<Response<Body>> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let mut resp = answer(StatusCode::METHOD_NOT_ALLOWED, TEXT, "");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET,HEAD"));
    Some(resp)
}
