//! The HTTP front door. A request's route key (its host) names a RouteOwner; the edge picks a
//! ready allocation inside that owner's authority (`route`), proxies the request or WebSocket
//! to it (`proxy`), and answers every failure through one classification (`error`).
//!
//! Route authority lives in memory (`table`): [`serve`] loads one verified snapshot of the
//! control DB, then a follower task applies the route change log in order and follows
//! allocation changes, holds keys closed across a gap in the log until it reloads, and
//! acknowledges what it serves in the edge's `edge_acks` row (deleted when the edge stops).
//! A request never waits on the DB. `GET /_rhone/status` on the admin listener (`admin`)
//! reports the table for on-call.
//!
//! Requests are served by one thread per core (`server`), each a current-thread runtime with
//! its own accept loop, hyper HTTP/1 connections and pool of connections to allocations.

mod activity;
mod admin;
mod assets;
mod body;
mod cold;
mod config;
mod error;
mod idempotency;
mod page;
mod policy;
mod proxy;
mod route;
mod server;
mod session;
mod table;
mod wake;

use std::{future::Future, sync::Arc};

use sea_orm::DatabaseConnection;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use assets::{AssetError, AssetIndex, AssetStats, Assets};
pub use cold::ColdStatus;
pub use config::{EdgeConfig, default_edge_id};
pub use error::{BoxError, EdgeError};
pub use route::{DbRoutes, Owner, Route, RouteSource, Target, affinity_key, route_key};
pub use server::default_workers;
pub use table::{ClosedKey, Loaded, RouteTable, TableError, TableStatus};
pub use wake::WakeClient;

/// The default size of the edge's in-memory cache of asset bytes.
pub const DEFAULT_ASSET_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// What `serve` reads route authority from, and how this edge names itself.
pub struct EdgeState {
    pub db: DatabaseConnection,
    pub config: EdgeConfig,
    /// How to ask for a wake; without it, a route that sleeps answers 503.
    pub wake: Option<WakeClient>,
    /// Where fingerprinted assets of sleeping apps are served from (the artifact store);
    /// without it, an asset request to a sleeping app wakes it like any read.
    pub assets: Option<Assets>,
    /// Where `GET /_rhone/status` and `/_rhone/healthz` are served for on-call: a listener
    /// on a private address, never the public one. Without it the status is not served.
    pub admin: Option<TcpListener>,
}

/// The edge server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("edge server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves the edge on `listener` until `shutdown` resolves, from an in-memory route table
/// that a follower task keeps current from the control DB. Requests answer 503 until the
/// first snapshot is loaded. On shutdown the edge stops accepting, answers the requests in
/// flight, then the follower stops and deletes the edge's acknowledgement row; dropping this
/// future instead stops serving at once and leaves the row, as a crash would.
///
/// Requests are served by `config.workers` threads of their own (see [`serve_routes`]); the
/// follower runs on the caller's runtime.
pub async fn serve(
    listener: TcpListener,
    state: EdgeState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let table = RouteTable::new(state.config.edge_id.clone());
    let workers = state.config.workers;
    let (stop, stopped) = watch::channel(false);
    let cold = Arc::new(cold::Cold::new(
        state.db.clone(),
        state.wake,
        state.assets,
        state.config.edge_id.clone(),
        tokio::runtime::Handle::current(),
    ));
    let reporter = AbortOnDrop(Some(tokio::spawn(activity::report(
        table.clone(),
        state.db.clone(),
        state.config.edge_id.clone(),
        state.config.heartbeat,
        stopped.clone(),
    ))));
    let admin = state.admin.map(|listener| {
        AbortOnDrop(Some(tokio::spawn(admin::serve(
            listener,
            table.clone(),
            Some(cold.clone()),
            stopped.clone(),
        ))))
    });
    let purger = AbortOnDrop(Some(tokio::spawn(purge_idempotency_records(
        state.db.clone(),
        stopped.clone(),
    ))));
    let follower = AbortOnDrop(Some(tokio::spawn(table::follow(
        table.clone(),
        state.db,
        state.config,
        stopped,
    ))));
    let served = server::run(listener, table, Some(cold), shutdown, workers).await;
    let _ = stop.send(true);
    if let Some(admin) = admin {
        admin.join().await;
    }
    reporter.join().await;
    purger.join().await;
    follower.join().await;
    served
}

/// How often an edge removes expired idempotency records.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes expired idempotency records at start and every [`PURGE_EVERY`] until `stopped`.
async fn purge_idempotency_records(db: DatabaseConnection, mut stopped: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    return;
                }
                continue;
            }
        }
        match idempotency::purge_expired(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired idempotency records removed"),
            Err(e) => tracing::warn!(error = %e, "removing expired idempotency records failed"),
        }
    }
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
/// `routes`, on [`default_workers`] threads: each runs a current-thread tokio runtime that
/// accepts on its own clone of `listener`, serves its connections with hyper's HTTP/1 server
/// and pools its own connections to allocations. `GET /_rhone/healthz` is answered on any
/// host. On shutdown, accepting stops and the requests
/// in flight are answered; established WebSocket connections are not waited for.
pub async fn serve_routes<R: RouteSource>(
    listener: TcpListener,
    routes: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    server::run(listener, routes, None, shutdown, default_workers()).await
}
