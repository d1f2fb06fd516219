//! EnvironmentCreate: the first workflow-run operation. From `requested` (recorded with the
//! operation row), it creates the environment row through an idempotent activity and records
//! `applied`, or `failed` with the reason (a name taken by a concurrent create, an app
//! deleted meanwhile).

use std::time::Duration;

use rhone_core::{OperationId, OperationKind, stage::MutationStage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{
    SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};

use crate::{
    activities::{CreateEnvironmentInput, TenancyActivities},
    stages::{
        Decision, DecisionKind, DecisionSlot, DecisionTaken, Operation, Refusal, step_options,
    },
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentCreateInput {
    pub operation_id: OperationId,
    pub environment: CreateEnvironmentInput,
}

#[workflow]
#[derive(Default)]
pub struct EnvironmentCreateWorkflow {
    decisions: DecisionSlot,
}

crate::decisions_in_slot!(EnvironmentCreateWorkflow);

#[workflow_methods]
impl EnvironmentCreateWorkflow {
    #[run(name = "environment_create")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: EnvironmentCreateInput,
    ) -> WorkflowResult<String> {
        let mut op = Operation::new(input.operation_id, OperationKind::EnvironmentCreate);
        // `requested` was recorded with the operation row by its creator (the API).
        let env = &input.environment;
        let outcome = op
            .step(
                ctx,
                || TenancyActivities::create_environment,
                env.clone(),
                step_options(Duration::from_secs(15), 5),
            )
            .await?;
        match outcome {
            Ok(created) => {
                let evidence =
                    json!({ "environment_id": created.environment_id, "created": created.created });
                op.enter(ctx, MutationStage::Applied, evidence, None)
                    .await?;
                Ok(created.environment_id.to_string())
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
