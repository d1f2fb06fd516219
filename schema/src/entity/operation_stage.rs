//! OperationStage: one append-only stage record of an operation. `seq` orders the records of
//! one operation; `record_key` is the writer's idempotency key, so a retried activity that
//! records the same step twice leaves one row.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "operation_stages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub operation_id: Uuid,
    pub seq: i32,
    pub stage: String,
    pub attempt: i32,
    pub record_key: String,
    pub entered_at: DateTimeUtc,
    #[sea_orm(column_type = "JsonBinary")]
    pub evidence: Json,
    pub error: Option<String>,
    #[sea_orm(belongs_to, from = "operation_id", to = "id")]
    pub operation: BelongsTo<super::operation::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
