//! Operation: the durable record of one meaningful mutation (deploy, promote, wake …): who
//! asked (`actor`), on what (`target_type`, `target_id`), where it stands (`current_stage`,
//! `status`) and the Temporal workflow that runs it. Its history is in `operation_stages`,
//! written through [`crate::ops::append_stage`] only.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "operations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub kind: String,
    /// `user:<uuid>`, `token:<uuid>` or `system`.
    pub actor: String,
    pub target_type: String,
    /// Text, because targets are not all keyed by UUID (artifact digests, route keys).
    pub target_id: String,
    pub status: String,
    pub current_stage: String,
    #[sea_orm(unique)]
    pub workflow_id: String,
    pub error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "workspace_id", to = "id")]
    pub workspace: BelongsTo<Option<super::workspace::Entity>>,
    #[sea_orm(has_many)]
    pub stages: HasMany<super::operation_stage::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
