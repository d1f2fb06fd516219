//! Runner hosts, for platform operators.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};

use crate::{
    graphql::{caller, types::Operation},
    service::fleet,
};

/// A runner host: where it is, whether it is in touch, what it offers and what is placed
/// on it.
#[derive(SimpleObject)]
pub struct Runner {
    pub name: String,
    pub region: String,
    pub cell: String,
    /// `registered` (added, never seen), `ready`, `lost` or `revoked`.
    pub status: String,
    pub status_changed_at: Option<DateTime<Utc>>,
    pub address: String,
    pub subnet: Option<String>,
    pub agent_version: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub memory_mb: i64,
    pub cpu_millis: i64,
    pub slots: i32,
    /// Allocations placed on it that hold capacity, and what they take.
    pub allocations: i64,
    pub used_memory_mb: i64,
    pub used_cpu_millis: i64,
}

impl Runner {
    fn of(
        (r, cell, region, used): (
            rhone_schema::entity::runner::Model,
            rhone_schema::entity::cell::Model,
            rhone_schema::entity::region::Model,
            rhone_schema::fleet::Usage,
        ),
    ) -> Self {
        Runner {
            name: r.name,
            region: region.name,
            cell: cell.name,
            status: r.status,
            status_changed_at: r.status_changed_at,
            address: r.address,
            subnet: r.subnet,
            agent_version: r.agent_version,
            last_seen_at: r.last_seen_at,
            memory_mb: r.memory_mb,
            cpu_millis: r.cpu_millis,
            slots: r.slots,
            allocations: used.allocations,
            used_memory_mb: used.memory_mb,
            used_cpu_millis: used.cpu_millis,
        }
    }
}

/// A runner just added, with the credential its host is configured with.
#[derive(SimpleObject)]
pub struct AddRunnerPayload {
    pub name: String,
    pub region: String,
    pub cell: String,
    /// Shown this once; the control plane keeps only its SHA-256. Set it as
    /// `RHONE_RUNNER_CREDENTIAL` on the runner's host.
    pub credential: String,
    pub operation: Operation,
}

#[derive(Default)]
pub struct FleetQuery;

#[Object]
impl FleetQuery {
    /// Every runner host, by name (platform operators only).
    async fn runners(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Runner>> {
        let (state, actor) = caller(ctx)?;
        let rows = fleet::list(&state.db, actor).await?;
        Ok(rows.into_iter().map(Runner::of).collect())
    }
}

#[derive(Default)]
pub struct FleetMutation;

#[Object]
impl FleetMutation {
    /// Adds a runner host to a region and cell (made if new) and issues its credential,
    /// shown once (platform operators only).
    async fn add_runner(
        &self,
        ctx: &Context<'_>,
        name: String,
        region: String,
        cell: String,
    ) -> async_graphql::Result<AddRunnerPayload> {
        let (state, actor) = caller(ctx)?;
        let added = fleet::add(&state.db, actor, &name, &region, &cell).await?;
        Ok(AddRunnerPayload {
            name: added.runner.name,
            region,
            cell,
            credential: added.credential.expose().to_owned(),
            operation: Operation::try_from(added.operation)?,
        })
    }

    /// Revokes a runner host's credential: its calls are refused from now on and nothing
    /// new is placed on it (platform operators only).
    async fn revoke_runner(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Runner> {
        let (state, actor) = caller(ctx)?;
        let runner = fleet::revoke(&state.db, actor, &name).await?;
        let row = fleet::list(&state.db, actor)
            .await?
            .into_iter()
            .find(|(r, ..)| r.id == runner.id)
            .ok_or_else(|| crate::error::ApiError::not_found("runner", runner.id))?;
        Ok(Runner::of(row))
    }
}
