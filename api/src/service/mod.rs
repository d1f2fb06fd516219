//! What the resolvers call: one function per query or mutation, taking the caller's
//! [`Actor`](crate::auth::Actor) and checking its access before touching anything.

pub(crate) mod access;
pub(crate) mod audit;
pub(crate) mod bindings;
pub(crate) mod databases;
pub(crate) mod deploys;
pub(crate) mod environments;
pub(crate) mod fleet;
pub(crate) mod migrations;
pub(crate) mod operations;
pub(crate) mod promotions;
pub(crate) mod routes;
pub(crate) mod secrets;
pub(crate) mod tenancy;
pub(crate) mod validate;

use rhone_schema::SchemaError;

use crate::error::ApiError;

/// A unique-key violation as the caller's own CONFLICT message (a concurrent create won the
/// race after the duplicate check); any other error unchanged.
pub(crate) fn conflict_as(err: ApiError, conflict: impl FnOnce() -> ApiError) -> ApiError {
    match err {
        ApiError::Database(SchemaError::Conflict { .. }) => conflict(),
        other => other,
    }
}
