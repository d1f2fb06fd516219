//! DatabaseProvider: a PostgreSQL server an operator registered, on which provider bindings
//! provision a database and a role per environment. Its admin URL is stored sealed
//! ([`crate::secrets::Keyring::seal_provider`]) and never shown.

use sea_orm::entity::prelude::*;

/// The one kind of provider so far.
pub const KIND_POSTGRES: &str = "postgres";

#[sea_orm::model]
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "database_providers", model_ex_attrs(derive(Debug)))]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub kind: String,
    /// `host:port`, for display and to tell which server a database is on.
    pub host: String,
    /// `key id:nonce:ciphertext` of the admin URL.
    #[sea_orm(column_type = "Text")]
    pub sealed_admin_url: String,
    /// Whether the operator declared point-in-time recovery for this server (a migration
    /// then needs no dump of its own as its backup posture).
    pub point_in_time_recovery: bool,
    pub created_by: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}

/// Leaves the sealed admin URL out.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("database_provider::Model")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("point_in_time_recovery", &self.point_in_time_recovery)
            .finish_non_exhaustive()
    }
}
