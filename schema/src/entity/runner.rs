//! Runner: the agent on one host of a cell that runs allocations. An operator adds it
//! (`registered`, with a credential whose SHA-256 is kept); it registers itself with its
//! address, capacity and version (`ready`) and heartbeats; unseen for longer than the
//! lost-after time it is `lost`; a revoked credential makes it `revoked`.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "runners")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub cell_id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub address: String,
    pub status: String,
    pub last_seen_at: Option<DateTimeUtc>,
    /// The subnet of its allocations' addresses (`a.b.c.d/p`), recorded at first contact;
    /// reports with an address outside it are refused.
    pub subnet: Option<String>,
    pub created_at: DateTimeUtc,
    /// SHA-256 (hex) of the credential the operator issued for it.
    pub credential_sha256: Option<String>,
    pub revoked_at: Option<DateTimeUtc>,
    /// Capacity it registered with (capped by what it measured on its host).
    pub memory_mb: i64,
    pub cpu_millis: i64,
    pub slots: i32,
    pub agent_version: Option<String>,
    pub status_changed_at: Option<DateTimeUtc>,
    #[sea_orm(belongs_to, from = "cell_id", to = "id")]
    pub cell: BelongsTo<super::cell::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
