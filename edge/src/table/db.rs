//! The route table's reads and the edge's acknowledgement writes: the snapshot in one read
//! transaction, the change log after a sequence number, recently updated allocations, and
//! the edge's `edge_acks` row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_schema::{
    allocations::Desired,
    entity::{allocation, edge_ack, route_change, route_owner},
};
use sea_orm::{
    AccessMode, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, IsolationLevel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionOptions, TransactionTrait, sea_query::OnConflict,
};

use super::mirror::{AllocationRow, Builder, Change, OwnerRow, Snapshot};

/// How far back allocation rows are read again on every poll: a row's `updated_at` is
/// stamped before its transaction commits, so a row may appear a little after newer ones.
pub(crate) const ALLOCATION_OVERLAP: Duration = Duration::from_secs(5);

/// Rows built into the table between two yields to the other tasks of the worker.
const ROWS_PER_YIELD: usize = 1024;

/// Reads owners, allocations and the change log's head in one read transaction (PostgreSQL:
/// repeatable read, so every statement sees the same snapshot; SQLite: one read transaction
/// sees one snapshot of the WAL), with each owner's latest change at or before the head, and
/// builds the table as the rows stream in.
pub(crate) async fn snapshot(db: &DatabaseConnection) -> Result<Snapshot, DbErr> {
    let backend = db.get_database_backend();
    let options = match backend {
        DbBackend::Postgres => TransactionOptions {
            isolation_level: Some(IsolationLevel::RepeatableRead),
            access_mode: Some(AccessMode::ReadOnly),
            ..TransactionOptions::default()
        },
        // SQLite has one isolation level, and sea-orm warns when asked for another.
        _ => TransactionOptions::default(),
    };
    let txn = db.begin_with_options(options).await?;
    let head = route_change::Entity::find()
        .select_only()
        .column(route_change::Column::Seq)
        .order_by_desc(route_change::Column::Seq)
        .limit(1)
        .into_tuple::<i64>()
        .one(&txn)
        .await?
        .unwrap_or(0);
    let owners = route_owner::Entity::find().count(&txn).await?;
    let mut builder = Builder::new(usize::try_from(owners).unwrap_or_default());

    let mut rows = allocation_rows()
        .filter(allocation::Column::Stage.eq(AllocationStage::Ready.as_str()))
        .filter(allocation::Column::Desired.eq(Desired::Run.as_str()))
        .filter(allocation::Column::Address.is_not_null())
        .into_model::<AllocationRow>()
        .stream(&txn)
        .await?;
    let mut n = 0;
    while let Some(row) = rows.try_next().await? {
        builder.allocation(&row);
        n += 1;
        if n % ROWS_PER_YIELD == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(rows);
    // `head` is an integer read above, so formatting it into the statement is safe, and it
    // needs no backend-specific placeholder.
    let mut rows = OwnerRow::find_by_statement(Statement::from_string(
        backend,
        format!(
            "SELECT o.route_key, o.deployment_id, o.artifact_digest, o.epoch, c.epoch AS log_epoch \
             FROM route_owners o LEFT JOIN ( \
               SELECT rc.route_key, rc.epoch FROM route_changes rc JOIN ( \
                 SELECT route_key, MAX(seq) AS seq FROM route_changes \
                 WHERE seq <= {head} GROUP BY route_key \
               ) latest ON latest.seq = rc.seq \
             ) c ON c.route_key = o.route_key"
        ),
    ))
    .stream(&txn)
    .await?;
    while let Some(row) = rows.try_next().await? {
        builder.owner(row);
        n += 1;
        if n % ROWS_PER_YIELD == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(rows);
    let allocations_seen = allocation::Entity::find()
        .select_only()
        .column(allocation::Column::UpdatedAt)
        .order_by_desc(allocation::Column::UpdatedAt)
        .limit(1)
        .into_tuple::<DateTime<Utc>>()
        .one(&txn)
        .await?;
    txn.commit().await?;
    Ok(builder.finish(head, allocations_seen))
}

/// Up to `limit` route changes after `applied`, in order.
pub(crate) async fn changes_after(
    db: &DatabaseConnection,
    applied: i64,
    limit: u64,
) -> Result<Vec<Change>, DbErr> {
    route_change::Entity::find()
        .select_only()
        .columns([
            route_change::Column::Seq,
            route_change::Column::RouteKey,
            route_change::Column::Epoch,
            route_change::Column::DeploymentId,
            route_change::Column::ArtifactDigest,
        ])
        .filter(route_change::Column::Seq.gt(applied))
        .order_by_asc(route_change::Column::Seq)
        .limit(limit)
        .into_model::<Change>()
        .all(db)
        .await
}

/// Allocation rows updated after `seen` less the overlap (every row when nothing was seen
/// yet), whatever their state.
pub(crate) async fn allocations_since(
    db: &DatabaseConnection,
    seen: Option<DateTime<Utc>>,
) -> Result<Vec<AllocationRow>, DbErr> {
    let mut query = allocation_rows();
    if let Some(seen) = seen {
        let overlap = chrono::Duration::from_std(ALLOCATION_OVERLAP).unwrap_or_default();
        query = query.filter(allocation::Column::UpdatedAt.gt(seen - overlap));
    }
    query.into_model::<AllocationRow>().all(db).await
}

fn allocation_rows() -> sea_orm::Select<allocation::Entity> {
    allocation::Entity::find().select_only().columns([
        allocation::Column::Id,
        allocation::Column::DeploymentId,
        allocation::Column::ArtifactDigest,
        allocation::Column::Desired,
        allocation::Column::Stage,
        allocation::Column::Address,
        allocation::Column::UpdatedAt,
    ])
}

/// The edge's acknowledgement as it writes it.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub edge_id: String,
    pub address: Option<String>,
    pub acked_seq: i64,
    pub acked_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
}

/// Writes the edge's row, whether or not it exists (a restarted edge of the same id takes
/// its row over).
pub(crate) async fn upsert_ack(db: &DatabaseConnection, ack: Ack) -> Result<(), DbErr> {
    use edge_ack::Column as C;
    edge_ack::Entity::insert(edge_ack::ActiveModel {
        edge_id: Set(ack.edge_id),
        address: Set(ack.address),
        acked_seq: Set(ack.acked_seq),
        acked_at: Set(ack.acked_at),
        seen_at: Set(ack.seen_at),
        started_at: Set(ack.started_at),
    })
    .on_conflict(
        OnConflict::column(C::EdgeId)
            .update_columns([C::Address, C::AckedSeq, C::AckedAt, C::SeenAt, C::StartedAt])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Removes the edge's row: it left, so promotions stop waiting for it.
pub(crate) async fn delete_ack(db: &DatabaseConnection, edge_id: &str) -> Result<(), DbErr> {
    edge_ack::Entity::delete_by_id(edge_id.to_owned())
        .exec(db)
        .await?;
    Ok(())
}
