//! ProviderBinding: a platform-owned attachment of an environment to an external provider
//! resource.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_bindings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub provider: String,
    pub resource: String,
    pub status: String,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "environment_id", to = "id")]
    pub environment: BelongsTo<super::environment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
