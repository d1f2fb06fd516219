//! The Operation invariants: an operation's stage records are append-only, written once per
//! `record_key`, numbered by `seq` without gaps, and only through a transition its state
//! machine allows; `operations.current_stage` always equals the stage of the last record.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionSession, TransactionTrait, sea_query::Expr,
};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::entity::{operation, operation_stage};
use crate::error::is_unique_violation;
use crate::{SchemaError, begin_write};

/// `record_key` of the stage record [`create_operation`] writes for the initial stage.
pub const INITIAL_RECORD_KEY: &str = "created";

/// A new operation. Enum-like fields hold the snake_case names of `rhone-core`.
#[derive(Debug, Clone)]
pub struct NewOperation<'a> {
    pub id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub kind: &'a str,
    /// `user:<uuid>`, `token:<uuid>` or `system`.
    pub actor: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub initial_stage: &'a str,
    pub status: &'a str,
    /// Derived from `id` by the caller (`rhone_core::workflow_id`).
    pub workflow_id: &'a str,
}

/// One stage record to append, as the `record_stage` activity receives it.
#[derive(Debug, Clone)]
pub struct StageAppend {
    pub operation_id: Uuid,
    /// The writer's idempotency key: a second append with the same key writes nothing.
    pub record_key: String,
    pub stage: String,
    pub attempt: i32,
    pub evidence: Json,
    pub error: Option<String>,
    /// The operation's status once the stage is entered.
    pub status: String,
}

/// What [`append_stage`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The record was written and the operation moved to its stage.
    Appended(operation_stage::Model),
    /// A record with this `record_key` existed already; nothing was written.
    AlreadyRecorded(operation_stage::Model),
}

impl AppendOutcome {
    /// The record now stored under the append's `record_key`.
    pub fn record(&self) -> &operation_stage::Model {
        match self {
            Self::Appended(r) | Self::AlreadyRecorded(r) => r,
        }
    }
}

/// Which operations [`list_operations`] returns; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct OperationFilter {
    /// Only operations of these workspaces (the ones the caller may read). Operations
    /// without a workspace are left out when this is set.
    pub workspace_ids: Option<Vec<Uuid>>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub target_id: Option<String>,
}

/// A page of a newest-first listing: up to `first` items older than `after`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub after: Option<Uuid>,
    pub first: u64,
}

/// Creates an operation in its initial stage, with the first stage record (seq 1, attempt
/// 1, record key [`INITIAL_RECORD_KEY`]) in the same transaction. An operation or workflow
/// id that exists already is a [`SchemaError::Conflict`].
#[tracing::instrument(skip_all, fields(operation_id = %new.id, kind = new.kind))]
pub async fn create_operation<C>(
    db: &C,
    new: NewOperation<'_>,
) -> Result<operation::Model, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    create_operation_with(db, new, Json::Object(Default::default())).await
}

/// [`create_operation`] with `evidence` on the first stage record (what an operation that
/// starts from a finding, a Repair, found).
pub async fn create_operation_with<C>(
    db: &C,
    new: NewOperation<'_>,
    evidence: Json,
) -> Result<operation::Model, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let now = Utc::now();
    let txn = begin_write(db).await?;
    let op = operation::ActiveModel {
        id: Set(new.id),
        workspace_id: Set(new.workspace_id),
        kind: Set(new.kind.to_owned()),
        actor: Set(new.actor.to_owned()),
        target_type: Set(new.target_type.to_owned()),
        target_id: Set(new.target_id.to_owned()),
        status: Set(new.status.to_owned()),
        current_stage: Set(new.initial_stage.to_owned()),
        workflow_id: Set(new.workflow_id.to_owned()),
        error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    let mut first = stage_record(new.id, 1, INITIAL_RECORD_KEY, new.initial_stage, 1, now);
    first.evidence = Set(evidence);
    first.insert(&txn).await?;
    txn.commit().await?;
    Ok(op)
}

/// Appends one stage record to an operation, at most once per `record_key`.
///
/// If a record with the append's `record_key` exists, returns it as
/// [`AppendOutcome::AlreadyRecorded`] and writes nothing, even when the operation has moved
/// on since (a retried activity must not fail). Otherwise, in one transaction that holds the
/// operation's row: checks `validate(current_stage, stage)`, writes the record with the next
/// `seq`, and moves the operation to the stage, status and error of the append. A rejected
/// transition is [`SchemaError::IllegalTransition`] and writes nothing.
#[tracing::instrument(
    skip_all,
    fields(operation_id = %append.operation_id, stage = %append.stage, record_key = %append.record_key)
)]
pub async fn append_stage<C>(
    db: &C,
    append: StageAppend,
    validate: impl FnOnce(&str, &str) -> Result<(), rhone_core::StageError>,
) -> Result<AppendOutcome, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = begin_write(db).await?;
    // Row lock on PostgreSQL (SQLite ignores it; BEGIN IMMEDIATE already serialises
    // writers): concurrent appends to one operation queue here, so each one sees the
    // records of those before it.
    let op = operation::Entity::find_by_id(append.operation_id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "operation",
            id: append.operation_id.to_string(),
        })?;
    if let Some(existing) = find_record(&txn, op.id, &append.record_key).await? {
        return Ok(AppendOutcome::AlreadyRecorded(existing));
    }
    validate(&op.current_stage, &append.stage)?;

    let last_seq = operation_stage::Entity::find()
        .filter(operation_stage::Column::OperationId.eq(op.id))
        .order_by_desc(operation_stage::Column::Seq)
        .one(&txn)
        .await?
        .map_or(0, |r| r.seq);
    let now = Utc::now();
    let mut record = stage_record(
        op.id,
        last_seq + 1,
        &append.record_key,
        &append.stage,
        append.attempt,
        now,
    );
    record.evidence = Set(append.evidence);
    record.error = Set(append.error.clone());
    let record = match record.insert(&txn).await {
        Ok(record) => record,
        // Only reachable if the row lock did not serialise us (it always should); the
        // winner's record is the answer when it has our key.
        Err(err) if is_unique_violation(&err) => {
            txn.rollback().await?;
            return match find_record(db, append.operation_id, &append.record_key).await? {
                Some(existing) => Ok(AppendOutcome::AlreadyRecorded(existing)),
                None => Err(err.into()),
            };
        }
        Err(err) => return Err(err.into()),
    };

    let mut op: operation::ActiveModel = op.into();
    op.current_stage = Set(append.stage);
    op.status = Set(append.status);
    op.error = Set(append.error);
    op.updated_at = Set(now);
    op.update(&txn).await?;
    txn.commit().await?;
    Ok(AppendOutcome::Appended(record))
}

/// Operations matching `filter`, newest first, one page.
pub async fn list_operations<C: ConnectionTrait>(
    db: &C,
    filter: &OperationFilter,
    page: Page,
) -> Result<Vec<operation::Model>, SchemaError> {
    use operation::Column;

    if filter.workspace_ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let condition = Condition::all()
        .add_option(
            filter
                .workspace_ids
                .clone()
                .map(|ids| Column::WorkspaceId.is_in(ids)),
        )
        .add_option(filter.kind.clone().map(|k| Column::Kind.eq(k)))
        .add_option(filter.status.clone().map(|s| Column::Status.eq(s)))
        .add_option(filter.target_id.clone().map(|t| Column::TargetId.eq(t)))
        // UUIDv7 ids sort by creation time, so the id is the cursor.
        .add_option(page.after.map(|after| Column::Id.lt(after)));
    Ok(operation::Entity::find()
        .filter(condition)
        .order_by_desc(Column::Id)
        .limit(page.first)
        .all(db)
        .await?)
}

/// The stage records of an operation, in `seq` order.
pub async fn stages<C: ConnectionTrait>(
    db: &C,
    operation_id: Uuid,
) -> Result<Vec<operation_stage::Model>, SchemaError> {
    Ok(operation_stage::Entity::find()
        .filter(operation_stage::Column::OperationId.eq(operation_id))
        .order_by_asc(operation_stage::Column::Seq)
        .all(db)
        .await?)
}

async fn find_record<C: ConnectionTrait>(
    db: &C,
    operation_id: Uuid,
    record_key: &str,
) -> Result<Option<operation_stage::Model>, SchemaError> {
    Ok(operation_stage::Entity::find()
        .filter(operation_stage::Column::OperationId.eq(operation_id))
        .filter(operation_stage::Column::RecordKey.eq(record_key))
        .one(db)
        .await?)
}

fn stage_record(
    operation_id: Uuid,
    seq: i32,
    record_key: &str,
    stage: &str,
    attempt: i32,
    entered_at: chrono::DateTime<Utc>,
) -> operation_stage::ActiveModel {
    operation_stage::ActiveModel {
        operation_id: Set(operation_id),
        seq: Set(seq),
        record_key: Set(record_key.to_owned()),
        stage: Set(stage.to_owned()),
        attempt: Set(attempt),
        entered_at: Set(entered_at),
        evidence: Set(Json::Object(Default::default())),
        error: Set(None),
        ..Default::default()
    }
}

/// Sets an operation's status and error without moving its stage: an operation parked as
/// `needs_attention` and resumed. Setting the status it already has is a no-op, so a retried
/// activity is harmless.
#[tracing::instrument(skip(db, error), fields(operation_id = %operation_id))]
pub async fn set_status<C: ConnectionTrait>(
    db: &C,
    operation_id: Uuid,
    status: &str,
    error: Option<String>,
) -> Result<(), SchemaError> {
    let res = operation::Entity::update_many()
        .col_expr(operation::Column::Status, Expr::value(status))
        .col_expr(operation::Column::Error, Expr::value(error))
        .col_expr(operation::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(operation::Column::Id.eq(operation_id))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(SchemaError::NotFound {
            what: "operation",
            id: operation_id.to_string(),
        });
    }
    Ok(())
}
