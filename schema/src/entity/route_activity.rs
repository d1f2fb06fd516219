//! RouteActivity: what each edge saw of one route key: when its last request arrived and how
//! many WebSockets are open to it, refreshed (`updated_at`) at every edge heartbeat for the
//! keys with activity. Written by the edges only; the Wake workflow reads it to decide that a
//! route is idle (no request for the environment's `sleep_after_ms` and no open socket on a
//! live edge).

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "route_activity")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub route_key: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub edge_id: String,
    /// The last request this edge routed (or held) for the key.
    pub last_request_at: Option<DateTimeUtc>,
    /// WebSockets open through this edge to the key's allocations right now.
    pub open_sockets: i32,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
