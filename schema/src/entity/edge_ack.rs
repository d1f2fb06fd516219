//! EdgeAck: one row per edge: the route-change sequence number it has applied and serves
//! (`acked_seq`, moved at `acked_at`), and when it last said so (`seen_at`, refreshed while it
//! runs). A promotion waits for the edges seen recently; an edge that is seen but does not
//! reach the promotion's change is named as lagging.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "edge_acks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub edge_id: String,
    /// Where the edge listens, for on-call.
    pub address: Option<String>,
    pub acked_seq: i64,
    pub acked_at: DateTimeUtc,
    pub seen_at: DateTimeUtc,
    pub started_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
