//! Database Migration: the pending migrations of an artifact applied to an environment's own
//! database, `classified → dry_run → locked → applying → verified`, or `blocked` / `failed`.
//! The gallery's gates are recorded evidence:
//!
//! - *expand/contract safe*: every pending statement is classified (`rhone-migrate`); a
//!   contract statement, or a file declared irreversible, waits in `blocked` for an
//!   approval that names each one; nothing runs before it.
//! - *old artifact compatibility checked*: a contract migration waits in `blocked` (retry or
//!   abort) while a route of the environment serves an artifact that lacks it.
//! - *rollback plan explicit*: a contract file has a down migration or is declared
//!   irreversible (else `failed` at classification).
//! - *backup/PITR posture known*: the provider's declared point-in-time recovery, or a
//!   dump the dry run takes.
//!
//! `dry_run` applies the files to a scratch copy of the schema, timed; `locked` is the
//! advisory lock taken within the lock timeout; `applying` is one transaction; `verified`
//! reads the schema back and records each file as applied, once. A lock not granted in
//! time, or a refused statement, ends `failed` with nothing applied.
//!
//! A deploy or a promotion runs two ([`MigrationPhase`]): the files up to the first
//! contract one before its route moves, the rest once the release serves (so the old
//! artifact compatibility gate can pass at all).

use std::time::Duration;

use rhone_core::{OperationId, OperationKind, StateMachine, stage::MigrationStage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{
    ChildWorkflowOptions, SyncWorkflowContext, WorkflowContext, WorkflowContextView,
    WorkflowResult, WorkflowTermination,
};
use uuid::Uuid;

use crate::{
    activities::{
        DatabaseActivities, MigrationPhase, MigrationPlan, MigrationStepInput, OpenMigrationInput,
    },
    stages::{
        Decision, DecisionKind, DecisionSlot, DecisionTaken, Operation, Refusal, StepFailure,
        await_decision, expect_decision, step_options, watched, watched_attempts,
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationInput {
    pub operation_id: OperationId,
    pub environment_id: Uuid,
    /// The artifact whose migrations are applied.
    pub digest: String,
    /// Set when another operation (a deploy) starts the Migration: the workflow opens its
    /// operation row first. Unset, its creator (the API) has.
    #[serde(default)]
    pub opened_by: Option<OpenedBy>,
    /// Which of the pending migrations: all of them, unless a deploy or promotion runs it
    /// before or after its route moves.
    #[serde(default)]
    pub phase: MigrationPhase,
}

/// The operation that started a Migration, and the deployment it applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenedBy {
    pub operation_id: Uuid,
    pub deployment_id: Uuid,
}

/// The operation id of the `n`th Migration started by operation `parent`: derived, so a
/// replayed or retried parent finds the same one.
pub fn migration_operation_id(parent: Uuid, n: u32) -> OperationId {
    OperationId(crate::wake::operation_id_of_run(&format!(
        "{parent}/migration/{n}"
    )))
}

/// What a Migration applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationOutcome {
    pub database: String,
    pub applied: Vec<String>,
    /// Pending files left for after the route moves ([`MigrationPhase::BeforeRoute`]).
    #[serde(default)]
    pub deferred: Vec<String>,
}

/// A Migration that another operation runs as its child.
pub struct MigrationChild {
    pub parent: Uuid,
    pub environment_id: Uuid,
    pub deployment_id: Uuid,
    pub digest: String,
    /// Which of the parent's Migrations this is (1, 2 …), for its operation id.
    pub n: u32,
    pub phase: MigrationPhase,
}

/// Runs `child` as a Migration operation of its own and waits for it: what it applied
/// (`operation_id`, `database`, `applied`, `deferred`), or why the parent cannot go on.
pub async fn run_child<W>(
    ctx: &WorkflowContext<W>,
    child: MigrationChild,
) -> Result<Result<serde_json::Value, StepFailure>, WorkflowTermination> {
    let id = migration_operation_id(child.parent, child.n);
    let input = MigrationInput {
        operation_id: id,
        environment_id: child.environment_id,
        digest: child.digest,
        opened_by: Some(OpenedBy {
            operation_id: child.parent,
            deployment_id: child.deployment_id,
        }),
        phase: child.phase,
    };
    let options = ChildWorkflowOptions::builder()
        .workflow_id(rhone_core::workflow_id(OperationKind::Migration, id))
        .build();
    let outcome = match ctx
        .start_child_workflow(MigrationWorkflow::run, input, options)
        .await
    {
        Ok(started) => started.result().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok(match outcome {
        Ok(done) => Ok(json!({
            "operation_id": id,
            "database": done.database,
            "applied": done.applied,
            "deferred": done.deferred,
        })),
        Err(e) => Err(StepFailure::Rejected(format!(
            "migration operation {} did not apply the artifact's migrations: {e}",
            id.0
        ))),
    })
}

/// Whether a Migration's answer ([`run_child`]'s) left files for after the route.
pub fn deferred(outcome: &serde_json::Value) -> bool {
    outcome["deferred"]
        .as_array()
        .is_some_and(|files| !files.is_empty())
}

/// The evidence of an after-route Migration: what it applied, or why it did not (the
/// release serves already; the files wait for `rhone migrate`).
pub fn after_route(outcome: Result<serde_json::Value, StepFailure>) -> serde_json::Value {
    match outcome {
        Ok(done) => done,
        Err(StepFailure::Rejected(why)) => json!({ "not_applied": why }),
        Err(StepFailure::Aborted(d)) => {
            json!({ "not_applied": "aborted", "by": d.actor, "reason": d.reason })
        }
    }
}

#[workflow]
#[derive(Default)]
pub struct MigrationWorkflow {
    decisions: DecisionSlot,
}

crate::decisions_in_slot!(MigrationWorkflow);

/// What a plan still asks of a person before anything runs: a retry once no route serves
/// an artifact that needs the old shape, or an approval of the contract statements.
fn gate(plan: &MigrationPlan, approved: bool) -> Option<(serde_json::Value, String, bool)> {
    if !plan.incompatible.is_empty() {
        let serving: Vec<String> = plan
            .incompatible
            .iter()
            .map(|s| {
                format!(
                    "{} (deployment {}) on {}",
                    s.digest, s.deployment_id, s.route_key
                )
            })
            .collect();
        let reason = format!(
            "old app incompatible: {} still serve(s) and lack(s) the contract migration(s) {}; retry once the route serves an artifact that carries them",
            serving.join(", "),
            plan.incompatible[0].lacks.join(", ")
        );
        let evidence = json!({
            "gate": "old_artifact_compatibility",
            "serving": plan.incompatible,
            "classification": plan.classification,
        });
        return Some((evidence, reason, false));
    }
    if !approved && (!plan.contract.is_empty() || !plan.irreversible.is_empty()) {
        let mut named: Vec<String> = plan
            .contract
            .iter()
            .map(|s| {
                format!(
                    "{}:{}:{} {} ({})",
                    s.file, s.line, s.column, s.rule, s.reason
                )
            })
            .collect();
        named.extend(
            plan.irreversible
                .iter()
                .map(|f| format!("{f} is declared irreversible")),
        );
        let reason = format!(
            "destructive migration: approve to apply {}",
            named.join("; ")
        );
        let evidence = json!({
            "gate": "expand_contract_safe",
            "contract": plan.contract,
            "irreversible": plan.irreversible,
            "classification": plan.classification,
        });
        return Some((evidence, reason, true));
    }
    None
}

#[workflow_methods]
impl MigrationWorkflow {
    #[run(name = "migration")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: MigrationInput,
    ) -> WorkflowResult<MigrationOutcome> {
        let mut op = Operation::new(input.operation_id, OperationKind::Migration);
        let step = MigrationStepInput {
            operation_id: input.operation_id,
            environment_id: input.environment_id,
            digest: input.digest.clone(),
            phase: input.phase,
        };
        // `classified` is recorded with the operation row, by its creator or here.
        if let Some(by) = &input.opened_by {
            let open = OpenMigrationInput {
                operation_id: input.operation_id,
                parent_operation_id: by.operation_id,
                environment_id: input.environment_id,
                deployment_id: by.deployment_id,
                digest: input.digest.clone(),
            };
            ctx.execute_activity(
                DatabaseActivities::open_migration,
                open,
                step_options(Duration::from_secs(30), 10),
            )
            .await?;
        }
        let mut approved_by: Option<Decision> = None;
        let plan = loop {
            let plan = match op
                .step(
                    ctx,
                    || DatabaseActivities::plan_migration,
                    step.clone(),
                    watched_attempts(Duration::from_secs(120), 5),
                )
                .await?
            {
                Ok(plan) => plan,
                Err(f) => return op.end_failed(ctx, MigrationStage::Failed, f).await,
            };
            let Some((evidence, reason, approvable)) = gate(&plan, approved_by.is_some()) else {
                break plan;
            };
            let accepts: &[DecisionKind] = if approvable {
                &[DecisionKind::Approve, DecisionKind::Abort]
            } else {
                &[DecisionKind::Retry, DecisionKind::Abort]
            };
            expect_decision(ctx, &op, MigrationStage::Blocked.as_str(), accepts);
            op.enter(ctx, MigrationStage::Blocked, evidence, Some(reason))
                .await?;
            // Any other decision classifies again (the files, the routes may have changed
            // meanwhile); an approval carries over to the contract statements it named.
            let (kind, d) = await_decision(ctx, &op).await?;
            if kind == DecisionKind::Abort {
                return op
                    .end_failed(ctx, MigrationStage::Failed, StepFailure::Aborted(d))
                    .await;
            }
            let evidence = json!({ "decision": kind, "by": d.actor, "reason": d.reason });
            if kind == DecisionKind::Approve {
                approved_by = Some(d);
            }
            op.enter(ctx, MigrationStage::Classified, evidence, None)
                .await?;
        };

        let evidence = json!({
            "provider": plan.provider,
            "database": plan.database,
            "pending": plan.pending,
            "deferred": plan.deferred,
            "classification": plan.classification,
            "approved_by": approved_by.as_ref().map(|d| &d.actor),
        });
        op.enter(ctx, MigrationStage::DryRun, evidence, None)
            .await?;
        let dry = match op
            .step(
                ctx,
                || DatabaseActivities::dry_run_migration,
                step.clone(),
                watched(Duration::from_secs(600)),
            )
            .await?
        {
            Ok(d) => d,
            Err(f) => return op.end_failed(ctx, MigrationStage::Failed, f).await,
        };
        let applied = match op
            .step(
                ctx,
                || DatabaseActivities::apply_migration,
                step.clone(),
                watched(Duration::from_secs(600)),
            )
            .await?
        {
            Ok(a) => a,
            Err(f) => return op.end_failed(ctx, MigrationStage::Failed, f).await,
        };
        let Some(lock) = applied.lock.clone() else {
            let failure = StepFailure::Rejected(applied.failure.unwrap_or_default());
            let evidence = json!({ "dry_run": dry.evidence, "lock": applied.failure_evidence });
            return op
                .end_with(ctx, MigrationStage::Failed, failure, evidence)
                .await;
        };
        op.enter(
            ctx,
            MigrationStage::Locked,
            json!({ "dry_run": dry.evidence, "lock": lock }),
            None,
        )
        .await?;
        if let Some(failure) = applied.failure {
            return op
                .end_with(
                    ctx,
                    MigrationStage::Failed,
                    StepFailure::Rejected(failure),
                    applied.failure_evidence,
                )
                .await;
        }
        op.enter(ctx, MigrationStage::Applying, applied.applied, None)
            .await?;
        let verified = match op
            .step(
                ctx,
                || DatabaseActivities::verify_migration,
                step,
                watched_attempts(Duration::from_secs(120), 5),
            )
            .await?
        {
            Ok(v) => v,
            Err(f) => return op.end_failed(ctx, MigrationStage::Failed, f).await,
        };
        op.enter(ctx, MigrationStage::Verified, verified.evidence, None)
            .await?;
        Ok(MigrationOutcome {
            database: plan.database,
            applied: plan.pending,
            deferred: plan.deferred,
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
