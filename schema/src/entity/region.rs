//! Region: the geographic and control boundary for placement, residency and failover.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "regions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub created_at: DateTimeUtc,
    #[sea_orm(has_many)]
    pub cells: HasMany<super::cell::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
