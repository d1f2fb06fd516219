//! `StageReport`: what a runner reports on every stage change of an allocation.

use rhone_core::stage::AllocationStage;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One stage change of one allocation, as the runner POSTs it and `POST
/// /internal/runner/reports` receives it (`rhone_schema::allocations::RunnerReport`).
/// Every field after `stage` may be left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    pub allocation_id: Uuid,
    /// The generation of the command the runner was acting on.
    pub generation: i64,
    pub stage: AllocationStage,
    /// `http://ADDRESS:PORT` of the app while `ready`; the control plane keeps it only
    /// while the stage is `ready`.
    #[serde(default)]
    pub address: Option<String>,
    /// How the process ended: `exit code 3`, `signal 15 (SIGTERM)`.
    #[serde(default)]
    pub exit_status: Option<String>,
    /// Why the stage was entered (a failure's reason above all). Not stored: the row has
    /// no column for it yet; the API logs it.
    #[serde(default)]
    pub message: Option<String>,
    /// The app's last output lines, secrets already scrubbed by the runner. Not stored.
    #[serde(default)]
    pub last_log_lines: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_id_generation_and_stage_are_required() -> Result<(), serde_json::Error> {
        let id = Uuid::nil();
        let report: StageReport = serde_json::from_value(json!({
            "allocation_id": id,
            "generation": 2,
            "stage": "ready",
        }))?;
        assert_eq!(
            report,
            StageReport {
                allocation_id: id,
                generation: 2,
                stage: AllocationStage::Ready,
                address: None,
                exit_status: None,
                message: None,
                last_log_lines: Vec::new(),
            }
        );
        assert_eq!(
            serde_json::from_value::<StageReport>(serde_json::to_value(&report)?)?,
            report
        );
        Ok(())
    }
}
