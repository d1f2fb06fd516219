//! Cell: an isolation unit inside a region, holding runners and service bindings.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cells")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub region_id: Uuid,
    pub name: String,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "region_id", to = "id")]
    pub region: BelongsTo<super::region::Entity>,
    #[sea_orm(has_many)]
    pub runners: HasMany<super::runner::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
