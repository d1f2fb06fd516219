//! Route authority writes: a RouteOwner moves to a new epoch and the move is appended to the
//! sequenced route change log in the same transaction. Writers are serialised (PostgreSQL:
//! an exclusive lock on the change log; SQLite: `BEGIN IMMEDIATE`), so change-log sequence
//! numbers commit in order and an edge reading "after my last seq" never skips one.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DbBackend, EntityTrait, QuerySelect,
    TransactionSession, TransactionTrait,
};
use uuid::Uuid;

use crate::{
    SchemaError, begin_write,
    entity::{route_change, route_owner},
};

/// Where a route key should point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerWrite {
    pub route_key: String,
    pub environment_id: Uuid,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub region_id: Uuid,
    pub cell_id: Uuid,
    pub operation_id: Option<Uuid>,
    /// The epoch the writer started from (compare-and-swap); `None` advances whatever the
    /// current epoch is (a preview owner, which only its own deploys move).
    pub expected_epoch: Option<i64>,
    /// How many allocations the owner is meant to run, which a Repair restores.
    pub instances: u32,
}

/// A write transaction holding the route lock: every route move, and every decision that
/// must not race one (a wake's start and sleep, a drain of a previous owner), takes it, so
/// change-log sequence numbers commit in order. On PostgreSQL, an exclusive lock on
/// `route_changes`; on SQLite, the writer's `BEGIN IMMEDIATE` is the lock.
pub async fn begin_locked<C>(db: &C) -> Result<C::Transaction, sea_orm::DbErr>
where
    C: TransactionTrait,
    C::Transaction: ConnectionTrait,
{
    let txn = begin_write(db).await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared("LOCK TABLE route_changes IN EXCLUSIVE MODE")
            .await?;
    }
    Ok(txn)
}

/// Points `write.route_key` at a deployment at the next epoch (1 for a new key) and logs the
/// change. Writing what the owner already says (the same deployment and artifact, at the
/// epoch after `expected_epoch` when given, written by the same operation when one is
/// named) is a no-op that returns it: a retried activity. A stale `expected_epoch` is a
/// [`SchemaError::Conflict`] naming both epochs.
#[tracing::instrument(skip_all, fields(route_key = %write.route_key))]
pub async fn write_owner<C>(db: &C, write: OwnerWrite) -> Result<route_owner::Model, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = begin_locked(db).await?;
    let current = route_owner::Entity::find_by_id(write.route_key.clone())
        .lock_exclusive()
        .one(&txn)
        .await?;
    if let Some(cur) = &current
        && cur.deployment_id == write.deployment_id
        && cur.artifact_digest == write.artifact_digest
        && write.expected_epoch.is_none_or(|e| e + 1 == cur.epoch)
        && write
            .operation_id
            .is_none_or(|op| cur.operation_id == Some(op))
    {
        txn.rollback().await?;
        return Ok(cur.clone());
    }
    let current_epoch = current.as_ref().map_or(0, |c| c.epoch);
    if let Some(expected) = write.expected_epoch
        && expected != current_epoch
    {
        return Err(SchemaError::Conflict {
            what: format!(
                "route epoch conflict on {}: the change started from epoch {expected}, the owner is at epoch {current_epoch}",
                write.route_key
            ),
        });
    }
    let epoch = current_epoch + 1;
    let now = Utc::now();
    let row = route_owner::ActiveModel {
        route_key: Set(write.route_key.clone()),
        environment_id: Set(write.environment_id),
        deployment_id: Set(write.deployment_id),
        artifact_digest: Set(write.artifact_digest.clone()),
        region_id: Set(write.region_id),
        cell_id: Set(write.cell_id),
        epoch: Set(epoch),
        operation_id: Set(write.operation_id),
        instances: Set(i32::try_from(write.instances).unwrap_or(i32::MAX)),
        updated_at: Set(now),
    };
    let owner = if current.is_some() {
        row.update(&txn).await?
    } else {
        row.insert(&txn).await?
    };
    route_change::ActiveModel {
        route_key: Set(write.route_key),
        epoch: Set(epoch),
        deployment_id: Set(write.deployment_id),
        artifact_digest: Set(write.artifact_digest),
        operation_id: Set(write.operation_id),
        created_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(owner)
}
