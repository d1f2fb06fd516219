//! ProviderBinding: a platform-owned attachment of an environment to an external provider
//! resource; for a database provider, the database (`resource`) and the role provisioned
//! for the environment on it.

use sea_orm::entity::prelude::*;

/// Owner of its database: reads, writes and migrates it.
pub const ACCESS_READ_WRITE: &str = "read_write";
/// Reads another environment's database (a preview reading production's): never writes it,
/// never migrates it.
pub const ACCESS_READ_ONLY: &str = "read_only";

/// Being provisioned by its `database_bind` operation.
pub const STATUS_PROVISIONING: &str = "provisioning";
/// Provisioned: the database and role exist and `DATABASE_URL` is set.
pub const STATUS_READY: &str = "ready";
/// Provisioning failed (`error` says why).
pub const STATUS_FAILED: &str = "failed";

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_bindings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    /// The provider's name.
    pub provider: String,
    /// The database's name on the provider.
    pub resource: String,
    pub status: String,
    pub created_at: DateTimeUtc,
    /// The role the environment connects as.
    pub role: String,
    /// [`ACCESS_READ_WRITE`] or [`ACCESS_READ_ONLY`].
    pub access: String,
    pub error: Option<String>,
    #[sea_orm(belongs_to, from = "environment_id", to = "id")]
    pub environment: BelongsTo<super::environment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
