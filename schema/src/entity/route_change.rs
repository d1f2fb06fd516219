//! RouteChange: the sequenced log of RouteOwner changes that edges apply in `seq` order;
//! one row per (route key, epoch).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "route_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub route_key: String,
    pub epoch: i64,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub operation_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "deployment_id", to = "id")]
    pub deployment: BelongsTo<super::deployment::Entity>,
    #[sea_orm(belongs_to, from = "artifact_digest", to = "digest")]
    pub artifact: BelongsTo<super::artifact::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
