//! Operations: reads scoped by the caller's grants, and `decideOperation`, which sends an
//! approve, retry or abort signal to the operation's workflow. The API never writes a
//! stage of a workflow-run operation; the workflow records what the decision changed.

use rhone_core::{OperationKind, OperationStatus, Role};
use rhone_schema::{
    entity::{operation, operation_stage},
    ops::{self, OperationFilter, Page},
};
use rhone_workflows::{Decision, DecisionKind, DecisionSignal};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
use serde_json::json;
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_common::UntypedWorkflow;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    rbac::{self, Target},
    record::{self, Mutation},
    service::validate::PageArgs,
};

/// The operation `id` if the actor holds at least `needed` in its workspace. An operation
/// without a workspace (a token creation) is visible to the actor that ran it only.
pub(crate) async fn operation_for<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
    needed: Role,
) -> Result<operation::Model, ApiError> {
    let op = operation::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("operation", id))?;
    match op.workspace_id {
        Some(workspace_id) => {
            let target = Target {
                what: "operation",
                id,
            };
            rbac::require(db, actor, workspace_id, needed, target).await?;
        }
        None if op.actor == actor.subject() => {}
        None => return Err(ApiError::not_found("operation", id)),
    }
    Ok(op)
}

pub(crate) async fn operation(
    db: &DatabaseConnection,
    actor: &Actor,
    id: Uuid,
) -> Result<operation::Model, ApiError> {
    operation_for(db, actor, id, Role::Viewer).await
}

/// The stage records of an operation the caller has already been allowed to read.
pub(crate) async fn stages(
    db: &DatabaseConnection,
    operation_id: Uuid,
) -> Result<Vec<operation_stage::Model>, ApiError> {
    Ok(ops::stages(db, operation_id).await?)
}

/// One page of a workspace's operations, newest first, and whether more follow.
pub(crate) async fn list(
    db: &DatabaseConnection,
    actor: &Actor,
    workspace_id: Uuid,
    kind: Option<OperationKind>,
    status: Option<OperationStatus>,
    page: PageArgs,
) -> Result<(Vec<operation::Model>, bool), ApiError> {
    let target = Target {
        what: "workspace",
        id: workspace_id,
    };
    rbac::require(db, actor, workspace_id, Role::Viewer, target).await?;
    let filter = OperationFilter {
        workspace_ids: Some(vec![workspace_id]),
        kind: kind.map(|k| k.as_str().to_owned()),
        status: status.map(|s| s.as_str().to_owned()),
        target_id: None,
    };
    // One more than asked tells whether there is a next page.
    let mut rows = ops::list_operations(
        db,
        &filter,
        Page {
            after: page.after,
            first: page.first + 1,
        },
    )
    .await?;
    let has_next = rows.len() as u64 > page.first;
    rows.truncate(page.first as usize);
    Ok((rows, has_next))
}

/// Sends `decision` to the operation's workflow and records it in the audit log. A refused
/// or undeliverable decision writes nothing.
pub(crate) async fn decide(
    state: &ApiState,
    actor: &Actor,
    id: Uuid,
    kind: DecisionKind,
    reason: Option<String>,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let op = operation_for(db, actor, id, Role::Developer).await?;
    let status: OperationStatus = op
        .status
        .parse()
        .map_err(|e| ApiError::internal("reading an operation's status", e))?;
    if status.is_final() {
        return Err(ApiError::Conflict(format!(
            "operation {id} is {status}; there is nothing left to {}",
            kind.as_str()
        )));
    }
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::invalid(
            "reason",
            "must be at most 500 characters",
        ));
    }
    let span =
        tracing::info_span!("decide_operation", operation_id = %id, decision = kind.as_str());
    async {
        let decision = Decision {
            actor: actor.subject(),
            reason: reason.clone(),
        };
        state
            .temporal
            .get_workflow_handle::<UntypedWorkflow>(op.workflow_id.clone())
            .signal(DecisionSignal(kind), decision, Default::default())
            .await
            .map_err(|err| signal_error(id, err))?;
        let m = Mutation {
            operation_id: id,
            kind: op
                .kind
                .parse()
                .map_err(|e| ApiError::internal("reading an operation's kind", e))?,
            action: match kind {
                DecisionKind::Approve => "operation.approve",
                DecisionKind::Retry => "operation.retry",
                DecisionKind::Abort => "operation.abort",
            },
            actor: actor.subject(),
            workspace_id: op.workspace_id,
            target_type: "operation",
            target_id: id.to_string(),
            detail: json!({ "decision": kind.as_str(), "reason": reason }),
        };
        record::audit(db, &m).await?;
        tracing::info!("decision sent");
        Ok(op)
    }
    .instrument(span)
    .await
}

fn signal_error(id: Uuid, err: WorkflowInteractionError) -> ApiError {
    match err {
        WorkflowInteractionError::NotFound(_) => ApiError::Conflict(format!(
            "operation {id} has no running workflow to receive a decision"
        )),
        WorkflowInteractionError::Rpc(status) => ApiError::Unavailable {
            service: "Temporal",
            source: Box::new(status),
        },
        other => ApiError::internal("signalling the workflow", other),
    }
}
