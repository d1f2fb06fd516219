//! BuildLog: one chunk of a build's output. `seq` orders the chunks of one operation across
//! all its build attempts (gap-free, from 1); `attempt` says which attempt wrote the chunk,
//! so a retried build adds a new attempt instead of mixing into the old one. Written through
//! [`crate::logs::append`] only.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "build_logs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub operation_id: Uuid,
    pub attempt: i32,
    pub seq: i32,
    /// UTF-8 text (invalid bytes replaced); NUL is replaced too, which PostgreSQL text
    /// cannot hold.
    #[sea_orm(column_type = "Text")]
    pub chunk: String,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "operation_id", to = "id")]
    pub operation: BelongsTo<super::operation::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
