//! The one allocation of a wake: created under the route lock after the epoch re-check,
//! sent to a runner, waited for within the artifact's readiness timeout, and drained when
//! it does not become ready.

use std::time::Duration;

use chrono::Utc;
use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_runner_protocol::AllocationStatus;
use rhone_schema::{
    SchemaError,
    allocations::{self, Desired},
    entity::{allocation, operation, route_owner},
};
use rhone_workflows::{
    activities::{WakeReady, WakeReadyInput, WakeStartInput, WakeStarted, WakeStopInput},
    wake::superseded,
};
use sea_orm::EntityTrait;
use serde_json::json;
use temporalio_sdk::activities::ActivityError;
use uuid::Uuid;

use super::{WakeActivities, route_locked};
use crate::allocate::{self, Heartbeat, Observed, POLL, PULL_ALLOWANCE, db_err, refuse, transient};
use crate::promotion::derived_id;

/// How often a starting allocation is polled.
/// The log lines a failed wake quotes.
const LOG_LINES: usize = 20;

/// The allocation of a wake: one per operation.
pub fn wake_allocation_id(operation_id: Uuid) -> Uuid {
    derived_id(&["allocation", &operation_id.to_string(), "wake", "0"])
}

/// The last `LOG_LINES` lines of the allocation's output.
fn last_lines(status: &AllocationStatus) -> Vec<String> {
    let start = status.last_log_lines.len().saturating_sub(LOG_LINES);
    status.last_log_lines[start..].to_vec()
}

/// Why the allocation is not ready: its stage, the runner's reason, how it ended and its
/// last log lines.
fn reason(status: &AllocationStatus, what: &str) -> String {
    let lines = last_lines(status).join("\n");
    format!(
        "{what} ({}: {}{}){}",
        status.stage,
        status.message.as_deref().unwrap_or("no reason given"),
        status
            .exit_status
            .as_deref()
            .map(|s| format!(", {s}"))
            .unwrap_or_default(),
        if lines.is_empty() {
            "; no log lines".to_owned()
        } else {
            format!("; last log lines:\n{lines}")
        },
    )
}

impl WakeActivities {
    /// The `start_wake_allocation` activity. Under the route lock: the owner must still be
    /// at the run's epoch and point at the deployment and digest the run read, then the
    /// allocation row is created (a retry finds it). Then the runner is sent its spec.
    pub async fn start(&self, input: &WakeStartInput) -> Result<WakeStarted, ActivityError> {
        let db = &self.db;
        let id = wake_allocation_id(input.operation_id.0);
        let placement = allocate::placement(db, id, input.deployment_id, &input.digest).await?;
        let txn = route_locked(db).await?;
        let owner = route_owner::Entity::find_by_id(input.route_key.clone())
            .one(&txn)
            .await
            .map_err(db_err)?;
        let owner_epoch = owner.as_ref().map_or(0, |o| o.epoch);
        let same = owner.as_ref().is_some_and(|o| {
            o.epoch == input.epoch
                && o.deployment_id == input.deployment_id
                && o.artifact_digest == input.digest
        });
        if !same {
            txn.rollback().await.map_err(db_err)?;
            return Err(refuse(superseded(
                &input.route_key,
                input.epoch,
                owner_epoch,
            )));
        }
        let row = match allocation::Entity::find_by_id(id)
            .one(&txn)
            .await
            .map_err(db_err)?
        {
            Some(row) => row,
            None => {
                rhone_schema::fleet::place_allocation_in(&txn, &placement)
                    .await
                    .map_err(|e| allocate::placement_err(e, allocate::NoRoom::Retry))?
                    .0
            }
        };
        txn.commit().await.map_err(db_err)?;
        if row.desired != Desired::Run.as_str() {
            return Err(refuse(format!(
                "allocation {id} of this wake was told to stop already"
            )));
        }
        let runner = allocate::runner_of(db, &row)
            .await?
            .ok_or_else(|| transient(format!("the runner of allocation {id} is gone")))?;
        let runner = allocate::record_network(db, &self.runners, runner).await?;
        let manifest = allocate::manifest(db, &row.artifact_digest).await?;
        let spec = allocate::spec(db, &self.runners, &row, &manifest, Desired::Run).await?;
        if let Err(e) = allocate::put_spec(&self.runners, &runner, &spec).await {
            if matches!(&e, ActivityError::Application(f) if f.is_non_retryable()) {
                // Refused for good: the row must not stay meant to run.
                allocations::set_desired(db, id, Desired::Stop)
                    .await
                    .map_err(db_err)?;
            }
            return Err(e);
        }
        tracing::info!(allocation_id = %id, runner = %runner.name, "wake allocation sent");
        Ok(WakeStarted {
            allocation_id: id,
            runner: runner.name,
        })
    }

    /// The `await_wake_ready` activity: polls the runner until the allocation is ready
    /// (recorded on the row), has failed or stopped (the runner fails it when the app's
    /// readiness timeout passes), or the route moves past the run's epoch. The runner's
    /// timeout is the artifact's `readiness_timeout_secs`; this activity's own deadline adds
    /// a pull allowance, counted from the allocation's creation so a retry does not extend it.
    pub async fn ready(
        &self,
        input: &WakeReadyInput,
        heartbeat: Heartbeat<'_>,
    ) -> Result<WakeReady, ActivityError> {
        let db = &self.db;
        let id = input.allocation_id;
        let row = allocation::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("allocation {id} is not recorded")))?;
        let runner = allocate::runner_of(db, &row)
            .await?
            .ok_or_else(|| transient(format!("the runner of allocation {id} is gone")))?;
        let runner = allocate::record_network(db, &self.runners, runner).await?;
        let requested_at = operation::Entity::find_by_id(input.operation_id.0)
            .one(db)
            .await
            .map_err(db_err)?
            .map_or(row.created_at, |o| o.created_at);
        let allowance = Duration::from_secs(input.readiness_timeout_secs) + PULL_ALLOWANCE;
        let deadline =
            row.created_at + chrono::Duration::from_std(allowance).unwrap_or(chrono::Duration::MAX);
        let not_ready = |reason: String, log_lines: Vec<String>, superseded_by| WakeReady {
            ready: false,
            superseded_by,
            reason: Some(reason),
            log_lines,
            since_request_ms: 0,
        };
        loop {
            let owner_epoch = route_owner::Entity::find_by_id(input.route_key.clone())
                .one(db)
                .await
                .map_err(db_err)?
                .map_or(0, |o| o.epoch);
            if owner_epoch != input.epoch {
                return Ok(not_ready(
                    superseded(&input.route_key, input.epoch, owner_epoch),
                    Vec::new(),
                    Some(owner_epoch),
                ));
            }
            let observed = allocate::observe(&self.runners, &runner, id).await;
            let stage = match &observed {
                Ok(Observed::Status(s)) => s.stage.as_str(),
                Ok(Observed::Unknown) => "unknown",
                Err(_) => "unreachable",
            };
            heartbeat
                .beat(json!({ "allocation_id": id, "stage": stage }))
                .await;
            match observed {
                Ok(Observed::Status(status)) => match status.stage {
                    AllocationStage::Ready => {
                        allocate::record_ready(db, &runner, id, &status).await?;
                        let since = (Utc::now() - requested_at).num_milliseconds().max(0);
                        tracing::info!(allocation_id = %id, since_request_ms = since, "wake allocation ready");
                        return Ok(WakeReady {
                            ready: true,
                            superseded_by: None,
                            reason: None,
                            log_lines: Vec::new(),
                            since_request_ms: since as u64,
                        });
                    }
                    AllocationStage::Failed
                    | AllocationStage::Stopped
                    | AllocationStage::Draining => {
                        let what = format!(
                            "not ready within the readiness timeout of {} s or ended",
                            input.readiness_timeout_secs
                        );
                        return Ok(not_ready(reason(&status, &what), last_lines(&status), None));
                    }
                    _ if Utc::now() > deadline => {
                        let what = format!(
                            "still {} {} s after it was started",
                            status.stage,
                            allowance.as_secs()
                        );
                        return Ok(not_ready(reason(&status, &what), last_lines(&status), None));
                    }
                    _ => {}
                },
                Ok(Observed::Unknown) => {
                    return Err(transient(format!(
                        "allocation {id} is not known to runner {} (restarted?)",
                        runner.name
                    )));
                }
                Err(e) if Utc::now() > deadline => {
                    return Ok(not_ready(e, Vec::new(), None));
                }
                Err(e) => tracing::debug!(error = %e, "runner did not answer"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The `stop_wake_allocations` activity: exactly these allocations are told to stop
    /// (desired `stop` at a new generation) and their runners to drain them. The allocations
    /// stopped.
    pub async fn stop(&self, input: &WakeStopInput) -> Result<Vec<Uuid>, ActivityError> {
        let mut stopped = Vec::new();
        for id in &input.allocation_ids {
            let row = match allocations::set_desired(&self.db, *id, Desired::Stop).await {
                Ok(row) => row,
                Err(SchemaError::NotFound { .. }) => continue,
                Err(e) => return Err(db_err(e)),
            };
            allocate::stop_on_runner(&self.db, &self.runners, &row).await?;
            stopped.push(row.id);
        }
        tracing::info!(?stopped, "wake allocations drained");
        Ok(stopped)
    }
}
