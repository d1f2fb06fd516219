//! `SchemaError`: what went wrong at the control DB, named by the phase that failed.

use sea_orm::{DbErr, SqlErr};

/// An error of the control DB layer.
///
/// A `DbErr` converts with `?`: unique-key violations become [`SchemaError::Conflict`],
/// foreign-key violations [`SchemaError::MissingReference`], anything else
/// [`SchemaError::Query`].
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database could not be reached or opened. The URL is left out: it may hold a
    /// password.
    #[error("cannot connect to the {backend} control database")]
    Connect {
        backend: &'static str,
        #[source]
        source: DbErr,
    },
    #[error("control database migration failed")]
    Migrate(#[source] DbErr),
    #[error("control database query failed")]
    Query(#[source] DbErr),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// A unique key is taken (a duplicate name, token hash, idempotency key …). `what` is
    /// the database's description of the key.
    #[error("conflict: {what}")]
    Conflict { what: String },
    /// The caller may not do this (a runner reporting on an allocation that is not its
    /// own, or an address outside its network). An audit row says so.
    #[error("refused: {what}")]
    Forbidden { what: String },
    /// A row refers to a row that does not exist (or a referenced row is still in use).
    #[error("missing reference: {what}")]
    MissingReference { what: String },
    /// No runner has room for an allocation: what was needed and why each runner could not
    /// take it.
    #[error("{0}")]
    NoCapacity(rhone_core::fleet::Shortfall),
    /// A stage write that the operation's state machine forbids, or a stage it does not
    /// know. Nothing was written.
    #[error(transparent)]
    IllegalTransition(#[from] rhone_core::StageError),
}

impl From<DbErr> for SchemaError {
    fn from(err: DbErr) -> Self {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(what)) => Self::Conflict { what },
            Some(SqlErr::ForeignKeyConstraintViolation(what)) => Self::MissingReference { what },
            _ => Self::Query(err),
        }
    }
}

/// Whether `err` is a unique-key violation.
pub(crate) fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}
