//! The runner agent of one host. It will take allocation commands, pull artifacts by digest
//! and run them; this first version registers its identity and answers health and
//! inventory requests, so `rhone dev` runs the real process tree from day one.

use std::future::Future;

use axum::{Json, Router, extract::State, routing::get};
use serde::Serialize;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("runner server failed: {0}")]
    Serve(#[source] std::io::Error),
}

#[derive(Debug, Clone, Serialize)]
pub struct RunnerIdentity {
    pub name: String,
    pub region: String,
    pub cell: String,
}

#[derive(Clone)]
pub struct RunnerState {
    pub identity: RunnerIdentity,
}

#[derive(Serialize)]
struct Inventory {
    runner: RunnerIdentity,
    allocations: Vec<serde_json::Value>,
}

/// Serves the runner's control endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: RunnerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunnerError> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/allocations",
            get(|State(s): State<RunnerState>| async move {
                Json(Inventory {
                    runner: s.identity,
                    allocations: Vec::new(),
                })
            }),
        )
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(RunnerError::Serve)
}
