//! RuntimeServiceBinding: the declared availability of one runtime service for an
//! environment (`session_store`, `broadcast`, `idempotency`, `cache`, `queue`,
//! `object_storage`); horizontal scale and hydration elsewhere depend on these.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "runtime_service_bindings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub service: String,
    pub status: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub config: Json,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "environment_id", to = "id")]
    pub environment: BelongsTo<super::environment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
