//! The HTTP front door. A request's route key (its host) names a RouteOwner; the edge picks a
//! ready allocation inside that owner's authority (`route`), proxies the request or WebSocket
//! to it (`proxy`), and answers every failure through one classification (`error`).
//!
//! Route authority lives in memory (`table`): [`serve`] loads one verified snapshot of the
//! control DB, then a follower task applies the route change log in order and follows
//! allocation changes, holds keys closed across a gap in the log until it reloads, and
//! acknowledges what it serves in the edge's `edge_acks` row (deleted when the edge stops).
//! A request never waits on the DB. `GET /_rhone/status` reports the table for on-call.

mod config;
mod error;
mod page;
mod proxy;
mod route;
mod table;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use sea_orm::DatabaseConnection;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::Instrument;

pub use config::{EdgeConfig, default_edge_id};
pub use error::{BoxError, EdgeError};
pub use route::{DbRoutes, Owner, Route, RouteSource, Target, affinity_key, route_key};
pub use table::{ClosedKey, Loaded, RouteTable, TableError, TableStatus};

/// What `serve` reads route authority from, and how this edge names itself.
#[derive(Clone)]
pub struct EdgeState {
    pub db: DatabaseConnection,
    pub config: EdgeConfig,
}

/// The edge server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("edge server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves the edge on `listener` until `shutdown` resolves, from an in-memory route table
/// that a follower task keeps current from the control DB. Requests answer 503 until the
/// first snapshot is loaded. On shutdown the follower stops and deletes the edge's
/// acknowledgement row; dropping this future instead leaves the row, as a crash would.
pub async fn serve(
    listener: TcpListener,
    state: EdgeState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let table = RouteTable::new(state.config.edge_id.clone());
    let (stop, stopped) = watch::channel(false);
    let follower = AbortOnDrop(Some(tokio::spawn(table::follow(
        table.clone(),
        state.db,
        state.config,
        stopped,
    ))));
    let served = serve_routes(listener, table, shutdown).await;
    let _ = stop.send(true);
    follower.join().await;
    served
}

/// Aborts the task when dropped before it was joined, so the follower never outlives an
/// aborted edge.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    async fn join(mut self) {
        if let Some(handle) = self.0.take()
            && let Err(e) = handle.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "the route table follower panicked");
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Serves the edge on `listener` until `shutdown` resolves, with route authority from
/// `routes`. Established WebSocket connections are not waited for.
pub async fn serve_routes<R: RouteSource>(
    listener: TcpListener,
    routes: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let edge = Arc::new(Edge {
        routes,
        proxy: proxy::Proxy::new(),
    });
    let app = Router::new()
        .route("/_rhone/healthz", get(healthz::<R>))
        .route("/_rhone/status", get(status::<R>))
        .fallback(handle::<R>)
        .with_state(edge);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(ServeError::Serve)
}

struct Edge<R> {
    routes: R,
    proxy: proxy::Proxy,
}

/// `ok` once the edge can route: a route table answers 503 until its first snapshot.
async fn healthz<R: RouteSource>(State(edge): State<Arc<Edge<R>>>) -> Response {
    match edge.routes.status() {
        Some(s) if !s.loaded => (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response(),
        _ => "ok".into_response(),
    }
}

async fn status<R: RouteSource>(State(edge): State<Arc<Edge<R>>>) -> Response {
    match edge.routes.status() {
        Some(s) => Json(s).into_response(),
        None => (StatusCode::NOT_FOUND, "this edge keeps no route table").into_response(),
    }
}

async fn handle<R: RouteSource>(
    State(edge): State<Arc<Edge<R>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let key = route_key(req.headers());
    // A debug span: at the default `info` filter it costs one check per request, not a
    // span with formatted fields. Warnings still name the route key in their message.
    let span = tracing::debug_span!(
        "edge_request",
        route_key = key.as_deref().unwrap_or(""),
        epoch = tracing::field::Empty,
        allocation = tracing::field::Empty,
        method = %req.method(),
        path = req.uri().path(),
    );
    async move {
        let resp = match route_and_forward(&edge, key, peer, req).await {
            Ok(resp) => resp,
            Err(err) => error::respond(&err),
        };
        tracing::debug!(status = resp.status().as_u16(), "answered");
        resp
    }
    .instrument(span)
    .await
}

async fn route_and_forward<R: RouteSource>(
    edge: &Edge<R>,
    key: Option<String>,
    peer: SocketAddr,
    req: Request,
) -> Result<Response, EdgeError> {
    let route_key = key.ok_or(EdgeError::MissingHost)?;
    let route = edge
        .routes
        .route(&route_key)
        .await?
        .ok_or_else(|| EdgeError::NoRouteOwner {
            route_key: route_key.clone(),
        })?;
    let span = tracing::Span::current();
    span.record("epoch", route.owner.epoch);
    let session = affinity_key(req.headers(), req.uri());
    let target = route
        .pick(session.as_deref())
        .ok_or_else(|| EdgeError::NoReadyAllocation {
            route_key,
            epoch: route.owner.epoch,
        })?;
    span.record("allocation", tracing::field::display(target.allocation_id));
    edge.proxy.forward(req, target, peer).await
}
