//! The idle watch of a hot route and its sleep: idle is no request reported by any edge for
//! the environment's `sleep_after_ms` (counted from the run's hot time when that is later)
//! and no WebSocket open through a live edge.

use chrono::{DateTime, Utc};
use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_schema::{
    allocations::Desired,
    entity::{allocation, environment, route_activity, route_owner},
};
use rhone_workflows::activities::{IdleReport, RouteIdleInput, SleepInput, Slept};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;
use temporalio_sdk::activities::ActivityError;
use uuid::Uuid;

use super::{WakeActivities, open::set_state};
use crate::allocate::{self, Heartbeat, db_err, refuse};

/// `environments.wake_state` of a sleeping route.
const SLEEPING: &str = "sleeping";

/// What the edges report about a route right now.
struct Traffic {
    idle_ms: u64,
    open_sockets: u64,
}

impl WakeActivities {
    /// Idle time and open sockets of `key`, read through `db` at `now`.
    async fn traffic<C: ConnectionTrait>(
        &self,
        db: &C,
        key: &str,
        hot_at_ms: i64,
        now: DateTime<Utc>,
    ) -> Result<Traffic, ActivityError> {
        let rows = route_activity::Entity::find()
            .filter(route_activity::Column::RouteKey.eq(key))
            .all(db)
            .await
            .map_err(db_err)?;
        let hot_at = DateTime::<Utc>::from_timestamp_millis(hot_at_ms).unwrap_or(now);
        let last = rows
            .iter()
            .filter_map(|r| r.last_request_at)
            .max()
            .map_or(hot_at, |at| at.max(hot_at));
        let liveness =
            chrono::Duration::from_std(self.edge_liveness).unwrap_or(chrono::Duration::MAX);
        let open_sockets = rows
            .iter()
            .filter(|r| now - r.updated_at <= liveness)
            .map(|r| u64::try_from(r.open_sockets).unwrap_or(0))
            .sum();
        Ok(Traffic {
            idle_ms: u64::try_from((now - last).num_milliseconds()).unwrap_or(0),
            open_sockets,
        })
    }

    /// The `route_idle` activity.
    pub async fn idle(&self, input: &RouteIdleInput) -> Result<IdleReport, ActivityError> {
        let db = &self.db;
        let owner = route_owner::Entity::find_by_id(input.route_key.clone())
            .one(db)
            .await
            .map_err(db_err)?;
        let Some(owner) = owner.filter(|o| o.epoch == input.epoch) else {
            return Ok(IdleReport {
                superseded: true,
                scale_to_zero: false,
                sleep_after_ms: 0,
                idle_ms: 0,
                open_sockets: 0,
                ready_allocations: None,
            });
        };
        let env = environment::Entity::find_by_id(owner.environment_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("the environment of {} is gone", input.route_key)))?;
        let traffic = self
            .traffic(db, &input.route_key, input.hot_at_ms, Utc::now())
            .await?;
        let ready = allocate::ready_of(db, owner.deployment_id, &owner.artifact_digest)
            .await
            .map_err(db_err)?;
        Ok(IdleReport {
            superseded: false,
            scale_to_zero: env.scale_to_zero,
            sleep_after_ms: u64::try_from(env.sleep_after_ms).unwrap_or(0),
            idle_ms: traffic.idle_ms,
            open_sockets: traffic.open_sockets,
            ready_allocations: Some(ready.len() as u64),
        })
    }

    /// The `sleep_route` activity. Under the route lock: the owner is still at the run's
    /// epoch, the environment still scales to zero and the route is still idle; then the
    /// owner's allocations are told to stop (desired `stop` at a new generation) and the
    /// environment's `wake_state` becomes `sleeping`, in one transaction. Then each runner
    /// drains its allocation (SIGTERM, requests in flight finish), `drain_grace` after the
    /// commit so the edges have stopped sending it requests. A retry after the commit
    /// finds the route asleep and finishes telling the runners.
    pub async fn sleep(
        &self,
        input: &SleepInput,
        heartbeat: Heartbeat<'_>,
    ) -> Result<Slept, ActivityError> {
        let key = &input.route_key;
        let txn = super::route_locked(&self.db).await?;
        let not = |reason: String, idle_ms| Slept {
            slept: false,
            reason: Some(reason),
            idle_ms,
            allocation_ids: Vec::new(),
            undrained: Vec::new(),
        };
        let owner = route_owner::Entity::find_by_id(key.clone())
            .one(&txn)
            .await
            .map_err(db_err)?;
        let Some(owner) = owner.filter(|o| o.epoch == input.epoch) else {
            txn.rollback().await.map_err(db_err)?;
            return Ok(not(format!("{key} moved past epoch {}", input.epoch), 0));
        };
        let env = environment::Entity::find_by_id(owner.environment_id)
            .one(&txn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("the environment of {key} is gone")))?;
        let traffic = self.traffic(&txn, key, input.hot_at_ms, Utc::now()).await?;
        let asleep = env.wake_state == SLEEPING;
        if !asleep {
            if !env.scale_to_zero {
                txn.rollback().await.map_err(db_err)?;
                return Ok(not("scale to zero is off".into(), traffic.idle_ms));
            }
            let sleep_after = u64::try_from(env.sleep_after_ms).unwrap_or(0);
            if traffic.idle_ms < sleep_after || traffic.open_sockets > 0 {
                txn.rollback().await.map_err(db_err)?;
                return Ok(not(
                    format!(
                        "not idle: {} ms since the last request, {} open socket(s)",
                        traffic.idle_ms, traffic.open_sockets
                    ),
                    traffic.idle_ms,
                ));
            }
        }
        // The owner's allocations still running, and those told to stop by an attempt that
        // did not reach their runner.
        let rows = allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(owner.deployment_id))
            .filter(allocation::Column::ArtifactDigest.eq(owner.artifact_digest.as_str()))
            .filter(
                Condition::any()
                    .add(allocation::Column::Desired.eq(Desired::Run.as_str()))
                    .add(allocation::Column::Stage.is_not_in([
                        AllocationStage::Stopped.as_str(),
                        AllocationStage::Failed.as_str(),
                    ])),
            )
            .order_by_asc(allocation::Column::Id)
            .lock_exclusive()
            .all(&txn)
            .await
            .map_err(db_err)?;
        let mut stopping = Vec::new();
        for row in rows {
            stopping.push(
                rhone_schema::allocations::set_desired_in(&txn, row, Desired::Stop)
                    .await
                    .map_err(db_err)?,
            );
        }
        set_state(&txn, env.id, SLEEPING).await?;
        txn.commit().await.map_err(db_err)?;

        let ids: Vec<Uuid> = stopping.iter().map(|r| r.id).collect();
        // The edges stop routing to these within a poll; requests they sent before finish.
        heartbeat
            .beat(json!({ "asleep": true, "draining": ids }))
            .await;
        tokio::time::sleep(self.config.drain_grace).await;
        // The route is asleep from the commit on: a runner that cannot be told now does not
        // undo that (its allocation no longer serves), it is named in the evidence.
        let mut undrained = Vec::new();
        for row in &stopping {
            match allocate::stop_on_runner(&self.db, &self.runners, row).await {
                Ok(()) => heartbeat.beat(json!({ "drained": row.id })).await,
                Err(e) => {
                    tracing::warn!(%key, allocation = %row.id, error = ?e, "telling the runner to drain failed");
                    undrained.push(format!("{}: {e:?}", row.id));
                }
            }
        }
        tracing::info!(%key, idle_ms = traffic.idle_ms, drained = ?ids, "route asleep");
        Ok(Slept {
            slept: true,
            reason: None,
            idle_ms: traffic.idle_ms,
            allocation_ids: ids,
            undrained,
        })
    }
}
