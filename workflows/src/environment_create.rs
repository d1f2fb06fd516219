//! EnvironmentCreate: the first workflow-run operation. From `requested` (recorded with the
//! operation row), it creates the environment row through an idempotent activity and records
//! `applied`, or `failed` with the reason (a name taken by a concurrent create, an app
//! deleted meanwhile).

use std::time::Duration;

use rhone_core::{OperationId, OperationKind, stage::MutationStage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{SyncWorkflowContext, WorkflowContext, WorkflowResult};

use crate::{
    activities::{CreateEnvironmentInput, TenancyActivities},
    stages::{Decision, DecisionKind, DecisionSlot, Operation, step_options},
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

    #[signal(name = "approve")]
    pub fn approve(&mut self, _ctx: &mut SyncWorkflowContext<Self>, decision: Decision) {
        self.decisions.put(DecisionKind::Approve, decision);
    }

    #[signal(name = "retry")]
    pub fn retry(&mut self, _ctx: &mut SyncWorkflowContext<Self>, decision: Decision) {
        self.decisions.put(DecisionKind::Retry, decision);
    }

    #[signal(name = "abort")]
    pub fn abort(&mut self, _ctx: &mut SyncWorkflowContext<Self>, decision: Decision) {
        self.decisions.put(DecisionKind::Abort, decision);
    }
}
