//! The activities of the Wake workflow (`rhone_workflows::WakeWorkflow`): the operation
//! opened with what the run needs about its route, request evidence and the environment's
//! `wake_state` (`open.rs`); the one allocation of a wake started and waited for
//! (`start.rs`); the idle check and the sleep (`idle.rs`).
//!
//! Every activity is safe to retry: the operation id is the run's, the allocation id is
//! derived from (operation, `wake`, 0), audit row ids from (operation, request key), and a
//! sleep that committed is found again. Every decision that depends on the route's epoch is
//! taken under the route lock (the one [`rhone_schema::routes::write_owner`] takes), so no
//! wake starts or sleeps a route that has moved on. Each activity's logic is a public method
//! (`open`, `evidence`, `wake_state`, `start`, `ready`, `stop`, `idle`, `sleep`) so it can be
//! tested without Temporal.

mod idle;
mod open;
mod start;

pub(crate) use open::set_state;
pub use start::wake_allocation_id;

use std::{sync::Arc, time::Duration};

use rhone_workflows::activities::{
    IdleReport, RouteIdleInput, SleepInput, Slept, WakeEvidenceInput, WakeOpenInput, WakeOpened,
    WakeReady, WakeReadyInput, WakeStartInput, WakeStarted, WakeStateInput, WakeStopInput, defs,
};
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument;
use uuid::Uuid;

use crate::allocate::{Heartbeat, db_err};

/// Knobs of scale to zero on the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeConfig {
    /// The longest interval between two idle checks of a hot route (a run checks every
    /// `min(sleep_after / 4, idle_check)`, at least every 250 ms). Default 5 s.
    pub idle_check: Duration,
    /// How long a sleep waits between telling the edges (desired `stop`, which they follow
    /// within a poll) and telling the runners, so no request is sent to an app that is
    /// already stopping. Default 1 s.
    pub drain_grace: Duration,
}

impl Default for WakeConfig {
    fn default() -> Self {
        Self {
            idle_check: Duration::from_secs(5),
            drain_grace: Duration::from_secs(1),
        }
    }
}

pub struct WakeActivities {
    pub db: DatabaseConnection,
    pub config: WakeConfig,
    /// An edge seen within this long counts (`PromotionConfig::edge_liveness`): only the
    /// open sockets of live edges keep a route awake.
    pub edge_liveness: Duration,
    /// Calls to runners, with each runner's call token.
    pub runners: crate::allocate::RunnerClient,
}

#[activities]
impl WakeActivities {
    #[activity(definition = defs::WakeOpen)]
    pub async fn wake_open(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: WakeOpenInput,
    ) -> Result<WakeOpened, ActivityError> {
        let span = tracing::info_span!("wake_open", operation_id = %input.operation_id, route_key = %input.route_key, epoch = input.epoch);
        self.open(&input).instrument(span).await
    }

    #[activity(definition = defs::RecordWakeRequest)]
    pub async fn record_wake_request(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: WakeEvidenceInput,
    ) -> Result<(), ActivityError> {
        let span = tracing::info_span!("record_wake_request", operation_id = %input.operation_id, request_key = %input.request_key);
        self.evidence(&input).instrument(span).await
    }

    #[activity(definition = defs::SetWakeState)]
    pub async fn set_wake_state(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: WakeStateInput,
    ) -> Result<bool, ActivityError> {
        let span = tracing::info_span!("set_wake_state", route_key = %input.route_key, state = %input.state);
        self.wake_state(&input).instrument(span).await
    }

    #[activity(definition = defs::StartWakeAllocation)]
    pub async fn start_wake_allocation(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: WakeStartInput,
    ) -> Result<WakeStarted, ActivityError> {
        let span = tracing::info_span!("start_wake_allocation", operation_id = %input.operation_id, route_key = %input.route_key);
        // Heartbeats while it places and starts, so a killed worker's attempt is retried
        // within seconds.
        Heartbeat::of(&ctx)
            .during(self.start(&input))
            .instrument(span)
            .await
    }

    #[activity(definition = defs::AwaitWakeReady)]
    pub async fn await_wake_ready(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: WakeReadyInput,
    ) -> Result<WakeReady, ActivityError> {
        let span = tracing::info_span!("await_wake_ready", operation_id = %input.operation_id, allocation_id = %input.allocation_id);
        self.ready(&input, Heartbeat::of(&ctx))
            .instrument(span)
            .await
    }

    #[activity(definition = defs::StopWakeAllocations)]
    pub async fn stop_wake_allocations(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: WakeStopInput,
    ) -> Result<Vec<Uuid>, ActivityError> {
        let span = tracing::info_span!("stop_wake_allocations", operation_id = %input.operation_id);
        self.stop(&input).instrument(span).await
    }

    #[activity(definition = defs::RouteIdle)]
    pub async fn route_idle(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RouteIdleInput,
    ) -> Result<IdleReport, ActivityError> {
        let span =
            tracing::info_span!("route_idle", route_key = %input.route_key, epoch = input.epoch);
        self.idle(&input).instrument(span).await
    }

    #[activity(definition = defs::SleepRoute)]
    pub async fn sleep_route(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: SleepInput,
    ) -> Result<Slept, ActivityError> {
        let span = tracing::info_span!("sleep_route", operation_id = %input.operation_id, route_key = %input.route_key, epoch = input.epoch);
        self.sleep(&input, Heartbeat::of(&ctx))
            .instrument(span)
            .await
    }
}

/// A write transaction holding the route lock: route moves (`routes::write_owner`), wake
/// starts and sleeps are serialised (PostgreSQL: the change log's exclusive lock; SQLite:
/// `BEGIN IMMEDIATE`, the one writer).
pub(crate) async fn route_locked(
    db: &DatabaseConnection,
) -> Result<DatabaseTransaction, ActivityError> {
    rhone_schema::routes::begin_locked(db).await.map_err(db_err)
}
