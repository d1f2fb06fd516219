//! What needs a Repair: the route owners that run fewer allocations than they are meant to
//! (`route_owners.instances`) because some ended while meant to serve (their runner lost,
//! a crash, a host restart), read by the fleet watch on every sweep.
//!
//! Not repaired here: a route that scales to zero (its Wake starts the next allocation on
//! the next request), a route whose moving operation is still under way or waiting for
//! on-call (a promotion in its health window decides the outcome itself), a route epoch
//! whose last Repair on-call aborted, and a route whose app crashed while its previous
//! Repairs ended within their backoff ([`rhone_core::fleet::repair_backoff`]). A loss the
//! platform fenced (a runner lost, a host restarted) is repaired at once.

use chrono::{DateTime, Utc};
use rhone_core::{
    OperationKind, OperationStatus,
    fleet::{LostAllocation, REPAIR_WINDOW, RepairNeed, repair_backoff},
    repair_workflow_id,
    stage::AllocationStage,
};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use std::collections::HashMap;

use crate::{
    SchemaError,
    allocations::Desired,
    entity::{allocation, environment, operation, route_owner, runner},
};

/// Whether an allocation still serves or will (it is meant to run and has not ended).
fn serving(row: &allocation::Model) -> bool {
    row.desired == Desired::Run.as_str()
        && !matches!(
            row.stage.parse::<AllocationStage>(),
            Ok(AllocationStage::Failed | AllocationStage::Stopped | AllocationStage::Draining)
        )
}

/// Whether an allocation ended (failed, or stopped while meant to run).
fn ended(row: &allocation::Model) -> bool {
    match row.stage.parse::<AllocationStage>() {
        Ok(AllocationStage::Failed) => true,
        Ok(AllocationStage::Stopped) => row.desired == Desired::Run.as_str(),
        _ => false,
    }
}

/// The route owners to repair now, as of `now`.
pub async fn repairs_needed<C: ConnectionTrait>(
    db: &C,
    now: DateTime<Utc>,
) -> Result<Vec<RepairNeed>, SchemaError> {
    let owners = route_owner::Entity::find()
        .order_by_asc(route_owner::Column::RouteKey)
        .all(db)
        .await?;
    let mut needs = Vec::new();
    let mut runner_names: HashMap<uuid::Uuid, String> = HashMap::new();
    for owner in owners {
        let Some(env) = environment::Entity::find_by_id(owner.environment_id)
            .one(db)
            .await?
        else {
            continue;
        };
        if env.scale_to_zero {
            continue;
        }
        let instances = u32::try_from(owner.instances.max(0)).unwrap_or(0);
        let rows = allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(owner.deployment_id))
            .filter(allocation::Column::ArtifactDigest.eq(owner.artifact_digest.as_str()))
            .order_by_desc(allocation::Column::UpdatedAt)
            .all(db)
            .await?;
        let live = u32::try_from(rows.iter().filter(|r| serving(r)).count()).unwrap_or(u32::MAX);
        let lost: Vec<&allocation::Model> = rows.iter().filter(|r| ended(r)).collect();
        if live >= instances || lost.is_empty() {
            continue;
        }
        if let Some(op) = owner.operation_id
            && let Some(op) = operation::Entity::find_by_id(op).one(db).await?
            && op
                .status
                .parse::<OperationStatus>()
                .is_ok_and(|s| !s.is_final())
        {
            continue;
        }
        // A crash (ended while still meant to run) backs off; a loss the platform fenced
        // (a runner lost, a host restarted) is repaired at once, however often hosts fail.
        let crashed = lost.iter().any(|r| r.desired == Desired::Run.as_str());
        if !due(db, &owner, now, crashed).await? {
            continue;
        }
        let mut evidence = Vec::new();
        for row in lost.into_iter().take(instances as usize) {
            let runner = match row.runner_id {
                Some(id) => match runner_names.get(&id) {
                    Some(name) => Some(name.clone()),
                    None => {
                        let name = runner::Entity::find_by_id(id)
                            .one(db)
                            .await?
                            .map(|r| r.name);
                        if let Some(name) = &name {
                            runner_names.insert(id, name.clone());
                        }
                        name
                    }
                },
                None => None,
            };
            evidence.push(LostAllocation {
                allocation_id: row.id,
                runner,
                stage: row.stage.clone(),
                reason: row.exit_status.clone(),
            });
        }
        needs.push(RepairNeed {
            route_key: owner.route_key,
            epoch: owner.epoch,
            environment_id: owner.environment_id,
            deployment_id: owner.deployment_id,
            artifact_digest: owner.artifact_digest,
            instances,
            serving: live,
            lost: evidence,
        });
    }
    Ok(needs)
}

/// Whether a Repair of `owner` may start now: none is under way, on-call did not abort the
/// last one at this epoch, and, after a crash, the backoff after the recent ones has passed.
async fn due<C: ConnectionTrait>(
    db: &C,
    owner: &route_owner::Model,
    now: DateTime<Utc>,
    crashed: bool,
) -> Result<bool, SchemaError> {
    let window = chrono::Duration::from_std(REPAIR_WINDOW).unwrap_or(chrono::Duration::MAX);
    let recent = operation::Entity::find()
        .filter(operation::Column::Kind.eq(OperationKind::Repair.as_str()))
        .filter(operation::Column::TargetId.eq(owner.route_key.as_str()))
        .filter(operation::Column::UpdatedAt.gt(now - window))
        .order_by_desc(operation::Column::UpdatedAt)
        .all(db)
        .await?;
    let this_epoch = format!("{}/", repair_workflow_id(&owner.route_key, owner.epoch));
    let mut ended = 0u32;
    for op in &recent {
        let status = op.status.parse::<OperationStatus>().ok();
        if !status.is_some_and(OperationStatus::is_final) {
            return Ok(false);
        }
        if ended == 0
            && status == Some(OperationStatus::Aborted)
            && op.workflow_id.starts_with(&this_epoch)
        {
            return Ok(false);
        }
        ended += 1;
    }
    let Some(last) = recent.first().filter(|_| crashed) else {
        return Ok(true);
    };
    let wait = chrono::Duration::from_std(repair_backoff(ended)).unwrap_or(chrono::Duration::MAX);
    Ok(now - last.updated_at >= wait)
}
