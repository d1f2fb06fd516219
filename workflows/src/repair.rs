//! Repair: a route owner's missing allocations replaced, `detected → replacing → ready →
//! repaired`, or `failed`. Started by the fleet watch ([`crate::fleet`]) for a route owner
//! that runs fewer allocations than it is meant to because some ended while meant to serve
//! (their runner lost, a crash after they were ready, a host restart); the workflow id
//! names the route and epoch ([`rhone_core::repair_workflow_id`]), so one runs at a time,
//! and each run is one Operation whose id is the run id.
//!
//! - `detected`: what the watch found (which allocations, on which runner, why) as evidence.
//! - `replacing`: the owner's set is started again with the `start_allocations` activity of
//!   promotions (slots still served keep their allocation; the others get a new one, placed
//!   by capacity away from what the environment runs already) and waited for until ready.
//!   No room anywhere is `blocked` with the shortfall, tried again every
//!   [`BLOCKED_RETRY`] or on `retry`.
//! - `ready`: the replacements serve; the edge routes to them (it routes to the owner's
//!   ready allocations). Evidence: where each went.
//! - `repaired`: they stayed healthy through the health window.
//!
//! A replacement that fails to start or crashes within the health window is a crash: the
//! next attempt waits 1 s, 2 s, 4 s …; after [`CRASHES_BEFORE_ATTENTION`] in a row the
//! operation parks `needs_attention` with the failure (which quotes the app's last log
//! lines) until on-call sends `retry` or `abort`. A route that moves to another epoch meanwhile
//! ends the repair `failed` ("route epoch superseded") and drains what it started.

use std::time::Duration;

use rhone_core::StateMachine;
use rhone_core::{
    OperationId, OperationKind, fleet::NO_CAPACITY, fleet::RepairNeed, stage::RepairStage,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{
    ChildWorkflowOptions, ParentClosePolicy, SyncWorkflowContext, WorkflowContext,
    WorkflowContextView, WorkflowIdReusePolicy, WorkflowResult, WorkflowTermination,
};
use uuid::Uuid;

use crate::{
    activities::{
        AllocationsInput, AllocationsReady, DrainInput, Health, HealthInput, PromotionActivities,
        RepairActivities, RepairCheck, RepairCheckInput, RepairOpenInput, RepairOpened,
    },
    stages::{
        Decision, DecisionKind, DecisionSlot, DecisionTaken, Operation, Refusal, StepFailure,
        await_decision, expect_decision, quick, step, watched,
    },
    wake::operation_id_of_run,
};

/// Crashes in a row after which the repair waits for on-call.
pub const CRASHES_BEFORE_ATTENTION: u32 = 3;
/// How often a blocked repair tries to place again on its own.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(5);
/// The purpose of the allocation set a repair starts (allocation ids derive from it).
const PURPOSE: &str = "repair";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairInput {
    pub need: RepairNeed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairOutcome {
    pub operation_id: Uuid,
    /// The owner's allocations once repaired (replacements and the ones that kept serving).
    pub allocation_ids: Vec<Uuid>,
    /// The replacements.
    pub replacements: Vec<Uuid>,
}

#[workflow]
#[derive(Default)]
pub struct RepairWorkflow {
    decisions: DecisionSlot,
}

crate::decisions_in_slot!(RepairWorkflow);

type Flow<T> = Result<Result<T, StepFailure>, WorkflowTermination>;

/// `route epoch superseded: …`, the failure of a repair whose route moved on.
fn superseded(key: &str, epoch: i64, owner_epoch: i64) -> String {
    format!(
        "route epoch superseded: this repair was for epoch {epoch} of {key}, the owner is at epoch {owner_epoch}"
    )
}

#[workflow_methods]
impl RepairWorkflow {
    #[run(name = "repair")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: RepairInput,
    ) -> WorkflowResult<RepairOutcome> {
        let operation_id = operation_id_of_run(ctx.run_id());
        let mut op = Operation::new(OperationId(operation_id), OperationKind::Repair);
        match Self::pipeline(ctx, &mut op, &input.need).await? {
            Ok(outcome) => Ok(outcome),
            Err(failure) => op.end_failed(ctx, RepairStage::Failed, failure).await,
        }
    }

    async fn pipeline(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        need: &RepairNeed,
    ) -> Flow<RepairOutcome> {
        let opened: RepairOpened = step!(
            op,
            ctx,
            RepairActivities::open_repair,
            RepairOpenInput {
                operation_id: op.id,
                workflow_ref: format!("{}/{}", ctx.workflow_id(), ctx.run_id()),
                need: need.clone(),
            },
            quick()
        );
        if let Some(owner_epoch) = opened.superseded_by {
            return Ok(Err(StepFailure::Rejected(superseded(
                &need.route_key,
                need.epoch,
                owner_epoch,
            ))));
        }
        let set = AllocationsInput {
            operation_id: op.id,
            deployment_id: need.deployment_id,
            digest: need.artifact_digest.clone(),
            instances: need.instances,
            purpose: PURPOSE.into(),
        };
        let mut crashes = 0u32;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            op.enter(
                ctx,
                RepairStage::Replacing,
                json!({
                    "attempt": attempt, "instances": need.instances,
                    "serving_before": need.serving, "crashes_in_a_row": crashes,
                }),
                None,
            )
            .await?;
            let started = op
                .step(
                    ctx,
                    || PromotionActivities::start_allocations,
                    set.clone(),
                    watched(Duration::from_secs(600)),
                )
                .await?;
            let crash = match started {
                Ok(started) => match Self::serve(ctx, op, need, &opened, &started).await? {
                    Ok(Some(outcome)) => return Ok(Ok(outcome)),
                    Ok(None) => None,
                    Err(failure) => return Ok(Err(failure)),
                },
                Err(StepFailure::Rejected(why)) if why.starts_with(NO_CAPACITY) => {
                    op.enter(
                        ctx,
                        RepairStage::Blocked,
                        json!({
                            "gate": "capacity", "instances": need.instances,
                            "shortfall": why.trim_start_matches(NO_CAPACITY),
                            "retry_in_ms": BLOCKED_RETRY.as_millis() as u64,
                        }),
                        Some(why),
                    )
                    .await?;
                    if let Err(aborted) =
                        Self::pause(ctx, op, RepairStage::Blocked, BLOCKED_RETRY).await?
                    {
                        return Ok(Err(StepFailure::Aborted(aborted)));
                    }
                    continue;
                }
                Err(StepFailure::Rejected(why)) => Some(why),
                Err(aborted) => return Ok(Err(aborted)),
            };
            let Some(why) = crash else { continue };
            crashes += 1;
            if crashes >= CRASHES_BEFORE_ATTENTION {
                let message = format!(
                    "the replacement failed {crashes} times in a row; the last time: {why}"
                );
                if let Err(aborted) = op.needs_attention(ctx, message).await? {
                    return Ok(Err(StepFailure::Aborted(aborted)));
                }
                crashes = 0;
            } else {
                let backoff = Duration::from_secs(1 << (crashes - 1));
                if let Err(aborted) = Self::pause(ctx, op, RepairStage::Replacing, backoff).await? {
                    return Ok(Err(StepFailure::Aborted(aborted)));
                }
            }
        }
    }

    /// The set is ready: checks the route is still at the need's epoch, records where the
    /// replacements went, and watches them through the health window. `Some` when repaired,
    /// `None` on a crash (the caller tries again), a failure when the route moved.
    async fn serve(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        need: &RepairNeed,
        opened: &RepairOpened,
        started: &AllocationsReady,
    ) -> Flow<Option<RepairOutcome>> {
        let replacements: Vec<Uuid> = started
            .allocation_ids
            .iter()
            .filter(|id| !started.reused.contains(id))
            .copied()
            .collect();
        let check: RepairCheck = step!(
            op,
            ctx,
            RepairActivities::check_repair,
            RepairCheckInput {
                route_key: need.route_key.clone(),
                epoch: need.epoch,
                allocation_ids: started.allocation_ids.clone(),
            },
            quick()
        );
        if let Some(owner_epoch) = check.superseded_by {
            // Never served under this epoch: drain them (the drain keeps any a live owner
            // points at).
            step!(
                op,
                ctx,
                PromotionActivities::drain_allocations,
                DrainInput {
                    operation_id: op.id,
                    deployment_id: need.deployment_id,
                    allocation_ids: Some(replacements),
                },
                watched(Duration::from_secs(120))
            );
            return Ok(Err(StepFailure::Rejected(superseded(
                &need.route_key,
                need.epoch,
                owner_epoch,
            ))));
        }
        op.enter(
            ctx,
            RepairStage::Ready,
            json!({
                "route_key": need.route_key, "epoch": need.epoch,
                "replacements": check.placed.iter().filter(|p| replacements.contains(&p.allocation_id)).collect::<Vec<_>>(),
                "kept": started.reused,
                "replaced": need.lost.iter().map(|l| l.allocation_id).collect::<Vec<_>>(),
                "health_window_ms": opened.health_window_ms,
            }),
            None,
        )
        .await?;
        let health: Health = step!(
            op,
            ctx,
            PromotionActivities::watch_health,
            HealthInput {
                operation_id: op.id,
                allocation_ids: started.allocation_ids.clone(),
                window_ms: opened.health_window_ms,
            },
            watched(Duration::from_millis(opened.health_window_ms) + Duration::from_secs(60))
        );
        if !health.healthy {
            return Ok(Ok(None));
        }
        op.enter(
            ctx,
            RepairStage::Repaired,
            json!({ "checks": health.checks, "allocation_ids": started.allocation_ids }),
            None,
        )
        .await?;
        Ok(Ok(Some(RepairOutcome {
            operation_id: op.id.0,
            allocation_ids: started.allocation_ids.clone(),
            replacements,
        })))
    }

    /// Waits `delay` in `stage`, or less when on-call sends `retry`; `Err` on `abort`.
    async fn pause(
        ctx: &WorkflowContext<Self>,
        op: &Operation,
        stage: RepairStage,
        delay: Duration,
    ) -> Result<Result<(), Decision>, WorkflowTermination> {
        expect_decision(
            ctx,
            op,
            stage.as_str(),
            &[DecisionKind::Retry, DecisionKind::Abort],
        );
        let decided = {
            let mut decided = ctx.wait_condition(|w| w.decisions.taken());
            let mut timer = ctx.timer(delay);
            temporalio_workflow::select! {
                _ = timer => false,
                waited = decided => { waited?; true },
            }
        };
        if !decided {
            // The timer won; a decision taken in the same activation still counts.
            if !ctx.state(|w| w.decisions.taken()) {
                ctx.state_mut(|w| w.decisions.close());
                return Ok(Ok(()));
            }
        }
        Ok(match await_decision(ctx, op).await? {
            (DecisionKind::Abort, d) => Err(d),
            (_, _) => Ok(()),
        })
    }

    #[update_validator(approve)]
    pub fn check_approve(
        &self,
        _ctx: &WorkflowContextView,
        decision: &Decision,
    ) -> Result<(), Refusal> {
        self.decisions.check(DecisionKind::Approve, decision)
    }

    #[update(name = "approve")]
    pub fn approve(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        decision: Decision,
    ) -> DecisionTaken {
        self.decisions.put(DecisionKind::Approve, decision)
    }

    #[update_validator(retry)]
    pub fn check_retry(
        &self,
        _ctx: &WorkflowContextView,
        decision: &Decision,
    ) -> Result<(), Refusal> {
        self.decisions.check(DecisionKind::Retry, decision)
    }

    #[update(name = "retry")]
    pub fn retry(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        decision: Decision,
    ) -> DecisionTaken {
        self.decisions.put(DecisionKind::Retry, decision)
    }

    #[update_validator(abort)]
    pub fn check_abort(
        &self,
        _ctx: &WorkflowContextView,
        decision: &Decision,
    ) -> Result<(), Refusal> {
        self.decisions.check(DecisionKind::Abort, decision)
    }

    #[update(name = "abort")]
    pub fn abort(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        decision: Decision,
    ) -> DecisionTaken {
        self.decisions.put(DecisionKind::Abort, decision)
    }
}

/// Starts the Repair of `need` as a child that outlives the fleet watch's run. A Repair of
/// that route epoch already running is the repair already: nothing to do.
pub async fn start_repair<W>(
    ctx: &WorkflowContext<W>,
    need: &RepairNeed,
) -> Result<(), WorkflowTermination> {
    let options = ChildWorkflowOptions::builder()
        .workflow_id(rhone_core::repair_workflow_id(&need.route_key, need.epoch))
        .parent_close_policy(ParentClosePolicy::Abandon)
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .build();
    let _ = ctx
        .start_child_workflow(
            RepairWorkflow::run,
            RepairInput { need: need.clone() },
            options,
        )
        .await;
    Ok(())
}
