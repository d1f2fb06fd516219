//! Typed declarations of the activities workflows call. The implementations live in
//! `rhone-activities` (`#[activity(definition = …)]`), so this crate stays free of I/O.

use rhone_core::{OperationId, OperationKind, OperationStatus};
use serde::{Deserialize, Serialize};
use temporalio_common::ActivityError;
use temporalio_macros::activity_definitions;
use uuid::Uuid;

/// One stage transition of an operation, as the workflow asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordStageInput {
    pub operation_id: OperationId,
    pub kind: OperationKind,
    /// Deterministic per (stage, attempt) so a retried activity finds its own earlier write.
    pub record_key: String,
    pub stage: String,
    pub attempt: u32,
    pub evidence: serde_json::Value,
    pub error: Option<String>,
    /// Overrides the status the stage implies (`needs_attention`, `aborted`).
    pub status: Option<OperationStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecorded {
    pub seq: i32,
    /// True when an earlier attempt of the same activity had already written the record.
    pub already_recorded: bool,
}

/// A status change without a stage change (an operation parked for attention, or resumed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetStatusInput {
    pub operation_id: OperationId,
    pub status: OperationStatus,
    pub error: Option<String>,
}

/// Creates the environment row chosen by the API; idempotent on `environment_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateEnvironmentInput {
    pub operation_id: OperationId,
    pub environment_id: Uuid,
    pub workspace_id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    pub kind: String,
    pub requires_approval: bool,
    pub scale_to_zero: bool,
    pub wake_budget_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentCreated {
    pub environment_id: Uuid,
    /// False when the row was already there from an earlier attempt.
    pub created: bool,
}

pub struct OperationActivities;

#[activity_definitions]
impl OperationActivities {
    #[activity(name = "record_stage")]
    pub fn record_stage(input: RecordStageInput) -> Result<StageRecorded, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "set_status")]
    pub fn set_status(input: SetStatusInput) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

pub struct TenancyActivities;

#[activity_definitions]
impl TenancyActivities {
    #[activity(name = "create_environment")]
    pub fn create_environment(
        input: CreateEnvironmentInput,
    ) -> Result<EnvironmentCreated, ActivityError> {
        unimplemented!()
    }
}

/// The marker types, named so the implementing crate can point at them.
pub mod defs {
    pub use super::operation_activities::{RecordStage, SetStatus};
    pub use super::tenancy_activities::CreateEnvironment;
}
