//! The GraphQL schema: one query and one mutation object per domain module, merged, and the
//! subscriptions. Each resolver makes one service call and maps its entities to the types of
//! [`types`].

pub(crate) mod access;
pub(crate) mod audit;
pub(crate) mod databases;
pub(crate) mod deploys;
pub(crate) mod enums;
pub(crate) mod environments;
pub(crate) mod fleet;
pub(crate) mod operations;
pub(crate) mod promotions;
pub(crate) mod routes;
pub(crate) mod tenancy;
pub(crate) mod types;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema};

use crate::{ApiState, auth::Actor, error::ApiError};

/// The deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// The most complex query accepted (one point per selected field).
pub const MAX_COMPLEXITY: usize = 1000;
/// The depth allowed to a document of introspection fields only: GraphiQL's standard
/// introspection query is 13 levels deep (`__schema.types.fields.args.type` and seven
/// nested `ofType`), and introspection touches no data.
pub const INTROSPECTION_MAX_DEPTH: usize = 20;

#[derive(MergedObject, Default)]
pub struct Query(
    access::AccessQuery,
    tenancy::TenancyQuery,
    environments::EnvironmentQuery,
    operations::OperationQuery,
    routes::RouteQuery,
    audit::AuditQuery,
    fleet::FleetQuery,
    databases::DatabaseQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    access::AccessMutation,
    tenancy::TenancyMutation,
    environments::EnvironmentMutation,
    deploys::DeployMutation,
    promotions::PromotionMutation,
    operations::OperationMutation,
    fleet::FleetMutation,
    databases::DatabaseMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(operations::OperationSubscription);

pub type ApiSchema = Schema<Query, Mutation, Subscription>;

/// The schema with the limits of ordinary requests, or of introspection-only ones.
pub(crate) fn build(state: Option<ApiState>, max_depth: usize) -> ApiSchema {
    let builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(max_depth)
    .limit_complexity(MAX_COMPLEXITY);
    match state {
        Some(state) => builder.data(state).finish(),
        None => builder.finish(),
    }
}

/// The schema in SDL, as checked in at `api/schema.graphql`.
pub fn sdl() -> String {
    build(None, MAX_DEPTH).sdl()
}

/// The authenticated caller. The HTTP layer refuses unauthenticated requests before they
/// reach a resolver; this is the second lock.
pub(crate) fn actor<'a>(ctx: &Context<'a>) -> Result<&'a Actor, ApiError> {
    ctx.data_opt::<Actor>().ok_or(ApiError::Unauthenticated)
}

pub(crate) fn state<'a>(ctx: &Context<'a>) -> Result<&'a ApiState, ApiError> {
    ctx.data_opt::<ApiState>()
        .ok_or_else(|| ApiError::internal("resolving a field", "schema built without state"))
}

/// The caller and the API state, for resolvers.
pub(crate) fn caller<'a>(ctx: &Context<'a>) -> Result<(&'a ApiState, &'a Actor), ApiError> {
    Ok((state(ctx)?, actor(ctx)?))
}
