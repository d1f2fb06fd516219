//! The control DB: sea-orm entities and migrations for Rhone's whole object model, the same
//! migrations on SQLite (the embedded default) and PostgreSQL, and the queries that carry
//! invariants ([`ops::append_stage`]).
//!
//! On SQLite, a transaction that reads before it writes must start with [`begin_write`]:
//! a deferred SQLite transaction that upgrades to a writer fails at once with `SQLITE_BUSY`
//! when another connection wrote meanwhile, instead of waiting.

pub mod allocations;
pub mod entity;
mod error;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod fleet;
pub mod logs;
pub mod migration;
pub mod ops;
pub mod providers;
pub mod repair;
pub mod routes;
pub mod secrets;
pub mod topology;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

pub use error::SchemaError;
pub use migration::Migrator;

/// How long a SQLite connection waits for another writer before it gives up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of a SQLite file pool: WAL lets readers run beside the one writer.
const SQLITE_FILE_CONNECTIONS: u32 = 4;

/// Opens the control DB at `url`: `sqlite://path?mode=rwc`, `sqlite::memory:` or
/// `postgres://…`.
///
/// SQLite connections enforce foreign keys and wait up to 10 s for a busy database; a file
/// database runs in WAL mode. An in-memory database lives in one connection that is never
/// recycled, since closing it would drop the data.
#[tracing::instrument(skip_all, fields(backend = backend_name(url)))]
pub async fn connect(url: &str) -> Result<DatabaseConnection, SchemaError> {
    let mut options = ConnectOptions::new(url);
    options.sqlx_logging(false);
    if url.starts_with("sqlite:") {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        options.map_sqlx_sqlite_opts(move |o| {
            let o = o.foreign_keys(true).busy_timeout(SQLITE_BUSY_TIMEOUT);
            if in_memory {
                o
            } else {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
            }
        });
        if in_memory {
            options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else {
            options.max_connections(SQLITE_FILE_CONNECTIONS);
        }
    }
    Database::connect(options)
        .await
        .map_err(|source| SchemaError::Connect {
            backend: backend_name(url),
            source,
        })
}

/// Applies every pending migration. Running it again is a no-op.
#[tracing::instrument(skip_all)]
pub async fn migrate(db: &DatabaseConnection) -> Result<(), SchemaError> {
    Migrator::up(db, None).await.map_err(SchemaError::Migrate)
}

/// Begins a transaction that will write: `BEGIN IMMEDIATE` on SQLite, so it waits for the
/// write lock up front (see the crate docs); a plain `BEGIN` elsewhere.
pub async fn begin_write<C: TransactionTrait>(db: &C) -> Result<C::Transaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

/// The control DB's clock (PostgreSQL's `now()`); on SQLite, which one host uses, this
/// host's. Runners' last-seen times are written and judged by it, so clock skew between the
/// API's host and the worker's cannot declare a runner lost.
pub async fn db_now<C: sea_orm::ConnectionTrait>(
    db: &C,
) -> Result<chrono::DateTime<chrono::Utc>, DbErr> {
    use sea_orm::{DbBackend, Statement};
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(chrono::Utc::now());
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT clock_timestamp() AS now",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the DB's clock".to_owned()))?;
    row.try_get::<chrono::DateTime<chrono::Utc>>("", "now")
}

/// The DB's clock as an expression for a write (see [`db_now`]).
pub(crate) fn db_now_expr(backend: sea_orm::DbBackend) -> sea_orm::sea_query::Expr {
    use sea_orm::sea_query::Expr;
    if backend == sea_orm::DbBackend::Postgres {
        Expr::cust("clock_timestamp()")
    } else {
        Expr::value(chrono::Utc::now())
    }
}

/// A new row id: UUIDv7, so ids sort by creation time.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

fn backend_name(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        "postgres"
    } else {
        "unknown"
    }
}
