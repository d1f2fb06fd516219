//! Environment: a traffic and policy lane of an app (`preview`, `staging`, `production`)
//! with its approval rule, its scale-to-zero setting (wake budget, sleep after) and the Wake
//! stage its route is in.

use sea_orm::entity::prelude::*;

/// The wake budget of a new environment: how long the edge holds a request while the app
/// wakes before it answers 503 with Retry-After.
pub const DEFAULT_WAKE_BUDGET_MS: i64 = 10_000;

/// How long a scale-to-zero environment stays hot without a request before it sleeps.
pub const DEFAULT_SLEEP_AFTER_MS: i64 = 300_000;

/// `kind` of a preview environment: the one kind a deploy serves (staging and production
/// move only through a promotion).
pub const KIND_PREVIEW: &str = "preview";

/// `kind` of a production environment.
pub const KIND_PRODUCTION: &str = "production";

/// `wake_state` of an environment whose route is running (every environment that does not
/// scale to zero stays here).
pub const WAKE_STATE_HOT: &str = "hot";

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
    /// Whether the member who requested an operation here may approve it too (off for
    /// production unless an admin allows it).
    pub self_approval: bool,
    pub scale_to_zero: bool,
    pub wake_budget_ms: i64,
    pub created_at: DateTimeUtc,
    /// A scale-to-zero environment sleeps after this long without a request.
    pub sleep_after_ms: i64,
    /// The Wake stage of the environment's route (`hot`, `wake_requested`, `starting`,
    /// `readiness_wait`, `failed`, `sleeping`), kept by the Wake workflow.
    pub wake_state: String,
    #[sea_orm(belongs_to, from = "workspace_id", to = "id")]
    pub workspace: BelongsTo<super::workspace::Entity>,
    #[sea_orm(belongs_to, from = "app_id", to = "id")]
    pub app: BelongsTo<super::app::Entity>,
    #[sea_orm(has_many)]
    pub deployments: HasMany<super::deployment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
