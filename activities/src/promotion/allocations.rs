//! The allocations of a promotion: started (or found again) and ready before the route
//! moves, watched through the health window, and drained (never killed) once no RouteOwner
//! points at their deployment.
//!
//! Allocation ids are derived from (operation, purpose, slot, incarnation): slot `i` of a
//! set is its first incarnation whose allocation is missing or still meant to run, so a
//! retried start finds what its earlier attempt created, and a slot whose allocation failed
//! or stopped gets a new one on the next attempt.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_schema::{
    SchemaError,
    allocations::Desired,
    entity::{allocation, route_owner, runner},
};
use rhone_workflows::activities::{
    AllocationsInput, AllocationsReady, DrainInput, Drained, Health, HealthInput,
};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::json;
use temporalio_sdk::activities::ActivityError;
use uuid::Uuid;

use super::{PromotionActivities, derived_id};
use crate::allocate::{self, Heartbeat, Observed, db_err, refuse, transient};

/// How often the health window checks the allocations.
const HEALTH_POLL: Duration = Duration::from_millis(250);
/// Consecutive failed status requests after which a runner counts as down.
const UNREACHABLE_CHECKS: u32 = 3;
/// New incarnations a slot may take before the start is refused.
const MAX_INCARNATIONS: u32 = 100;

/// What fills one slot of the set.
enum Slot {
    /// This operation's allocation from an earlier attempt.
    Own(allocation::Model),
    /// A ready allocation of the deployment that was running already.
    Reused(allocation::Model),
    /// To create with this id.
    New(Uuid),
}

fn stage_of(row: &allocation::Model) -> Option<AllocationStage> {
    row.stage.parse().ok()
}

/// Still meant to run and not ended (or ending).
fn running(row: &allocation::Model) -> bool {
    row.desired == Desired::Run.as_str()
        && !matches!(
            stage_of(row),
            Some(AllocationStage::Failed | AllocationStage::Stopped | AllocationStage::Draining)
        )
}

impl PromotionActivities {
    /// The `start_allocations` activity.
    pub async fn allocations(
        &self,
        input: &AllocationsInput,
        heartbeat: Heartbeat<'_>,
    ) -> Result<AllocationsReady, ActivityError> {
        let db = &self.db;
        let dep = self.deployment(input.deployment_id).await?;
        if dep.artifact_digest.as_deref() != Some(input.digest.as_str()) {
            return Err(refuse(format!(
                "deployment {} records artifact {:?}, not {}",
                dep.id, dep.artifact_digest, input.digest
            )));
        }
        if input.instances == 0 {
            return Err(refuse("a promotion runs at least one instance"));
        }
        let manifest = allocate::manifest(db, &input.digest).await?;
        let op = input.operation_id.0.to_string();

        // This operation's allocations from earlier attempts, slot by slot.
        let mut slots = Vec::new();
        for i in 0..input.instances {
            let mut slot = None;
            for k in 0..MAX_INCARNATIONS {
                let id = derived_id(&[
                    "allocation",
                    &op,
                    &input.purpose,
                    &i.to_string(),
                    &k.to_string(),
                ]);
                match allocation::Entity::find_by_id(id)
                    .one(db)
                    .await
                    .map_err(db_err)?
                {
                    None => slot = Some(Slot::New(id)),
                    Some(row) if running(&row) => slot = Some(Slot::Own(row)),
                    Some(_) => continue,
                }
                break;
            }
            slots.push(slot.ok_or_else(|| {
                refuse(format!(
                    "slot {i} of {} allocations of operation {op} failed {MAX_INCARNATIONS} times",
                    input.purpose
                ))
            })?);
        }

        // Ready allocations of the deployment that run already (a rollback to a deployment
        // not drained yet) fill the slots this operation has not started yet.
        let own: HashSet<Uuid> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::Own(row) => Some(row.id),
                _ => None,
            })
            .collect();
        let mut candidates = allocate::ready_of(db, dep.id, &input.digest)
            .await
            .map_err(db_err)?
            .into_iter()
            .filter(|a| !own.contains(&a.id));
        for slot in slots.iter_mut() {
            if !matches!(slot, Slot::New(_)) {
                continue;
            }
            for candidate in candidates.by_ref() {
                if self.serving(&candidate).await {
                    *slot = Slot::Reused(candidate);
                    break;
                }
            }
        }

        // Create the missing ones, send every own spec, then wait for each.
        let mut started: Vec<(allocation::Model, runner::Model)> = Vec::new();
        let mut ids = Vec::new();
        let mut reused = Vec::new();
        let mut placed_now: Vec<(allocation::Model, runner::Model)> = Vec::new();
        for slot in slots {
            match slot {
                Slot::Reused(row) => {
                    ids.push(row.id);
                    reused.push(row.id);
                }
                Slot::Own(row) => {
                    let runner = allocate::runner_of(db, &row).await?.ok_or_else(|| {
                        transient(format!("the runner of allocation {} is gone", row.id))
                    })?;
                    ids.push(row.id);
                    started.push((row, runner));
                }
                Slot::New(id) => {
                    let (row, runner) = match self.create(id, &dep.id, &input.digest).await {
                        Ok(placed) => placed,
                        Err(e) => {
                            // No room for this one: the ones placed before it in this
                            // attempt were never sent to a runner and hold no capacity
                            // while the operation waits (a retry places them again).
                            self.unplace(&placed_now).await;
                            return Err(e);
                        }
                    };
                    ids.push(row.id);
                    placed_now.push((row.clone(), runner.clone()));
                    started.push((row, runner));
                }
            }
        }
        if let Err(e) = self
            .run_all(&started, &manifest, &input.purpose, heartbeat)
            .await
        {
            // A start that failed for good (the app crashed, the runner refused it) ends the
            // operation: what it started must not keep running unrouted.
            if matches!(&e, ActivityError::Application(f) if f.is_non_retryable()) {
                let own = started.iter().map(|(row, _)| row.id).collect();
                let cleanup = DrainInput {
                    operation_id: input.operation_id,
                    deployment_id: dep.id,
                    allocation_ids: Some(own),
                };
                if let Err(drain) = self.drain(&cleanup, heartbeat).await {
                    tracing::warn!(error = ?drain, "the failed start's allocations did not drain");
                }
            }
            return Err(e);
        }
        tracing::info!(allocations = ?ids, reused = ?reused, "allocations ready");
        Ok(AllocationsReady {
            allocation_ids: ids,
            reused,
        })
    }

    /// Removes allocations placed but never sent to their runner (still `planned` at
    /// generation 1), so they no longer count against its capacity.
    async fn unplace(&self, placed: &[(allocation::Model, runner::Model)]) {
        for (row, _) in placed {
            let removed = allocation::Entity::delete_many()
                .filter(allocation::Column::Id.eq(row.id))
                .filter(allocation::Column::Stage.eq(AllocationStage::Planned.as_str()))
                .filter(allocation::Column::Generation.eq(1))
                .exec(&self.db)
                .await;
            if let Err(e) = removed {
                tracing::warn!(allocation_id = %row.id, error = %e, "an unsent allocation was not removed");
            }
        }
    }

    /// Sends every spec first (the runner starts them side by side), then waits for each
    /// and records it ready.
    async fn run_all(
        &self,
        started: &[(allocation::Model, runner::Model)],
        manifest: &rhone_manifest::ArtifactManifest,
        purpose: &str,
        heartbeat: Heartbeat<'_>,
    ) -> Result<(), ActivityError> {
        for (row, runner) in started {
            let spec = allocate::spec(&self.db, &self.runners, row, manifest, Desired::Run).await?;
            allocate::put_spec(&self.runners, runner, &spec).await?;
        }
        let readiness = manifest.app.process.readiness_timeout_secs;
        for (row, runner) in started {
            let status =
                allocate::await_ready(&self.runners, runner, row.id, readiness, purpose, heartbeat)
                    .await?;
            allocate::record_ready(&self.db, runner, row.id, &status).await?;
        }
        Ok(())
    }

    /// Whether the runner of an allocation the DB calls ready says so too.
    async fn serving(&self, row: &allocation::Model) -> bool {
        let Ok(Some(runner)) = allocate::runner_of(&self.db, row).await else {
            return false;
        };
        matches!(
            allocate::observe(&self.runners, &runner, row.id).await,
            Ok(Observed::Status(s)) if s.stage == AllocationStage::Ready
        )
    }

    /// Places allocation `id` on a runner with room; a row an earlier attempt created (a
    /// race of two attempts) is taken as it is.
    async fn create(
        &self,
        id: Uuid,
        deployment_id: &Uuid,
        digest: &str,
    ) -> Result<(allocation::Model, runner::Model), ActivityError> {
        let db = &self.db;
        if let Some(row) = allocation::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(db_err)?
            && let Some(runner) = allocate::runner_of(db, &row).await?
        {
            return Ok((row, runner));
        }
        let placement = allocate::placement(db, id, *deployment_id, digest).await?;
        match allocate::place(db, &self.runners, &placement, allocate::NoRoom::Refuse).await {
            Ok(placed) => Ok(placed),
            Err(e) => {
                // A concurrent attempt placed it first.
                if let Some(row) = allocation::Entity::find_by_id(id)
                    .one(db)
                    .await
                    .map_err(db_err)?
                    && let Some(runner) = allocate::runner_of(db, &row).await?
                {
                    return Ok((row, runner));
                }
                Err(e)
            }
        }
    }

    /// The `watch_health` activity: every allocation stays ready (in the DB and on its
    /// runner) for the whole window. The first that does not ends the window unhealthy.
    pub async fn health(
        &self,
        input: &HealthInput,
        heartbeat: Heartbeat<'_>,
    ) -> Result<Health, ActivityError> {
        let window = Duration::from_millis(input.window_ms);
        let start = tokio::time::Instant::now();
        let mut unreachable: HashMap<Uuid, u32> = HashMap::new();
        let mut checks = 0;
        loop {
            checks += 1;
            for id in &input.allocation_ids {
                if let Some(reason) = self.check(*id, &mut unreachable).await? {
                    tracing::warn!(%reason, checks, "health window failed");
                    return Ok(Health {
                        healthy: false,
                        reason: Some(reason),
                        checks,
                    });
                }
            }
            let elapsed = start.elapsed();
            heartbeat
                .beat(json!({ "checks": checks, "elapsed_ms": elapsed.as_millis() as u64 }))
                .await;
            if elapsed >= window {
                return Ok(Health {
                    healthy: true,
                    reason: None,
                    checks,
                });
            }
            tokio::time::sleep(HEALTH_POLL.min(window - elapsed)).await;
        }
    }

    /// Why allocation `id` is not healthy, if it is not.
    async fn check(
        &self,
        id: Uuid,
        unreachable: &mut HashMap<Uuid, u32>,
    ) -> Result<Option<String>, ActivityError> {
        let Some(row) = allocation::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(db_err)?
        else {
            return Ok(Some(format!("allocation {id} is gone from the control DB")));
        };
        if row.desired != Desired::Run.as_str() {
            return Ok(Some(format!(
                "allocation {id} was told to stop (desired {})",
                row.desired
            )));
        }
        let Some(runner) = allocate::runner_of(&self.db, &row).await? else {
            return Ok(Some(format!("allocation {id} has no registered runner")));
        };
        match allocate::observe(&self.runners, &runner, id).await {
            Ok(Observed::Status(status)) => {
                unreachable.remove(&id);
                if status.stage != AllocationStage::Ready {
                    return Ok(Some(format!(
                        "allocation {id} {}",
                        allocate::failure(&status)
                    )));
                }
            }
            Ok(Observed::Unknown) => {
                return Ok(Some(format!(
                    "allocation {id} is not known to runner {} any more (restarted?)",
                    runner.name
                )));
            }
            Err(reason) => {
                let count = unreachable.entry(id).or_default();
                *count += 1;
                if *count > UNREACHABLE_CHECKS {
                    return Ok(Some(format!(
                        "allocation {id}: {reason} ({count} checks in a row)"
                    )));
                }
                tracing::debug!(%reason, count = *count, "runner did not answer");
            }
        }
        if row.stage != AllocationStage::Ready.as_str() {
            return Ok(Some(format!(
                "allocation {id} is {}{} in the control DB",
                row.stage,
                row.exit_status
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            )));
        }
        Ok(None)
    }

    /// The `drain_allocations` activity. The choice of what to drain and the desired-state
    /// writes happen under the route lock (the one [`rhone_schema::routes::write_owner`]
    /// takes), so no allocation of a deployment a RouteOwner points at is ever told to stop;
    /// then each runner is told, as a newer generation of the same workload, so its reports
    /// keep reaching the row.
    pub async fn drain(
        &self,
        input: &DrainInput,
        heartbeat: Heartbeat<'_>,
    ) -> Result<Drained, ActivityError> {
        let (stopping, kept) = self.stop_rows(input).await.map_err(db_err)?;
        for row in &stopping {
            self.stop_on_runner(row).await?;
            heartbeat.beat(json!({ "drained": row.id })).await;
        }
        let drained: Vec<Uuid> = stopping.iter().map(|r| r.id).collect();
        tracing::info!(?drained, ?kept, "allocations drained");
        Ok(Drained {
            allocation_ids: drained,
            kept,
        })
    }

    /// Marks the allocations to drain desired `stop` (bumping the generation) and returns
    /// them, with the ids kept because a RouteOwner points at their deployment.
    async fn stop_rows(
        &self,
        input: &DrainInput,
    ) -> Result<(Vec<allocation::Model>, Vec<Uuid>), SchemaError> {
        let txn = rhone_schema::routes::begin_locked(&self.db).await?;
        let select = allocation::Entity::find().order_by_asc(allocation::Column::Id);
        let rows = match &input.allocation_ids {
            Some(ids) => select.filter(allocation::Column::Id.is_in(ids.iter().copied())),
            // Rows told to stop by an attempt that did not reach their runner count too.
            None => select
                .filter(allocation::Column::DeploymentId.eq(input.deployment_id))
                .filter(
                    Condition::any()
                        .add(allocation::Column::Desired.eq(Desired::Run.as_str()))
                        .add(allocation::Column::Stage.is_not_in([
                            AllocationStage::Stopped.as_str(),
                            AllocationStage::Failed.as_str(),
                        ])),
                ),
        }
        .lock_exclusive()
        .all(&txn)
        .await?;
        let live: HashSet<Uuid> = route_owner::Entity::find()
            .all(&txn)
            .await?
            .into_iter()
            .map(|o| o.deployment_id)
            .collect();
        let mut stopping = Vec::new();
        let mut kept = Vec::new();
        for row in rows {
            if live.contains(&row.deployment_id) {
                kept.push(row.id);
                continue;
            }
            stopping
                .push(rhone_schema::allocations::set_desired_in(&txn, row, Desired::Stop).await?);
        }
        txn.commit().await?;
        Ok((stopping, kept))
    }

    /// Tells the runner to drain `row` ([`allocate::stop_on_runner`]).
    async fn stop_on_runner(&self, row: &allocation::Model) -> Result<(), ActivityError> {
        allocate::stop_on_runner(&self.db, &self.runners, row).await
    }
}
