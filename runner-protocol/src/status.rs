//! `AllocationStatus`: what a runner answers about one allocation.

use rhone_core::Digest;
use rhone_core::stage::AllocationStage;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Desired;

/// The observed state of an allocation, as `GET /v1/allocations/{id}` answers it. It holds
/// no env and no secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationStatus {
    pub allocation_id: Uuid,
    pub generation: i64,
    pub desired: Desired,
    pub stage: AllocationStage,
    pub artifact_digest: Digest,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    /// `http://ADDRESS:PORT` while `ready`: the allocation's own address on the runner's
    /// bridge and its declared port.
    pub address: Option<String>,
    /// How the process ended: `exit code 3`, `signal 15 (SIGTERM)`.
    pub exit_status: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the current stage was entered, for failures above all.
    pub message: Option<String>,
    /// The app's last output lines, secret values replaced by `***`.
    pub last_log_lines: Vec<String>,
}
