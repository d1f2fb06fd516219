//! AuditLog: who did what to which object, written by the API for every mutation it accepts.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub operation_id: Option<Uuid>,
    #[sea_orm(column_type = "JsonBinary")]
    pub detail: Json,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "workspace_id", to = "id")]
    pub workspace: BelongsTo<Option<super::workspace::Entity>>,
    #[sea_orm(belongs_to, from = "operation_id", to = "id")]
    pub operation: BelongsTo<Option<super::operation::Entity>>,
}

impl ActiveModelBehavior for ActiveModel {}
