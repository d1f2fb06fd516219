//! Database providers and environments' database bindings.

use async_graphql::{Context, Enum, Object, SimpleObject};
use chrono::{DateTime, Utc};
use rhone_schema::entity::{database_provider, provider_binding};
use uuid::Uuid;

use crate::{
    graphql::{caller, types::Operation},
    service::databases,
};

/// A PostgreSQL server registered by an operator, on which environments get databases.
/// Its admin URL is never shown.
#[derive(SimpleObject)]
pub struct DatabaseProvider {
    pub name: String,
    /// `postgres`.
    pub kind: String,
    /// `host:port`.
    pub host: String,
    /// Declared by the operator: the server keeps point-in-time recovery, which a
    /// migration's backup gate takes as its posture instead of a dump.
    pub point_in_time_recovery: bool,
    pub created_at: DateTime<Utc>,
}

impl From<database_provider::Model> for DatabaseProvider {
    fn from(p: database_provider::Model) -> Self {
        Self {
            name: p.name,
            kind: p.kind,
            host: p.host,
            point_in_time_recovery: p.point_in_time_recovery,
            created_at: p.created_at,
        }
    }
}

/// How an environment uses a database.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseAccess {
    /// Its own database: reads, writes and migrates it.
    ReadWrite,
    /// Another environment's database, read only.
    ReadOnly,
}

/// An environment's database on a provider; the app finds it in `DATABASE_URL`.
#[derive(SimpleObject)]
pub struct DatabaseBinding {
    pub id: Uuid,
    pub provider: String,
    pub database: String,
    /// The role the environment connects as.
    pub role: String,
    pub access: DatabaseAccess,
    /// `provisioning`, `ready` or `failed`.
    pub status: String,
    /// Why provisioning failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<provider_binding::Model> for DatabaseBinding {
    fn from(b: provider_binding::Model) -> Self {
        Self {
            id: b.id,
            provider: b.provider,
            database: b.resource,
            role: b.role,
            access: if b.access == provider_binding::ACCESS_READ_ONLY {
                DatabaseAccess::ReadOnly
            } else {
                DatabaseAccess::ReadWrite
            },
            status: b.status,
            error: b.error,
            created_at: b.created_at,
        }
    }
}

/// A provider just registered.
#[derive(SimpleObject)]
pub struct AddDatabaseProviderPayload {
    pub provider: DatabaseProvider,
    pub operation: Operation,
}

/// A binding being provisioned: follow its operation.
#[derive(SimpleObject)]
pub struct BindDatabasePayload {
    pub binding: DatabaseBinding,
    pub operation: Operation,
}

#[derive(Default)]
pub struct DatabaseQuery;

#[Object]
impl DatabaseQuery {
    /// The registered database providers, by name.
    async fn database_providers(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<DatabaseProvider>> {
        let (state, _) = caller(ctx)?;
        let rows = databases::list_providers(state).await?;
        Ok(rows.into_iter().map(DatabaseProvider::from).collect())
    }
}

#[derive(Default)]
pub struct DatabaseMutation;

#[Object]
impl DatabaseMutation {
    /// Registers a PostgreSQL server (platform operators only). Rhone connects with the
    /// admin URL to check that its role can create databases and roles, then keeps it
    /// sealed under the secrets key.
    async fn add_database_provider(
        &self,
        ctx: &Context<'_>,
        name: String,
        #[graphql(
            secret,
            desc = "postgres://ROLE:PASSWORD@HOST:PORT/DB of a role with CREATEDB and CREATEROLE."
        )]
        admin_url: String,
        #[graphql(default = false)] point_in_time_recovery: bool,
    ) -> async_graphql::Result<AddDatabaseProviderPayload> {
        let (state, actor) = caller(ctx)?;
        let admin_url = rhone_core::secret::Secret::new(admin_url);
        let added =
            databases::add_provider(state, actor, &name, admin_url, point_in_time_recovery).await?;
        Ok(AddDatabaseProviderPayload {
            provider: added.provider.into(),
            operation: Operation::try_from(added.operation)?,
        })
    }

    /// Binds an environment to a database on a provider; needs developer. By default the
    /// environment gets a database and role of its own (`DATABASE_URL` is set once they
    /// exist: follow the operation). With `readOnly`, it reads `database`, another
    /// environment's. A preview never writes production's database.
    async fn bind_database(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        provider: String,
        database: Option<String>,
        #[graphql(default = false)] read_only: bool,
    ) -> async_graphql::Result<BindDatabasePayload> {
        let (state, actor) = caller(ctx)?;
        let bound = databases::bind(
            state,
            actor,
            environment_id,
            &provider,
            database.as_deref(),
            read_only,
        )
        .await?;
        Ok(BindDatabasePayload {
            binding: bound.binding.into(),
            operation: Operation::try_from(bound.operation)?,
        })
    }

    /// Applies the migrations of a deployment's artifact to the environment's own
    /// database, as a Migration operation (`classified → dry_run → locked → applying →
    /// verified`); needs developer. A contract migration waits for an approval naming
    /// each statement; one that an artifact serving the environment still needs the old
    /// shape for waits for a retry.
    async fn migrate(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        deployment_id: Uuid,
    ) -> async_graphql::Result<Operation> {
        let (state, actor) = caller(ctx)?;
        let op = crate::service::migrations::migrate(state, actor, environment_id, deployment_id)
            .await?;
        Ok(Operation::try_from(op)?)
    }
}
