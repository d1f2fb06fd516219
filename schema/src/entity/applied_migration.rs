//! AppliedMigration: a migration file applied to one database of a provider, recorded once
//! by the Migration operation that applied it.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "applied_migrations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub provider_id: Uuid,
    /// The database's name on the provider.
    pub database: String,
    /// The file's path inside the artifact.
    pub path: String,
    pub sha256: String,
    /// `expand` or `contract`.
    pub class: String,
    pub operation_id: Uuid,
    pub applied_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "provider_id", to = "id")]
    pub provider: BelongsTo<super::database_provider::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
