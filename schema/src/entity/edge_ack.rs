//! EdgeAck: the route-change sequence number each edge has applied and serves.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "edge_acks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub edge_id: String,
    pub acked_seq: i64,
    pub acked_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
