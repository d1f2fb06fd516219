//! Promotion (and rollback, the same machine pointed at an earlier deployment):
//! `requested → policy_check → route_cas → edge_propagating → healthy`, or `rolled_back` /
//! `failed`.
//!
//! - `policy_check`: the gates (exact preview artifact or a safe rollback target, route epoch
//!   still the one the operation started from, runtime services for more than one
//!   allocation); an environment that requires approval waits here for `approve`.
//! - `route_cas`: allocations of the exact artifact start and become ready first, then the
//!   RouteOwner moves from epoch N to N+1 by compare-and-swap. The loser of a race ends
//!   `failed` with the route-epoch conflict and drains what it started.
//! - `edge_propagating`: waits until every live edge acknowledges the change; a deadline
//!   passed is an edge replay gap naming the lagging edges.
//! - `healthy`: a health window on the new allocations (status `running` until it passes).
//!   Failure moves the route back by a new CAS (N+2) and ends `rolled_back`; success drains
//!   the previous owner's allocations after a grace period. An environment that scales to
//!   zero then gets its Wake run in watch mode (`crate::wake::start_watch`), which puts the
//!   route to sleep once idle.

use std::time::Duration;

use rhone_core::StateMachine;
use rhone_core::{
    OperationId, OperationKind, OperationStatus, fleet::NO_CAPACITY, stage::PromotionStage,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{
    ActivityOptions, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination,
};
use uuid::Uuid;

use crate::{
    activities::{
        AllocationsInput, AllocationsReady, AwaitEdgesInput, DrainInput, HealthInput,
        MigrationPhase, MoveRouteInput, Policy, PolicyInput, PromotionActivities, RouteMoved,
        RouteTarget,
    },
    migration::{MigrationChild, after_route, deferred, run_child},
    stages::{
        Decision, DecisionKind, DecisionSlot, DecisionTaken, Operation, Refusal, StepFailure,
        expect_decision, quick, step, wait_for_decision, watched,
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionInput {
    pub operation_id: OperationId,
    /// [`OperationKind::Promotion`] or [`OperationKind::Rollback`].
    pub kind: OperationKind,
    /// The environment whose RouteOwner moves.
    pub environment_id: Uuid,
    /// The deployment of that environment the RouteOwner will point at: a new production
    /// deployment of the preview's artifact, or the earlier deployment a rollback returns to.
    pub deployment_id: Uuid,
    /// The validated preview deployment a promotion takes its artifact from.
    pub source_deployment_id: Option<Uuid>,
    /// The route epoch the operation started from (0 when the route has no owner yet).
    pub expected_epoch: i64,
    pub instances: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionOutcome {
    pub route_key: String,
    pub deployment_id: Uuid,
    pub digest: String,
    pub epoch: i64,
    pub edges: Vec<String>,
    /// The Migration of the release's contract files, run once the route moved and the old
    /// allocations drained: what it applied, or why not (`not_applied`); null without one.
    #[serde(default)]
    pub contract_migration: serde_json::Value,
}

#[workflow]
#[derive(Default)]
pub struct PromotionWorkflow {
    decisions: DecisionSlot,
}

crate::decisions_in_slot!(PromotionWorkflow);

/// How the pipeline ended when it did not end healthy.
enum Ending {
    Failed(StepFailure),
    /// The health window failed and the route went back to `to`.
    RolledBack {
        reason: String,
        to: RouteTarget,
        evidence: serde_json::Value,
    },
}

impl From<StepFailure> for Ending {
    fn from(f: StepFailure) -> Self {
        Ending::Failed(f)
    }
}

type Flow<T> = Result<Result<T, Ending>, WorkflowTermination>;

/// The wait for every live edge to acknowledge change `seq`, and its options: the
/// deadline, plus time for a retry after a lost worker.
fn edges_of(
    input: &PromotionInput,
    policy: &Policy,
    seq: i64,
) -> (AwaitEdgesInput, ActivityOptions) {
    let edges = AwaitEdgesInput {
        operation_id: input.operation_id,
        route_key: policy.route_key.clone(),
        seq,
        deadline_ms: policy.propagation_deadline_ms,
    };
    let limit = Duration::from_millis(policy.propagation_deadline_ms) + Duration::from_secs(60);
    (edges, watched(limit))
}

#[workflow_methods]
impl PromotionWorkflow {
    #[run(name = "promotion")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: PromotionInput,
    ) -> WorkflowResult<PromotionOutcome> {
        let mut op = Operation::new(input.operation_id, input.kind);
        match Self::pipeline(ctx, &mut op, &input).await? {
            Ok(outcome) => Ok(outcome),
            Err(Ending::Failed(failure)) => {
                op.end_failed(ctx, PromotionStage::Failed, failure).await
            }
            Err(Ending::RolledBack {
                reason,
                to,
                evidence,
            }) => {
                let message = format!(
                    "rolled back to deployment {} at epoch {}: {reason}",
                    to.deployment_id, to.epoch
                );
                op.end_with(
                    ctx,
                    PromotionStage::RolledBack,
                    StepFailure::Rejected(message),
                    evidence,
                )
                .await
            }
        }
    }

    async fn pipeline(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        input: &PromotionInput,
    ) -> Flow<PromotionOutcome> {
        let policy_input = PolicyInput {
            operation_id: input.operation_id,
            kind: input.kind,
            environment_id: input.environment_id,
            deployment_id: input.deployment_id,
            source_deployment_id: input.source_deployment_id,
            expected_epoch: input.expected_epoch,
            instances: input.instances,
        };
        op.enter(
            ctx,
            PromotionStage::PolicyCheck,
            json!({
                "deployment_id": input.deployment_id,
                "source_deployment_id": input.source_deployment_id,
                "from_epoch": input.expected_epoch,
                "instances": input.instances,
            }),
            None,
        )
        .await?;
        let mut policy: Policy = step!(
            op,
            ctx,
            PromotionActivities::check_policy,
            policy_input.clone(),
            quick()
        );
        let mut approved_by: Option<Decision> = None;
        if policy.approval_required {
            expect_decision(
                ctx,
                op,
                PromotionStage::PolicyCheck.as_str(),
                &[DecisionKind::Approve, DecisionKind::Abort],
            );
            op.enter_with_status(
                ctx,
                PromotionStage::PolicyCheck,
                json!({ "gates": policy.gates, "awaiting": "approval" }),
                Some("the environment requires an approval before the route moves".into()),
                Some(OperationStatus::Waiting),
            )
            .await?;
            // A retry means nothing here (its validator refuses it): the gates are checked
            // again after the approval.
            match wait_for_decision(ctx, op).await? {
                Ok(d) => approved_by = Some(d),
                Err(aborted) => return Ok(Err(StepFailure::Aborted(aborted).into())),
            }
            // The route may have moved while the operation waited.
            policy = step!(
                op,
                ctx,
                PromotionActivities::check_policy,
                policy_input,
                quick()
            );
        }

        // The target's database takes the artifact's migrations before anything of it runs
        // there, as a Migration operation of its own: those up to the first contract one
        // (the rest once the route moved and the old allocations drained).
        let child = |n, phase| MigrationChild {
            parent: input.operation_id.0,
            environment_id: input.environment_id,
            deployment_id: input.deployment_id,
            digest: policy.digest.clone(),
            n,
            phase,
        };
        let mut migration = serde_json::Value::Null;
        if policy.migrate {
            let child = child(1, MigrationPhase::BeforeRoute);
            match run_child(ctx, child).await? {
                Ok(m) => migration = m,
                Err(f) => return Ok(Err(f.into())),
            }
        }
        op.enter(
            ctx,
            PromotionStage::RouteCas,
            json!({
                "gates": policy.gates, "route_key": policy.route_key, "digest": policy.digest,
                "from_epoch": input.expected_epoch, "previous": policy.previous,
                "approved_by": approved_by.as_ref().map(|d| &d.actor),
                "migration": migration,
            }),
            None,
        )
        .await?;
        let allocations = AllocationsInput {
            operation_id: input.operation_id,
            deployment_id: input.deployment_id,
            digest: policy.digest.clone(),
            instances: input.instances,
            purpose: "route".into(),
        };
        let started: AllocationsReady = loop {
            let outcome = op
                .step(
                    ctx,
                    || PromotionActivities::start_allocations,
                    allocations.clone(),
                    watched(Duration::from_secs(600)),
                )
                .await?;
            let shortfall = match outcome {
                Ok(started) => break started,
                Err(StepFailure::Rejected(why)) if why.starts_with(NO_CAPACITY) => why,
                Err(failure) => return Ok(Err(failure.into())),
            };
            // No runner has room: nothing was placed; wait for a retry (capacity added)
            // or an abort.
            expect_decision(
                ctx,
                op,
                PromotionStage::Blocked.as_str(),
                &[DecisionKind::Retry, DecisionKind::Abort],
            );
            op.enter_with_status(
                ctx,
                PromotionStage::Blocked,
                json!({
                    "gate": "capacity", "instances": input.instances,
                    "shortfall": shortfall.trim_start_matches(NO_CAPACITY),
                    "awaiting": "retry or abort",
                }),
                Some(shortfall),
                Some(OperationStatus::Waiting),
            )
            .await?;
            if let Err(aborted) = wait_for_decision(ctx, op).await? {
                return Ok(Err(StepFailure::Aborted(aborted).into()));
            }
            op.enter_with_status(
                ctx,
                PromotionStage::RouteCas,
                json!({ "retry": "placing the allocations again" }),
                None,
                Some(OperationStatus::Running),
            )
            .await?;
        };
        let moved = op
            .step(
                ctx,
                || PromotionActivities::move_route,
                MoveRouteInput {
                    operation_id: input.operation_id,
                    route_key: policy.route_key.clone(),
                    environment_id: input.environment_id,
                    deployment_id: input.deployment_id,
                    digest: policy.digest.clone(),
                    expected_epoch: input.expected_epoch,
                },
                quick(),
            )
            .await?;
        let moved: RouteMoved = match moved {
            Ok(m) => m,
            Err(failure) => {
                // The allocations this operation started never served: drain them.
                Self::drain_own(ctx, op, input, &started).await?;
                return Ok(Err(failure.into()));
            }
        };

        op.enter(
            ctx,
            PromotionStage::EdgePropagating,
            json!({
                "route_key": policy.route_key, "epoch": moved.epoch, "seq": moved.seq,
                "allocation_ids": started.allocation_ids,
                "deadline_ms": policy.propagation_deadline_ms,
            }),
            None,
        )
        .await?;
        let (edges, options) = edges_of(input, &policy, moved.seq);
        let acked = step!(op, ctx, PromotionActivities::await_edges, edges, options);

        op.enter_with_status(
            ctx,
            PromotionStage::Healthy,
            json!({
                "epoch": moved.epoch, "edges": acked.edges, "propagation_ms": acked.waited_ms,
                "window_ms": policy.health_window_ms,
            }),
            None,
            Some(OperationStatus::Running),
        )
        .await?;
        let health = step!(
            op,
            ctx,
            PromotionActivities::watch_health,
            HealthInput {
                operation_id: input.operation_id,
                allocation_ids: started.allocation_ids.clone(),
                window_ms: policy.health_window_ms,
            },
            watched(Duration::from_millis(policy.health_window_ms) + Duration::from_secs(60))
        );
        if !health.healthy {
            let reason = health
                .reason
                .unwrap_or_else(|| "the health window failed".to_owned());
            let Some(previous) = policy.previous.clone() else {
                return Ok(Err(StepFailure::Rejected(format!(
                    "{reason}; the route had no earlier owner to roll back to and stays at epoch {}",
                    moved.epoch
                ))
                .into()));
            };
            return Self::roll_back(ctx, op, input, &policy, previous, moved, reason, &started)
                .await;
        }
        // With contract migrations left, the promotion succeeds once they ran (or were
        // refused): it shows as running while their Migration waits for its approval.
        let contract_left = deferred(&migration);
        if !contract_left {
            op.set_status(ctx, OperationStatus::Succeeded, None).await?;
        }

        // The previous owner's allocations finish their requests and sessions first.
        if let Some(previous) = &policy.previous
            && previous.deployment_id != input.deployment_id
        {
            ctx.timer(Duration::from_millis(policy.drain_grace_ms))
                .await;
            step!(
                op,
                ctx,
                PromotionActivities::drain_allocations,
                DrainInput {
                    operation_id: input.operation_id,
                    deployment_id: previous.deployment_id,
                    allocation_ids: None,
                },
                watched(Duration::from_secs(600))
            );
        }
        // A route that scales to zero is watched from here: idle, it sleeps.
        if policy.scale_to_zero {
            crate::wake::start_watch(
                ctx,
                &policy.route_key,
                moved.epoch,
                crate::wake::WakeTrigger::Promotion {
                    operation_id: input.operation_id.0,
                },
            )
            .await?;
        }
        // Nothing of the old artifact serves now: the contract migrations can run (their
        // approval is the Migration's own gate). The release serves either way.
        let mut contract_migration = serde_json::Value::Null;
        if contract_left {
            let child = child(2, MigrationPhase::AfterRoute);
            contract_migration = after_route(run_child(ctx, child).await?);
            op.set_status(ctx, OperationStatus::Succeeded, None).await?;
        }
        Ok(Ok(PromotionOutcome {
            route_key: policy.route_key,
            deployment_id: input.deployment_id,
            digest: policy.digest,
            epoch: moved.epoch,
            edges: acked.edges,
            contract_migration,
        }))
    }

    /// A failed health window: the route moves back to `previous` by a new CAS (N+2), the
    /// edges acknowledge it, and the unhealthy allocations drain.
    #[allow(clippy::too_many_arguments)]
    async fn roll_back(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        input: &PromotionInput,
        policy: &Policy,
        previous: RouteTarget,
        moved: RouteMoved,
        reason: String,
        started: &AllocationsReady,
    ) -> Flow<PromotionOutcome> {
        let back: AllocationsReady = step!(
            op,
            ctx,
            PromotionActivities::start_allocations,
            AllocationsInput {
                operation_id: input.operation_id,
                deployment_id: previous.deployment_id,
                digest: previous.artifact_digest.clone(),
                instances: input.instances,
                purpose: "rollback".into(),
            },
            watched(Duration::from_secs(600))
        );
        let back_moved: RouteMoved = step!(
            op,
            ctx,
            PromotionActivities::move_route,
            MoveRouteInput {
                operation_id: input.operation_id,
                route_key: policy.route_key.clone(),
                environment_id: input.environment_id,
                deployment_id: previous.deployment_id,
                digest: previous.artifact_digest.clone(),
                expected_epoch: moved.epoch,
            },
            quick()
        );
        let (edges, options) = edges_of(input, policy, back_moved.seq);
        let acked = step!(op, ctx, PromotionActivities::await_edges, edges, options);
        Self::drain_own(ctx, op, input, started).await?;
        Ok(Err(Ending::RolledBack {
            reason,
            to: RouteTarget {
                epoch: back_moved.epoch,
                ..previous
            },
            evidence: json!({
                "epoch": back_moved.epoch, "seq": back_moved.seq, "edges": acked.edges,
                "allocation_ids": back.allocation_ids, "unhealthy_epoch": moved.epoch,
            }),
        }))
    }

    /// Drains exactly the allocations this operation started. A failure to drain parks the
    /// operation for attention like any step; the drain is safe to retry.
    async fn drain_own(
        ctx: &WorkflowContext<Self>,
        op: &Operation,
        input: &PromotionInput,
        started: &AllocationsReady,
    ) -> Result<(), WorkflowTermination> {
        let own: Vec<Uuid> = started
            .allocation_ids
            .iter()
            .filter(|id| !started.reused.contains(id))
            .copied()
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        // An abort here leaves them to the next drain; the operation's ending is unchanged.
        let _ = op
            .step(
                ctx,
                || PromotionActivities::drain_allocations,
                DrainInput {
                    operation_id: input.operation_id,
                    deployment_id: input.deployment_id,
                    allocation_ids: Some(own),
                },
                watched(Duration::from_secs(600)),
            )
            .await?;
        Ok(())
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
