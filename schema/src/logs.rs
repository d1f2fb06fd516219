//! Build logs: the output of each build attempt, appended in chunks while the build runs
//! and read back in order (by the API, while the build runs and after). `seq` numbers an
//! operation's chunks from 1 without gaps across all its attempts, so a reader resumes with
//! "after seq N" and never misses or repeats a chunk.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionSession, TransactionTrait,
};
use uuid::Uuid;

use crate::entity::{build_log, operation};
use crate::{SchemaError, begin_write};

/// Starts a new build attempt of the operation with its first chunk (a header saying what
/// runs): the attempt is one more than the operation's last, so a retried build never mixes
/// its output into an earlier attempt's.
#[tracing::instrument(skip_all, fields(operation_id = %operation_id))]
pub async fn start_attempt<C>(
    db: &C,
    operation_id: Uuid,
    chunk: &str,
) -> Result<build_log::Model, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    write_chunk(db, operation_id, None, chunk).await
}

/// Appends a chunk of `attempt`'s output with the operation's next `seq`.
pub async fn append<C>(
    db: &C,
    operation_id: Uuid,
    attempt: i32,
    chunk: &str,
) -> Result<build_log::Model, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    write_chunk(db, operation_id, Some(attempt), chunk).await
}

/// Up to `limit` chunks of the operation with `seq > after_seq`, in `seq` order (all
/// attempts; each chunk says its attempt).
pub async fn read<C: ConnectionTrait>(
    db: &C,
    operation_id: Uuid,
    after_seq: i32,
    limit: u64,
) -> Result<Vec<build_log::Model>, SchemaError> {
    Ok(build_log::Entity::find()
        .filter(build_log::Column::OperationId.eq(operation_id))
        .filter(build_log::Column::Seq.gt(after_seq))
        .order_by_asc(build_log::Column::Seq)
        .limit(limit)
        .all(db)
        .await?)
}

/// Writes one chunk in a transaction that holds the operation's row, so concurrent writers
/// of one operation (a retry racing a lost attempt) queue and get distinct seqs.
async fn write_chunk<C>(
    db: &C,
    operation_id: Uuid,
    attempt: Option<i32>,
    chunk: &str,
) -> Result<build_log::Model, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = begin_write(db).await?;
    operation::Entity::find_by_id(operation_id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "operation",
            id: operation_id.to_string(),
        })?;
    let last = build_log::Entity::find()
        .filter(build_log::Column::OperationId.eq(operation_id))
        .order_by_desc(build_log::Column::Seq)
        .one(&txn)
        .await?;
    let attempt = match attempt {
        Some(attempt) => attempt,
        None => last.as_ref().map_or(0, |l| l.attempt) + 1,
    };
    let row = build_log::ActiveModel {
        operation_id: Set(operation_id),
        attempt: Set(attempt),
        seq: Set(last.map_or(0, |l| l.seq) + 1),
        chunk: Set(chunk.replace('\0', "\u{FFFD}")),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(row)
}
