//! RouteOwner: the authority binding a route key (a host) to a deployment, artifact, region
//! and cell at a monotonic `epoch`. Only promotion and rollback change it, by compare-and-swap
//! on the epoch.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "route_owners")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub route_key: String,
    pub environment_id: Uuid,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub region_id: Uuid,
    pub cell_id: Uuid,
    pub epoch: i64,
    pub operation_id: Option<Uuid>,
    /// How many allocations the owner is meant to run (see migration 11).
    pub instances: i32,
    pub updated_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "environment_id", to = "id")]
    pub environment: BelongsTo<super::environment::Entity>,
    #[sea_orm(belongs_to, from = "deployment_id", to = "id")]
    pub deployment: BelongsTo<super::deployment::Entity>,
    #[sea_orm(belongs_to, from = "artifact_digest", to = "digest")]
    pub artifact: BelongsTo<super::artifact::Entity>,
    #[sea_orm(belongs_to, from = "region_id", to = "id")]
    pub region: BelongsTo<super::region::Entity>,
    #[sea_orm(belongs_to, from = "cell_id", to = "id")]
    pub cell: BelongsTo<super::cell::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
