//! RuntimeServiceBinding: the declared availability of one runtime service for an
//! environment (`session_store`, `broadcast`, `idempotency`, `cache`, `queue`,
//! `object_storage`); horizontal scale and hydration elsewhere depend on these. `status` is
//! `ready` only once Rhone has probed the service (or does not probe it: see
//! `api/src/service/bindings.rs`), `unreachable` with `error` when the probe failed.

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
    /// Why the last probe of the service failed (status `unreachable`), scrubbed of secret
    /// values; null when it succeeded or was not run.
    pub error: Option<String>,
    /// When Rhone last probed the service; null for a binding it does not probe.
    pub probed_at: Option<DateTimeUtc>,
    #[sea_orm(belongs_to, from = "environment_id", to = "id")]
    pub environment: BelongsTo<super::environment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
