//! Runner: the agent on one host of a cell that runs allocations.

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
    #[sea_orm(belongs_to, from = "cell_id", to = "id")]
    pub cell: BelongsTo<super::cell::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
