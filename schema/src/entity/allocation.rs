//! Allocation: one running instance of an artifact in a region and cell. `desired` (`run`,
//! `stop`) is what the scheduler wants; `stage` is what the runner last reported. Reports
//! carry `generation`, and a report of an older generation is rejected.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "allocations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub runner_id: Option<Uuid>,
    pub region_id: Uuid,
    pub cell_id: Uuid,
    pub generation: i64,
    pub desired: String,
    pub stage: String,
    pub address: Option<String>,
    pub exit_status: Option<String>,
    pub last_report_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Memory and CPU it was placed with (the artifact's `[run]` limits): what it takes of
    /// its runner's capacity.
    pub memory_mb: i64,
    pub cpu_millis: i64,
    /// The environment's secrets as this allocation got them at its start, sealed as one
    /// bundle ([`crate::secrets::Keyring::seal_bundle`]): every generation of its spec
    /// carries the same ones. `None` until its first spec, or when it has none.
    pub sealed_secrets: Option<String>,
    #[sea_orm(belongs_to, from = "deployment_id", to = "id")]
    pub deployment: BelongsTo<super::deployment::Entity>,
    #[sea_orm(belongs_to, from = "artifact_digest", to = "digest")]
    pub artifact: BelongsTo<super::artifact::Entity>,
    #[sea_orm(belongs_to, from = "runner_id", to = "id")]
    pub runner: BelongsTo<Option<super::runner::Entity>>,
    #[sea_orm(belongs_to, from = "region_id", to = "id")]
    pub region: BelongsTo<super::region::Entity>,
    #[sea_orm(belongs_to, from = "cell_id", to = "id")]
    pub cell: BelongsTo<super::cell::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
