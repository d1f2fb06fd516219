//! Operations and audit rows for the mutations the API accepts. A synchronous tenancy
//! mutation records its operation (`requested`, then `applied`, status succeeded) and its
//! audit row in the caller's transaction, beside the row it creates, so either all of it is
//! there or none of it is.

use chrono::Utc;
use rhone_core::{OperationId, OperationKind, OperationStatus, StateMachine, stage::MutationStage};
use rhone_schema::{
    entity::{audit_log, operation},
    ops::{self, NewOperation, StageAppend},
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, TransactionTrait};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::error::ApiError;

/// One accepted mutation: what it does, to what, on whose behalf.
#[derive(Debug, Clone)]
pub(crate) struct Mutation {
    pub operation_id: Uuid,
    pub kind: OperationKind,
    /// The audit action, `<object>.<verb>` (`project.create`).
    pub action: &'static str,
    /// `user:<uuid>`, `runtime:<app uuid>` or `system`.
    pub actor: String,
    pub workspace_id: Option<Uuid>,
    pub target_type: &'static str,
    pub target_id: String,
    /// What the audit row and the `applied` stage record as evidence (never a secret).
    pub detail: Json,
}

impl Mutation {
    pub fn workflow_id(&self) -> String {
        rhone_core::workflow_id(self.kind, OperationId(self.operation_id))
    }

    fn new_operation<'a>(
        &'a self,
        workflow_id: &'a str,
        status: OperationStatus,
    ) -> NewOperation<'a> {
        NewOperation {
            id: self.operation_id,
            workspace_id: self.workspace_id,
            kind: self.kind.as_str(),
            actor: &self.actor,
            target_type: self.target_type,
            target_id: &self.target_id,
            initial_stage: self.kind.initial_stage(),
            status: status.as_str(),
            workflow_id,
        }
    }
}

/// Records a synchronous mutation whose row `txn` already holds: the operation in
/// `requested`, its `applied` stage (status succeeded) and the audit row. The caller
/// commits.
pub(crate) async fn applied<C>(txn: &C, m: &Mutation) -> Result<operation::Model, ApiError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let workflow_id = m.workflow_id();
    ops::create_operation(txn, m.new_operation(&workflow_id, OperationStatus::Running)).await?;
    let kind = m.kind;
    let applied = MutationStage::Applied.as_str();
    let status = kind
        .status_for_stage(applied)
        .map_err(|e| ApiError::internal("deriving the status of an applied mutation", e))?;
    let append = StageAppend {
        operation_id: m.operation_id,
        record_key: format!("{applied}#1"),
        stage: applied.to_owned(),
        attempt: 1,
        evidence: m.detail.clone(),
        error: None,
        status: status.as_str().to_owned(),
    };
    ops::append_stage(txn, append, |from, to| kind.validate_transition(from, to)).await?;
    audit(txn, m).await?;
    find(txn, m.operation_id).await
}

/// Records a mutation that a workflow will carry out: the operation in its initial stage,
/// status running, and the audit row. The caller commits, then starts the workflow.
pub(crate) async fn requested<C>(txn: &C, m: &Mutation) -> Result<operation::Model, ApiError>
where
    C: ConnectionTrait + TransactionTrait,
{
    requested_with(txn, m, serde_json::json!({})).await
}

/// [`requested`] with `evidence` on the initial stage record.
pub(crate) async fn requested_with<C>(
    txn: &C,
    m: &Mutation,
    evidence: serde_json::Value,
) -> Result<operation::Model, ApiError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let workflow_id = m.workflow_id();
    let op = ops::create_operation_with(
        txn,
        m.new_operation(&workflow_id, OperationStatus::Running),
        evidence,
    )
    .await?;
    audit(txn, m).await?;
    Ok(op)
}

/// Moves an operation whose workflow never started to `failed` with the reason, so no
/// operation claims to be running when nothing runs it.
pub(crate) async fn start_failed<C>(
    db: &C,
    operation_id: Uuid,
    kind: OperationKind,
    reason: &str,
) -> Result<operation::Model, ApiError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let failed = MutationStage::Failed.as_str();
    let append = StageAppend {
        operation_id,
        record_key: "workflow_start_failed".to_owned(),
        stage: failed.to_owned(),
        attempt: 1,
        evidence: serde_json::json!({ "phase": "workflow_start" }),
        error: Some(reason.to_owned()),
        status: OperationStatus::Failed.as_str().to_owned(),
    };
    ops::append_stage(db, append, |from, to| kind.validate_transition(from, to)).await?;
    find(db, operation_id).await
}

/// Writes the audit row of an accepted mutation.
pub(crate) async fn audit<C: ConnectionTrait>(db: &C, m: &Mutation) -> Result<(), ApiError> {
    audit_as(db, rhone_schema::new_id(), m).await
}

/// [`audit`] under the id `id`: a decision's, which its workflow looks for (see
/// `rhone_workflows::Decision`).
pub(crate) async fn audit_as<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    m: &Mutation,
) -> Result<(), ApiError> {
    audit_log::ActiveModel {
        id: Set(id),
        workspace_id: Set(m.workspace_id),
        actor: Set(m.actor.clone()),
        action: Set(m.action.to_owned()),
        target_type: Set(m.target_type.to_owned()),
        target_id: Set(m.target_id.clone()),
        operation_id: Set(Some(m.operation_id)),
        detail: Set(m.detail.clone()),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Removes the audit row `id` of a decision its workflow refused or did not answer.
pub(crate) async fn unaudit<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<(), ApiError> {
    use sea_orm::EntityTrait;
    audit_log::Entity::delete_by_id(id).exec(db).await?;
    Ok(())
}

async fn find<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<operation::Model, ApiError> {
    use sea_orm::EntityTrait;
    operation::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("operation", id))
}
