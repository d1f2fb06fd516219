//! Rhone's GraphQL API on axum: bearer-token authentication, per-workspace RBAC, an
//! operation and an audit row for every accepted mutation, and workflows started through
//! the Temporal client. The API never writes a stage of a workflow-run operation.
//!
//! Entry points: [`serve`] (or [`router`] to embed the routes), [`bootstrap_admin`] and
//! [`issue_token`] for the first start, [`sdl`] for the checked-in schema.

pub mod auth;
mod cursor;
pub mod error;
mod graphql;
mod http;
mod introspection;
mod rbac;
mod record;
pub mod runner_reports;
mod service;

use std::future::Future;

use sea_orm::DatabaseConnection;

pub use auth::{Actor, bootstrap_admin, issue_runtime_token, issue_token, usable_or_renewed};
pub use error::{ApiError, ErrorCode};
pub use graphql::{INTROSPECTION_MAX_DEPTH, MAX_COMPLEXITY, MAX_DEPTH, sdl};
pub use http::{MAX_BODY_BYTES, MAX_SUBSCRIPTIONS_PER_SOCKET, WS_INIT_TIMEOUT, router};

/// What every request needs: the control DB, the Temporal client and the task queue the
/// worker polls.
#[derive(Clone)]
pub struct ApiState {
    pub db: DatabaseConnection,
    pub temporal: temporalio_client::Client,
    /// `rhone_workflows::TASK_QUEUE` in production; tests use their own.
    pub task_queue: String,
    /// The operator's runner key (`RHONE_RUNNER_KEY`): the call tokens a registering
    /// runner learns the hash of derive from it; `None` disables the runners' endpoints
    /// (404).
    pub runner_key: Option<rhone_runner_protocol::RunnerKey>,
    /// How often runners heartbeat and when they count as lost.
    pub fleet: rhone_core::fleet::FleetTimings,
    /// Whether deploys may name a local path or a `file://` repository, one on the
    /// builder's host (`RHONE_ALLOW_LOCAL_REPOSITORIES`; `rhone dev` allows them). Off, such
    /// a deploy is refused naming the setting.
    pub local_repositories: bool,
    /// The operator's secrets key (`RHONE_SECRETS_KEY`); `None`: `setSecret` is refused,
    /// naming the setting.
    pub secrets: Option<std::sync::Arc<rhone_schema::secrets::Keyring>>,
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight
/// requests and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "API listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ApiError::Serve)
}
