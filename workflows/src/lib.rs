//! Temporal workflow definitions and the typed declarations of the activities they call.
//! Deterministic: no I/O, no clocks, no randomness outside the SDK; every side effect is an
//! activity implemented in `rhone-activities`.

pub mod activities;
pub mod database_bind;
pub mod deploy;
pub mod environment_create;
pub mod fleet;
pub mod migration;
pub mod promotion;
pub mod repair;
pub mod stages;
pub mod wake;

pub use database_bind::{DatabaseBindInput, DatabaseBindWorkflow};
pub use deploy::{DeployInput, DeployOutcome, DeployWorkflow};
pub use environment_create::{EnvironmentCreateInput, EnvironmentCreateWorkflow};
pub use fleet::{FleetInput, FleetWorkflow, fleet_workflow_id};
pub use migration::{MigrationInput, MigrationOutcome, MigrationWorkflow};
pub use promotion::{PromotionInput, PromotionOutcome, PromotionWorkflow};
pub use repair::{RepairInput, RepairOutcome, RepairWorkflow};
pub use stages::{Decision, DecisionKind, DecisionTaken, DecisionUpdate};
pub use wake::{
    WakeInput, WakeOutcome, WakeRequest, WakeStatus, WakeTrigger, WakeWorkflow, operation_id_of_run,
};

/// The task queue the control-plane worker polls.
pub const TASK_QUEUE: &str = "rhone-control";
