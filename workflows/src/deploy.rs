//! Deploy: `queued → cloning → building → validating → preview_ready`, or `blocked` /
//! `failed`. Each stage's record carries the evidence of the step before it (the commit on
//! `building`, the digest on `validating`, the gates on `blocked` and `preview_ready`).
//! `blocked` waits for a decision: `approve` clears approvable blockers (a cold state
//! change), `retry` validates again (after a secret was added, a migration run), `abort`
//! ends the deploy. A preview environment that scales to zero gets its Wake run in watch
//! mode once `preview_ready` (`crate::wake::start_watch`).

use std::time::Duration;

use rhone_core::StateMachine;
use rhone_core::{OperationId, OperationKind, stage::DeployStage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{
    SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult, WorkflowTermination,
};
use uuid::Uuid;

use crate::{
    activities::{
        BuildInput, CloneInput, DeployActivities, MigrationPhase, PreviewActivities, PreviewInput,
        SourceSpec, ValidateInput, Validation,
    },
    migration::{MigrationChild, run_child},
    stages::{
        Decision, DecisionKind, DecisionSlot, DecisionTaken, Operation, Refusal, StepFailure,
        await_decision, expect_decision, watched,
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployInput {
    pub operation_id: OperationId,
    pub deployment_id: Uuid,
    pub environment_id: Uuid,
    pub source: SourceSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOutcome {
    pub deployment_id: Uuid,
    pub digest: String,
    pub url: String,
}

#[workflow]
#[derive(Default)]
pub struct DeployWorkflow {
    decisions: DecisionSlot,
}

crate::decisions_in_slot!(DeployWorkflow);

/// A step of the pipeline: the workflow's own termination, or the deploy's outcome.
type Flow<T> = Result<Result<T, StepFailure>, WorkflowTermination>;

#[workflow_methods]
impl DeployWorkflow {
    #[run(name = "deploy")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: DeployInput,
    ) -> WorkflowResult<DeployOutcome> {
        let mut op = Operation::new(input.operation_id, OperationKind::Deploy);
        match Self::pipeline(ctx, &mut op, &input).await? {
            Ok(outcome) => Ok(outcome),
            Err(failure) => op.end_failed(ctx, DeployStage::Failed, failure).await,
        }
    }

    async fn pipeline(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        input: &DeployInput,
    ) -> Flow<DeployOutcome> {
        let source = &input.source;
        op.enter(
            ctx,
            DeployStage::Cloning,
            json!({ "repository": source.repository, "ref": source.git_ref }),
            None,
        )
        .await?;
        let clone = CloneInput {
            operation_id: input.operation_id,
            deployment_id: input.deployment_id,
            source: source.clone(),
        };
        let cloned = match op
            .step(
                ctx,
                || DeployActivities::clone_source,
                clone,
                watched(Duration::from_secs(300)),
            )
            .await?
        {
            Ok(c) => c,
            Err(f) => return Ok(Err(f)),
        };

        op.enter(
            ctx,
            DeployStage::Building,
            json!({ "commit_sha": cloned.commit_sha }),
            None,
        )
        .await?;
        let build = BuildInput {
            operation_id: input.operation_id,
            deployment_id: input.deployment_id,
            source: source.clone(),
            commit_sha: cloned.commit_sha.clone(),
        };
        // The build's own time limit comes from rhone.toml (at most 2 h); a lost worker is
        // seen by its missing heartbeats within seconds.
        let built = match op
            .step(
                ctx,
                || DeployActivities::build_artifact,
                build,
                watched(Duration::from_secs(7500)),
            )
            .await?
        {
            Ok(b) => b,
            Err(f) => return Ok(Err(f)),
        };
        let build_evidence = json!({
            "digest": built.digest, "size_bytes": built.size_bytes,
            "build_millis": built.build_millis, "log_bytes": built.log_bytes,
        });

        let mut evidence = build_evidence;
        let mut approved_by: Option<Decision> = None;
        let mut migrations_run = 0;
        loop {
            op.enter(ctx, DeployStage::Validating, evidence.clone(), None)
                .await?;
            let validate = ValidateInput {
                operation_id: input.operation_id,
                deployment_id: input.deployment_id,
                environment_id: input.environment_id,
                digest: built.digest.clone(),
            };
            let validation = match op
                .step(
                    ctx,
                    || DeployActivities::validate_deployment,
                    validate,
                    watched(Duration::from_secs(300)),
                )
                .await?
            {
                Ok(v) => v,
                Err(f) => return Ok(Err(f)),
            };
            if !validation.fatal.is_empty() {
                return Ok(Err(StepFailure::Rejected(validation.fatal.join("; "))));
            }
            let open = open_blockers(&validation, approved_by.is_some());
            if open.is_empty() {
                // Migrations go to the preview's own database first, as an operation of
                // their own (its gates may wait for an approval): those up to the first
                // contract one before the preview serves, the rest once it does.
                let child = |n, phase| MigrationChild {
                    parent: input.operation_id.0,
                    environment_id: input.environment_id,
                    deployment_id: input.deployment_id,
                    digest: built.digest.clone(),
                    n,
                    phase,
                };
                let mut migration = serde_json::Value::Null;
                if validation.migrate {
                    migrations_run += 1;
                    let child = child(migrations_run, MigrationPhase::BeforeRoute);
                    match run_child(ctx, child).await? {
                        Ok(m) => migration = m,
                        Err(f) => return Ok(Err(f)),
                    }
                }
                let preview = PreviewInput {
                    operation_id: input.operation_id,
                    deployment_id: input.deployment_id,
                    environment_id: input.environment_id,
                    digest: built.digest.clone(),
                };
                let started = match op
                    .step(
                        ctx,
                        || PreviewActivities::start_preview,
                        preview,
                        watched(Duration::from_secs(300)),
                    )
                    .await?
                {
                    Ok(p) => p,
                    Err(f) => return Ok(Err(f)),
                };
                // The contract migrations, now that the preview serves the artifact that
                // carries them. The preview serves either way: what it did not apply is
                // recorded, to apply with `rhone migrate`.
                let mut contract = serde_json::Value::Null;
                if crate::migration::deferred(&migration) {
                    migrations_run += 1;
                    let child = child(migrations_run, MigrationPhase::AfterRoute);
                    contract = crate::migration::after_route(run_child(ctx, child).await?);
                }
                let evidence = json!({
                    "gates": validation.gates, "digest": built.digest, "url": started.url,
                    "route_key": started.route_key, "epoch": started.epoch,
                    "allocation_id": started.allocation_id,
                    "approved_by": approved_by.as_ref().map(|d| &d.actor),
                    "migration": migration,
                    "contract_migration": contract,
                });
                op.enter(ctx, DeployStage::PreviewReady, evidence, None)
                    .await?;
                if started.scale_to_zero {
                    crate::wake::start_watch(
                        ctx,
                        &started.route_key,
                        started.epoch,
                        crate::wake::WakeTrigger::Deploy {
                            operation_id: input.operation_id.0,
                        },
                    )
                    .await?;
                }
                return Ok(Ok(DeployOutcome {
                    deployment_id: input.deployment_id,
                    digest: built.digest,
                    url: started.url,
                }));
            }
            let reason = open
                .iter()
                .map(|b| b.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let blocked = json!({ "gates": validation.gates, "blockers": open });
            // A decision that can change something: an approval only when every blocker is
            // approvable (it cannot clear a missing secret or a pending migration).
            let accepts: &[DecisionKind] = if open.iter().all(|b| b.approvable) {
                &[
                    DecisionKind::Approve,
                    DecisionKind::Retry,
                    DecisionKind::Abort,
                ]
            } else {
                &[DecisionKind::Retry, DecisionKind::Abort]
            };
            expect_decision(ctx, op, DeployStage::Blocked.as_str(), accepts);
            op.enter(ctx, DeployStage::Blocked, blocked, Some(reason))
                .await?;
            match await_decision(ctx, op).await? {
                (DecisionKind::Abort, d) => return Ok(Err(StepFailure::Aborted(d))),
                (DecisionKind::Retry, d) => {
                    evidence = json!({ "retried_by": d.actor, "reason": d.reason });
                }
                (DecisionKind::Approve, d) => {
                    evidence = json!({ "approved_by": d.actor, "reason": d.reason });
                    approved_by = Some(d);
                }
            }
        }
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

/// The blockers still standing: approvable ones are cleared by an approval given earlier.
fn open_blockers(v: &Validation, approved: bool) -> Vec<crate::activities::Blocker> {
    v.blockers
        .iter()
        .filter(|b| !(approved && b.approvable))
        .cloned()
        .collect()
}
