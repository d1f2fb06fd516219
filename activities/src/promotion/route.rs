//! The RouteOwner move of a promotion (compare-and-swap from the epoch the operation
//! started from) and the wait for every live edge to acknowledge it.

use std::time::Duration;

use chrono::Utc;
use rhone_schema::{
    SchemaError,
    allocations::Desired,
    entity::{allocation, audit_log, deployment, edge_ack, environment, route_change, route_owner},
    routes::{self, OwnerWrite},
};
use rhone_workflows::activities::{AwaitEdgesInput, EdgesAcked, MoveRouteInput, RouteMoved};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use temporalio_sdk::activities::ActivityError;

use super::{PromotionActivities, derived_id};
use crate::allocate::{Heartbeat, db_err, refuse};

/// How often edge acknowledgements are read.
const EDGE_POLL: Duration = Duration::from_millis(100);
/// The deployment stage of the RouteOwner's deployment, and of the one it replaced.
const LIVE: &str = "live";
const SUPERSEDED: &str = "superseded";

impl PromotionActivities {
    /// The `move_route` activity: the RouteOwner moves from `expected_epoch` to the next
    /// epoch, pointing at the deployment. A retry after the move finds it (same epoch, same
    /// operation) and returns it; a stale epoch is written to the audit log once and refused.
    pub async fn route(&self, input: &MoveRouteInput) -> Result<RouteMoved, ActivityError> {
        let db = &self.db;
        let op = input.operation_id.0;
        let key = &input.route_key;
        let dep = self.deployment(input.deployment_id).await?;
        if dep.environment_id != input.environment_id {
            return Err(refuse(format!(
                "deployment {} belongs to environment {}, not {}",
                dep.id, dep.environment_id, input.environment_id
            )));
        }
        if dep.artifact_digest.as_deref() != Some(input.digest.as_str()) {
            return Err(refuse(format!(
                "deployment {} records artifact {:?}, not {}",
                dep.id, dep.artifact_digest, input.digest
            )));
        }
        let ours = |o: &route_owner::Model| {
            o.epoch == input.expected_epoch + 1
                && o.operation_id == Some(op)
                && o.deployment_id == dep.id
        };
        let owner = self.owner(key).await?;
        if let Some(o) = owner.as_ref().filter(|o| ours(o)) {
            tracing::info!(
                epoch = o.epoch,
                "the route already moved in an earlier attempt"
            );
            return self.moved(key, o.epoch, &dep).await;
        }
        if owner.as_ref().map_or(0, |o| o.epoch) != input.expected_epoch {
            return Err(self.conflict(input, &dep, owner.as_ref()).await);
        }

        // Region and cell of the deployment's allocation the edge will route to.
        let placed = allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(dep.id))
            .filter(allocation::Column::ArtifactDigest.eq(input.digest.as_str()))
            .filter(allocation::Column::Desired.eq(Desired::Run.as_str()))
            .order_by_asc(allocation::Column::CreatedAt)
            .all(db)
            .await
            .map_err(db_err)?;
        let Some(alloc) = placed
            .iter()
            .find(|a| a.stage == "ready")
            .or(placed.first())
        else {
            return Err(refuse(format!(
                "deployment {} has no running allocation of {} to route {key} to",
                dep.id, input.digest
            )));
        };
        // The owner is meant to run what the operation made ready (a Repair restores it).
        let serving = placed
            .iter()
            .filter(|a| !matches!(a.stage.as_str(), "failed" | "stopped" | "draining"))
            .count();
        let write = OwnerWrite {
            instances: u32::try_from(serving.max(1)).unwrap_or(u32::MAX),
            route_key: key.clone(),
            environment_id: dep.environment_id,
            deployment_id: dep.id,
            artifact_digest: input.digest.clone(),
            region_id: alloc.region_id,
            cell_id: alloc.cell_id,
            operation_id: Some(op),
            expected_epoch: Some(input.expected_epoch),
        };
        match routes::write_owner(db, write).await {
            Ok(o) => {
                tracing::info!(epoch = o.epoch, deployment_id = %dep.id, "route moved");
                self.moved(key, o.epoch, &dep).await
            }
            // Another writer got in between the read above and the write.
            Err(SchemaError::Conflict { what }) => {
                let owner = self.owner(key).await?;
                match owner.as_ref().filter(|o| ours(o)) {
                    Some(o) => self.moved(key, o.epoch, &dep).await,
                    None => {
                        tracing::debug!(%what, "compare-and-swap lost");
                        Err(self.conflict(input, &dep, owner.as_ref()).await)
                    }
                }
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn owner(&self, key: &str) -> Result<Option<route_owner::Model>, ActivityError> {
        route_owner::Entity::find_by_id(key.to_owned())
            .one(&self.db)
            .await
            .map_err(db_err)
    }

    /// The change log's `seq` of (key, epoch), after the deployment stages follow the move.
    async fn moved(
        &self,
        key: &str,
        epoch: i64,
        dep: &deployment::Model,
    ) -> Result<RouteMoved, ActivityError> {
        let db = &self.db;
        let change = |epoch: i64| {
            route_change::Entity::find()
                .filter(route_change::Column::RouteKey.eq(key))
                .filter(route_change::Column::Epoch.eq(epoch))
                .one(db)
        };
        let seq = change(epoch)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("route change {key} epoch {epoch} is not logged")))?
            .seq;
        set_stage(self, dep.id, None, LIVE).await?;
        // The route points at ready allocations: it is hot, whatever it was before.
        crate::wake::set_state(db, dep.environment_id, environment::WAKE_STATE_HOT).await?;
        if let Some(before) = change(epoch - 1).await.map_err(db_err)?
            && before.deployment_id != dep.id
        {
            set_stage(self, before.deployment_id, Some(LIVE), SUPERSEDED).await?;
        }
        Ok(RouteMoved { epoch, seq })
    }

    /// The refusal of a lost compare-and-swap, after its audit row (one per operation, key
    /// and epoch: the row's id is derived from them, so a retry does not write it again).
    async fn conflict(
        &self,
        input: &MoveRouteInput,
        dep: &deployment::Model,
        owner: Option<&route_owner::Model>,
    ) -> ActivityError {
        let key = &input.route_key;
        let epoch = owner.map_or(0, |o| o.epoch);
        let message = format!(
            "route epoch conflict on {key}: the operation started from epoch {}, the owner is at epoch {epoch}",
            input.expected_epoch
        );
        let op = input.operation_id.0;
        let id = derived_id(&[
            "audit",
            "route.cas_conflict",
            &op.to_string(),
            key,
            &input.expected_epoch.to_string(),
        ]);
        let row = audit_log::ActiveModel {
            id: Set(id),
            workspace_id: Set(Some(dep.workspace_id)),
            actor: Set("system:promotion".into()),
            action: Set("route.cas_conflict".into()),
            target_type: Set("route".into()),
            target_id: Set(key.clone()),
            operation_id: Set(Some(op)),
            detail: Set(json!({
                "expected_epoch": input.expected_epoch,
                "owner_epoch": epoch,
                "owner_deployment_id": owner.map(|o| o.deployment_id),
                "owner_operation_id": owner.and_then(|o| o.operation_id),
                "deployment_id": dep.id,
                "message": message,
            })),
            created_at: Set(Utc::now()),
        };
        match audit_log::Entity::insert(row)
            .exec(&self.db)
            .await
            .map_err(SchemaError::from)
        {
            Ok(_) => {}
            // An earlier attempt wrote it.
            Err(SchemaError::Conflict { .. }) => {}
            Err(e) => return db_err(e),
        }
        refuse(message)
    }

    /// The `await_edges` activity: done when every live edge has applied change `seq`. The
    /// deadline runs from the change's commit, so a retried attempt does not extend it.
    pub async fn edges(
        &self,
        input: &AwaitEdgesInput,
        heartbeat: Heartbeat<'_>,
    ) -> Result<EdgesAcked, ActivityError> {
        let change = route_change::Entity::find_by_id(input.seq)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("route change {} is not logged", input.seq)))?;
        if change.route_key != input.route_key {
            return Err(refuse(format!(
                "route change {} is of {}, not {}",
                input.seq, change.route_key, input.route_key
            )));
        }
        let deadline_ms = i64::try_from(input.deadline_ms).unwrap_or(i64::MAX);
        let deadline = change.created_at + chrono::Duration::milliseconds(deadline_ms);
        let liveness =
            chrono::Duration::from_std(self.config.edge_liveness).unwrap_or(chrono::Duration::MAX);
        loop {
            let edges = edge_ack::Entity::find()
                .order_by_asc(edge_ack::Column::EdgeId)
                .all(&self.db)
                .await
                .map_err(db_err)?;
            let now = Utc::now();
            let waited_ms =
                u64::try_from((now - change.created_at).num_milliseconds()).unwrap_or(0);
            let live: Vec<&edge_ack::Model> = edges
                .iter()
                .filter(|e| now - e.seen_at <= liveness)
                .collect();
            if live.is_empty() {
                tracing::warn!(
                    seq = input.seq,
                    known = edges.len(),
                    "no live edge to acknowledge the route change"
                );
                return Ok(EdgesAcked {
                    edges: Vec::new(),
                    waited_ms,
                });
            }
            let lagging: Vec<&&edge_ack::Model> =
                live.iter().filter(|e| e.acked_seq < input.seq).collect();
            if lagging.is_empty() {
                return Ok(EdgesAcked {
                    edges: live.iter().map(|e| e.edge_id.clone()).collect(),
                    waited_ms,
                });
            }
            if now >= deadline {
                let named: Vec<String> = lagging
                    .iter()
                    .map(|e| {
                        format!(
                            "{} (acked seq {}, last seen {} ms ago{})",
                            e.edge_id,
                            e.acked_seq,
                            (now - e.seen_at).num_milliseconds().max(0),
                            e.address
                                .as_deref()
                                .map(|a| format!(", at {a}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                return Err(refuse(format!(
                    "edge replay gap: edge(s) {} did not acknowledge route change {} ({} epoch {}) within {} ms",
                    named.join(", "),
                    change.seq,
                    change.route_key,
                    change.epoch,
                    input.deadline_ms
                )));
            }
            heartbeat
                .beat(json!({
                    "waited_ms": waited_ms,
                    "lagging": lagging.iter().map(|e| &e.edge_id).collect::<Vec<_>>(),
                }))
                .await;
            tokio::time::sleep(EDGE_POLL).await;
        }
    }
}

/// Sets a deployment's stage, only from `from` when given; a no-op when it is there already.
async fn set_stage(
    acts: &PromotionActivities,
    id: uuid::Uuid,
    from: Option<&str>,
    to: &str,
) -> Result<(), ActivityError> {
    let Some(row) = deployment::Entity::find_by_id(id)
        .one(&acts.db)
        .await
        .map_err(db_err)?
    else {
        return Ok(());
    };
    if row.stage == to || from.is_some_and(|f| row.stage != f) {
        return Ok(());
    }
    let mut active: deployment::ActiveModel = row.into();
    active.stage = Set(to.to_owned());
    active.updated_at = Set(Utc::now());
    active.update(&acts.db).await.map_err(db_err)?;
    Ok(())
}
