//! The activities of the Repair workflow (`rhone_workflows::RepairWorkflow`): its operation
//! opened in `detected` with what the fleet watch found, and the check, once replacements
//! are ready, that the route is still at the repair's epoch, with where they run. The
//! replacements themselves are started, watched and drained by the promotion's activities
//! (`start_allocations`, `watch_health`, `drain_allocations`).
//!
//! Both are safe to retry: the operation id is the run's (a retry finds the row), and the
//! check only reads.

use std::{sync::Arc, time::Duration};

use rhone_core::{OperationKind, StateMachine, stage::RepairStage};
use rhone_schema::{
    SchemaError,
    entity::{allocation, cell, environment, route_owner, runner},
    ops::{self, NewOperation},
};
use rhone_workflows::activities::{
    PlacedAllocation, RepairCheck, RepairCheckInput, RepairOpenInput, RepairOpened, defs,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument;

use crate::allocate::{db_err, millis};
use crate::fleet::FLEET_ACTOR;

pub struct RepairActivities {
    pub db: DatabaseConnection,
    /// The health window replacements must stay healthy through (the promotions' one).
    pub health_window: Duration,
}

#[activities]
impl RepairActivities {
    #[activity(definition = defs::OpenRepair)]
    pub async fn open_repair(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RepairOpenInput,
    ) -> Result<RepairOpened, ActivityError> {
        let span = tracing::info_span!("open_repair", operation_id = %input.operation_id, route_key = %input.need.route_key, epoch = input.need.epoch);
        self.open(&input).instrument(span).await
    }

    #[activity(definition = defs::CheckRepair)]
    pub async fn check_repair(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RepairCheckInput,
    ) -> Result<RepairCheck, ActivityError> {
        let span =
            tracing::info_span!("check_repair", route_key = %input.route_key, epoch = input.epoch);
        self.check(&input).instrument(span).await
    }
}

impl RepairActivities {
    /// Creates the operation in `detected` with the need as evidence (a retry finds it),
    /// then reads the route owner: one at another epoch (or none) comes back as
    /// `superseded_by`.
    pub async fn open(&self, input: &RepairOpenInput) -> Result<RepairOpened, ActivityError> {
        let db = &self.db;
        let need = &input.need;
        let id = input.operation_id.0;
        let workspace_id = environment::Entity::find_by_id(need.environment_id)
            .one(db)
            .await
            .map_err(db_err)?
            .map(|e| e.workspace_id);
        let kind = OperationKind::Repair;
        let created = ops::create_operation_with(
            db,
            NewOperation {
                id,
                workspace_id,
                kind: kind.as_str(),
                actor: FLEET_ACTOR,
                target_type: "route",
                target_id: &need.route_key,
                initial_stage: RepairStage::Detected.as_str(),
                status: "running",
                workflow_id: &input.workflow_ref,
            },
            json!({
                "route_key": need.route_key, "epoch": need.epoch,
                "deployment_id": need.deployment_id, "digest": need.artifact_digest,
                "instances": need.instances, "serving": need.serving, "lost": need.lost,
            }),
        )
        .await;
        match created {
            Ok(_) => tracing::warn!(
                operation_id = %id, lost = need.lost.len(), serving = need.serving,
                instances = need.instances, "repair opened"
            ),
            // An earlier attempt committed first.
            Err(SchemaError::Conflict { .. }) => {}
            Err(e) => return Err(db_err(e)),
        }
        Ok(RepairOpened {
            superseded_by: self.superseded(&need.route_key, need.epoch).await?,
            health_window_ms: millis(self.health_window),
        })
    }

    /// Whether the route is still at `epoch`, and where each allocation runs.
    pub async fn check(&self, input: &RepairCheckInput) -> Result<RepairCheck, ActivityError> {
        let db = &self.db;
        let rows = allocation::Entity::find()
            .filter(allocation::Column::Id.is_in(input.allocation_ids.iter().copied()))
            .order_by_asc(allocation::Column::Id)
            .all(db)
            .await
            .map_err(db_err)?;
        let mut placed = Vec::with_capacity(rows.len());
        for row in rows {
            let runner = match row.runner_id {
                Some(id) => runner::Entity::find_by_id(id)
                    .one(db)
                    .await
                    .map_err(db_err)?
                    .map(|r| r.name),
                None => None,
            };
            let cell = cell::Entity::find_by_id(row.cell_id)
                .one(db)
                .await
                .map_err(db_err)?
                .map(|c| c.name);
            placed.push(PlacedAllocation {
                allocation_id: row.id,
                runner,
                cell,
                address: row.address,
                stage: row.stage,
            });
        }
        Ok(RepairCheck {
            superseded_by: self.superseded(&input.route_key, input.epoch).await?,
            placed,
        })
    }

    /// The owner's epoch when it is not `epoch` (0: no owner).
    async fn superseded(&self, key: &str, epoch: i64) -> Result<Option<i64>, ActivityError> {
        let owner_epoch = route_owner::Entity::find_by_id(key.to_owned())
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map_or(0, |o| o.epoch);
        Ok((owner_epoch != epoch).then_some(owner_epoch))
    }
}
