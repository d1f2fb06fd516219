//! A runner's membership of the fleet: it registers itself with the API (`POST
//! /internal/runner/register`, [`Registration`] → [`Registered`]) and heartbeats (`POST
//! /internal/runner/heartbeat` → [`HeartbeatAnswer`]), authenticated as for its reports:
//! `X-Rhone-Runner: <name>` and `Authorization: Bearer <the credential the operator issued
//! for it>` (`rhone runners add`).

use rhone_core::RunnerStatus;
use serde::{Deserialize, Serialize};

/// Where a runner registers itself.
pub const REGISTER_PATH: &str = "/internal/runner/register";
/// Where a registered runner heartbeats.
pub const HEARTBEAT_PATH: &str = "/internal/runner/heartbeat";
/// Where a runner reports allocation stage changes.
pub const REPORTS_PATH: &str = "/internal/runner/reports";

/// What a runner offers to allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Memory for allocations, MiB.
    pub memory_mb: i64,
    /// CPU for allocations, thousandths of a core.
    pub cpu_millis: i64,
    /// How many allocations it runs at most.
    pub slots: i32,
}

/// A runner's registration: where it is, what it offers and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Must be the region and cell the operator added it to.
    pub region: String,
    pub cell: String,
    /// Its API, as the worker reaches it: `http://host:port`.
    pub address: String,
    /// The subnet its allocations' addresses come from (`a.b.c.d/p`).
    pub subnet: String,
    /// Already capped by what the runner measured on its host.
    pub capacity: Capacity,
    pub agent_version: String,
    /// The allocations it runs now (none after a restart): the control plane fences the
    /// others it had placed on it.
    #[serde(default)]
    pub allocations: Vec<uuid::Uuid>,
}

impl Registration {
    /// What is wrong with it as a runner sent it, every problem named by its field; the
    /// region, cell and overlaps are the control plane's to judge.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(e) = self.subnet.parse::<rhone_core::fleet::Subnet>() {
            problems.push(format!("subnet: {e}"));
        }
        let scheme_ok = ["http://", "https://"].iter().any(|p| {
            self.address
                .strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty())
        });
        if !scheme_ok || self.address.len() > 255 {
            problems.push(format!(
                "address: {:?} is not http://host:port (up to 255 characters)",
                self.address.chars().take(80).collect::<String>()
            ));
        }
        let c = &self.capacity;
        if c.memory_mb < 0 || c.cpu_millis < 0 || c.slots < 0 {
            problems.push(format!("capacity: {c:?} has a negative figure"));
        }
        if self.agent_version.is_empty() || self.agent_version.len() > 64 {
            problems.push("agent_version: expected 1 to 64 characters".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The API's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// SHA-256 (hex) of the token the control plane's calls to this runner carry.
    pub call_token_sha256: String,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// After how long without a heartbeat the runner is declared lost.
    pub lost_after_ms: u64,
    /// Allocations it runs that the control plane no longer wants there (fenced while it
    /// was lost): it drains them.
    #[serde(default)]
    pub drain: Vec<uuid::Uuid>,
}

/// The API's answer to a heartbeat: the runner's status. A `lost` runner registers again;
/// a revoked one is answered 401 instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub status: RunnerStatus,
}
