//! The HTTP front door. A request's route key (its host) names a RouteOwner; the edge picks a
//! ready allocation inside that owner's authority (`route`), proxies the request or WebSocket
//! to it (`proxy`), and answers every failure through one classification (`error`).

mod error;
mod page;
mod proxy;
mod route;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    response::Response,
    routing::get,
};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tracing::Instrument;

pub use error::{BoxError, EdgeError};
pub use route::{DbRoutes, Owner, Route, RouteSource, Target, affinity_key, route_key};

use route::Picker;

/// What `serve` reads route authority from.
#[derive(Clone)]
pub struct EdgeState {
    pub db: DatabaseConnection,
}

/// The edge server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("edge server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves the edge on `listener` until `shutdown` resolves, with route authority read from
/// the control DB on every request.
pub async fn serve(
    listener: TcpListener,
    state: EdgeState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_routes(listener, DbRoutes::new(state.db), shutdown).await
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
        picker: Picker::default(),
        proxy: proxy::Proxy::new(),
    });
    let app = Router::new()
        .route("/_rhone/healthz", get(|| async { "ok" }))
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
    picker: Picker,
    proxy: proxy::Proxy,
}

async fn handle<R: RouteSource>(
    State(edge): State<Arc<Edge<R>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let key = route_key(req.headers());
    let span = tracing::info_span!(
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
    let target = edge
        .picker
        .pick(&route, session.as_deref())
        .ok_or_else(|| EdgeError::NoReadyAllocation {
            route_key,
            epoch: route.owner.epoch,
        })?;
    span.record("allocation", tracing::field::display(target.allocation_id));
    edge.proxy.forward(req, target, peer).await
}
