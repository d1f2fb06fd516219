//! DatabaseBind: an environment bound to a database of a provider. From `requested`
//! (recorded with the operation and the binding row by the API), one idempotent activity
//! provisions the database and role and sets `DATABASE_URL`; then `applied` with what was
//! provisioned as evidence, or `failed` with the reason (the provider refused, a key is
//! missing). An unreachable provider parks the operation `needs_attention` for on-call.

use std::time::Duration;

use rhone_core::{OperationId, OperationKind, stage::MutationStage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{
    SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};
use uuid::Uuid;

use crate::{
    activities::{DatabaseActivities, ProvisionDatabaseInput},
    stages::{
        Decision, DecisionKind, DecisionSlot, DecisionTaken, Operation, Refusal, watched_attempts,
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseBindInput {
    pub operation_id: OperationId,
    pub binding_id: Uuid,
}

#[workflow]
#[derive(Default)]
pub struct DatabaseBindWorkflow {
    decisions: DecisionSlot,
}

crate::decisions_in_slot!(DatabaseBindWorkflow);

#[workflow_methods]
impl DatabaseBindWorkflow {
    #[run(name = "database_bind")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: DatabaseBindInput,
    ) -> WorkflowResult<String> {
        let mut op = Operation::new(input.operation_id, OperationKind::DatabaseBind);
        let outcome = op
            .step(
                ctx,
                || DatabaseActivities::provision_database,
                ProvisionDatabaseInput {
                    operation_id: input.operation_id,
                    binding_id: input.binding_id,
                },
                watched_attempts(Duration::from_secs(60), 5),
            )
            .await?;
        match outcome {
            Ok(done) => {
                let evidence = json!({
                    "provider": done.provider,
                    "database": done.database,
                    "role": done.role,
                    "access": done.access,
                    "created": done.created,
                    "database_url_version": done.url_version,
                });
                op.enter(ctx, MutationStage::Applied, evidence, None)
                    .await?;
                Ok(done.database)
            }
            Err(failure) => op.end_failed(ctx, MutationStage::Failed, failure).await,
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
