//! Deployment: a candidate release of an app into an environment, with its source
//! (`{repo, ref, commit}`), the artifact once built, and the stage of its Deploy operation.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deployments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub app_id: Uuid,
    pub environment_id: Uuid,
    pub artifact_digest: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub source: Json,
    pub stage: String,
    pub operation_id: Option<Uuid>,
    /// The preview deployment a production deployment was promoted from (same artifact).
    pub promoted_from: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "workspace_id", to = "id")]
    pub workspace: BelongsTo<super::workspace::Entity>,
    #[sea_orm(belongs_to, from = "app_id", to = "id")]
    pub app: BelongsTo<super::app::Entity>,
    #[sea_orm(belongs_to, from = "environment_id", to = "id")]
    pub environment: BelongsTo<super::environment::Entity>,
    #[sea_orm(belongs_to, from = "artifact_digest", to = "digest")]
    pub artifact: BelongsTo<Option<super::artifact::Entity>>,
    #[sea_orm(has_many)]
    pub allocations: HasMany<super::allocation::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
