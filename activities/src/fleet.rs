//! The fleet watch's activity: declares lost the runners that stopped heartbeating, and
//! finds the route owners due a Repair.

use std::sync::Arc;

use rhone_workflows::activities::{OrphansEnded, SweepInput, Swept, defs};
use sea_orm::DatabaseConnection;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::error::activity_error;

/// The actor of the transitions the fleet watch records.
pub const FLEET_ACTOR: &str = "worker:fleet";

pub struct FleetActivities {
    pub db: DatabaseConnection,
    /// This worker's settings: they win over the ones the watch was first started with.
    pub timings: rhone_core::fleet::FleetTimings,
    /// To read how the workflows of open operations closed.
    pub temporal: temporalio_client::Client,
    /// The task queue whose workflows this worker runs.
    pub task_queue: String,
}

#[activities]
impl FleetActivities {
    /// Ends the open operations whose workflow was cancelled, terminated, timed out or
    /// failed without ending them. Idempotent: an ended operation is no longer open.
    #[activity(definition = defs::EndOrphanedOperations)]
    pub async fn end_orphaned_operations(
        self: Arc<Self>,
        _ctx: ActivityContext,
        _input: (),
    ) -> Result<OrphansEnded, ActivityError> {
        let operation_ids =
            crate::orphans::end_orphaned(&self.db, &self.temporal, &self.task_queue).await?;
        Ok(OrphansEnded { operation_ids })
    }

    /// Idempotent: a runner already lost is not declared again, and a heartbeat that lands
    /// first keeps its runner ready.
    #[activity(definition = defs::SweepRunners)]
    pub async fn sweep_runners(
        self: Arc<Self>,
        _ctx: ActivityContext,
        _input: SweepInput,
    ) -> Result<Swept, ActivityError> {
        let lost_after = chrono::Duration::milliseconds(
            i64::try_from(self.timings.lost_after_ms).unwrap_or(i64::MAX),
        );
        // The DB's clock, which wrote the heartbeats: no skew between hosts counts.
        let now = rhone_schema::db_now(&self.db)
            .await
            .map_err(|e| activity_error(rhone_schema::SchemaError::from(e)))?;
        let cutoff = now - lost_after;
        let lost = rhone_schema::fleet::mark_lost(&self.db, cutoff, FLEET_ACTOR)
            .await
            .map_err(activity_error)?;
        for runner in &lost {
            tracing::warn!(runner = %runner.name, last_seen_at = ?runner.last_seen_at, "runner lost");
        }
        let repairs = rhone_schema::repair::repairs_needed(&self.db, chrono::Utc::now())
            .await
            .map_err(activity_error)?;
        for need in &repairs {
            tracing::warn!(
                route_key = %need.route_key, epoch = need.epoch, serving = need.serving,
                instances = need.instances, "route owner lost allocations: repair due"
            );
        }
        Ok(Swept {
            lost: lost.into_iter().map(|r| r.name).collect(),
            next_sweep_ms: Some(self.timings.heartbeat_interval_ms),
            repairs,
        })
    }
}
