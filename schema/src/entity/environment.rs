//! Environment: a traffic and policy lane of an app (`preview`, `staging`, `production`)
//! with its approval rule and wake budget.

use sea_orm::entity::prelude::*;

/// The wake budget of a new environment: how long the edge holds a request while the app
/// wakes before it answers 503 with Retry-After.
pub const DEFAULT_WAKE_BUDGET_MS: i64 = 10_000;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "environments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    pub kind: String,
    pub requires_approval: bool,
    pub scale_to_zero: bool,
    pub wake_budget_ms: i64,
    pub created_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "workspace_id", to = "id")]
    pub workspace: BelongsTo<super::workspace::Entity>,
    #[sea_orm(belongs_to, from = "app_id", to = "id")]
    pub app: BelongsTo<super::app::Entity>,
    #[sea_orm(has_many)]
    pub deployments: HasMany<super::deployment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
