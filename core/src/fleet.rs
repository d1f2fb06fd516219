//! The runner fleet's vocabulary: a runner's status, and placement — which runner of a
//! region takes a new allocation — as a pure choice over candidates the caller read.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a runner stands with the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStatus {
    /// Added by an operator, never registered yet.
    Registered,
    /// Registered and heartbeating: takes placements.
    Ready,
    /// Unseen for longer than the lost-after time: its allocations are replaced elsewhere
    /// and fenced; it registers again when it comes back.
    Lost,
    /// Its credential was revoked: it is refused for good.
    Revoked,
}

impl RunnerStatus {
    pub const ALL: &'static [RunnerStatus] = &[
        RunnerStatus::Registered,
        RunnerStatus::Ready,
        RunnerStatus::Lost,
        RunnerStatus::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunnerStatus::Registered => "registered",
            RunnerStatus::Ready => "ready",
            RunnerStatus::Lost => "lost",
            RunnerStatus::Revoked => "revoked",
        }
    }
}

impl fmt::Display for RunnerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown runner status {0:?}; expected registered, ready, lost or revoked")]
pub struct UnknownRunnerStatus(pub String);

impl FromStr for RunnerStatus {
    type Err = UnknownRunnerStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunnerStatus::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRunnerStatus(s.to_owned()))
    }
}

/// How runners keep in touch: the API tells each runner how often to heartbeat, and the
/// worker declares lost a runner unseen for `lost_after` (`RHONE_RUNNER_HEARTBEAT_MS`,
/// `RHONE_RUNNER_LOST_AFTER_MS`, read by both roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetTimings {
    pub heartbeat_interval_ms: u64,
    pub lost_after_ms: u64,
}

impl Default for FleetTimings {
    /// A heartbeat a second; lost after three missed ones.
    fn default() -> Self {
        FleetTimings {
            heartbeat_interval_ms: 1000,
            lost_after_ms: 3000,
        }
    }
}

/// A route owner that runs fewer allocations than it is meant to, with the evidence of
/// why: what the fleet watch hands a Repair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairNeed {
    pub route_key: String,
    pub epoch: i64,
    pub environment_id: Uuid,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    /// How many allocations the owner is meant to run.
    pub instances: u32,
    /// How many still run (or are starting).
    pub serving: u32,
    /// The ended allocations of the owner's deployment, newest first (at most `instances`).
    pub lost: Vec<LostAllocation>,
}

/// An allocation of a route owner that ended while it was meant to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostAllocation {
    pub allocation_id: Uuid,
    /// The runner it was placed on.
    pub runner: Option<String>,
    pub stage: String,
    /// Why, as recorded: the runner's exit status, or the fence's reason (`runner … lost`,
    /// `… restarted without it`).
    pub reason: Option<String>,
}

/// How long after a Repair of a route ended the next may start, given how many ended in
/// the last [`REPAIR_WINDOW`]: none for the first, then 1 s, 2 s, 4 s … up to five
/// minutes, so a host loss is repaired at once and an app that crashes after every start
/// is restarted ever more slowly instead of in a tight loop.
pub fn repair_backoff(recent: u32) -> std::time::Duration {
    match recent {
        0 => std::time::Duration::ZERO,
        n => std::time::Duration::from_secs(1u64 << (n - 1).min(9)).min(REPAIR_BACKOFF_MAX),
    }
}

/// The longest wait between two Repairs of one route.
pub const REPAIR_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(300);
/// How far back [`repair_backoff`] counts Repairs.
pub const REPAIR_WINDOW: std::time::Duration = std::time::Duration::from_secs(900);

/// How a refusal for want of capacity starts (an activity's message; the workflow that
/// reads it parks the operation `blocked` with the shortfall as evidence).
pub const NO_CAPACITY: &str = "no capacity: ";

/// What a new allocation takes of a runner: the artifact's `[run]` memory and CPU, and one
/// slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    pub memory_mb: i64,
    pub cpu_millis: i64,
}

/// A runner placement may choose, with what it has left and how much of the environment
/// being placed it (and its cell) already runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub runner_id: Uuid,
    pub runner: String,
    pub cell_id: Uuid,
    pub cell: String,
    pub status: RunnerStatus,
    pub free_memory_mb: i64,
    pub free_cpu_millis: i64,
    pub free_slots: i64,
    /// Allocations of the environment being placed that run on this runner / in its cell.
    pub same_environment: u32,
    pub same_environment_in_cell: u32,
}

impl Candidate {
    /// Why this runner cannot take `need`, if it cannot.
    pub fn lacks(&self, need: Need) -> Option<String> {
        match self.status {
            RunnerStatus::Ready => {}
            RunnerStatus::Registered => {
                return Some(format!("{} has not registered yet", self.runner));
            }
            status => return Some(format!("{} is {status}", self.runner)),
        }
        let mut short = Vec::new();
        if self.free_memory_mb < need.memory_mb {
            short.push(format!("{} MiB free", self.free_memory_mb.max(0)));
        }
        if self.free_cpu_millis < need.cpu_millis {
            short.push(format!("{} millicores free", self.free_cpu_millis.max(0)));
        }
        if self.free_slots < 1 {
            short.push("no free slot".to_owned());
        }
        (!short.is_empty()).then(|| format!("{} has {}", self.runner, short.join(", ")))
    }
}

/// No runner of the region can take the allocation: what was needed, how many runners fell
/// short of what (its `Display`, which tenants see: no runner is named), and why each one
/// could not ([`Shortfall::detail`], for operators and logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// The region placement was confined to, if any.
    pub region: Option<String>,
    pub need: Need,
    /// One line per runner considered, naming it.
    pub runners: Vec<String>,
    /// Runners considered, and how many were short of memory, CPU, a slot, or not ready.
    pub considered: usize,
    pub short_of_memory: usize,
    pub short_of_cpu: usize,
    pub without_slot: usize,
    pub not_ready: usize,
}

impl Shortfall {
    /// Why each runner could not take the allocation, naming them (for operators).
    pub fn detail(&self) -> String {
        self.runners.join("; ")
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no runner ")?;
        if let Some(region) = &self.region {
            write!(f, "in region {region} ")?;
        }
        write!(
            f,
            "has room for {} MiB and {} millicores",
            self.need.memory_mb, self.need.cpu_millis
        )?;
        if self.considered == 0 {
            return f.write_str(": there is no runner");
        }
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let mut parts = Vec::new();
        for (n, what) in [
            (self.short_of_memory, "short of memory"),
            (self.short_of_cpu, "short of CPU"),
            (self.without_slot, "without a free slot"),
            (self.not_ready, "not ready (lost or not registered yet)"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        write!(
            f,
            " (of {} runner{}: {})",
            self.considered,
            plural(self.considered),
            parts.join(", ")
        )
    }
}

/// The runner a new allocation goes to: one with room, spreading the environment across
/// cells first and runners second, then the one with the most memory free (ties by name,
/// so the choice is stable). The index into `candidates`, or why none fits.
pub fn choose(
    candidates: &[Candidate],
    need: Need,
    region: Option<&str>,
) -> Result<usize, Shortfall> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.lacks(need).is_none())
        .min_by(|(_, a), (_, b)| {
            (a.same_environment_in_cell, a.same_environment)
                .cmp(&(b.same_environment_in_cell, b.same_environment))
                .then(b.free_memory_mb.cmp(&a.free_memory_mb))
                .then(b.free_cpu_millis.cmp(&a.free_cpu_millis))
                .then(a.runner.cmp(&b.runner))
        })
        .map(|(i, _)| i)
        .ok_or_else(|| {
            let count = |short: &dyn Fn(&Candidate) -> bool| {
                candidates
                    .iter()
                    .filter(|c| c.status == RunnerStatus::Ready && short(c))
                    .count()
            };
            Shortfall {
                region: region.map(str::to_owned),
                need,
                runners: candidates.iter().filter_map(|c| c.lacks(need)).collect(),
                considered: candidates.len(),
                short_of_memory: count(&|c| c.free_memory_mb < need.memory_mb),
                short_of_cpu: count(&|c| c.free_cpu_millis < need.cpu_millis),
                without_slot: count(&|c| c.free_slots < 1),
                not_ready: candidates
                    .iter()
                    .filter(|c| c.status != RunnerStatus::Ready)
                    .count(),
            }
        })
}

/// A runner's subnet, where its allocations' addresses come from: `a.b.c.d/p`, `p` from 16
/// to 28, the host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: core::net::Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Subnet {
    type Err = String;

    /// The error names what is wrong with `text`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected a.b.c.d/prefix"))?;
        let network: core::net::Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (16..=28).contains(p))
            .ok_or_else(|| format!("{text:?}: the prefix must be from 16 to 28"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            return Err(format!(
                "{text:?}: host bits are set; the network is {}/{prefix}",
                core::net::Ipv4Addr::from(u32::from(network) & mask)
            ));
        }
        Ok(Subnet { network, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repairs_back_off_exponentially_up_to_five_minutes() {
        use super::repair_backoff;
        use std::time::Duration;
        let secs: Vec<u64> = (0..12).map(|n| repair_backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(repair_backoff(u32::MAX), Duration::from_secs(300));
    }

    use super::*;

    fn runner(name: &str, cell: u8, memory: i64, same: u32, same_cell: u32) -> Candidate {
        Candidate {
            runner_id: Uuid::from_u128(name.len() as u128),
            runner: name.to_owned(),
            cell_id: Uuid::from_u128(u128::from(cell)),
            cell: format!("c{cell}"),
            status: RunnerStatus::Ready,
            free_memory_mb: memory,
            free_cpu_millis: 4000,
            free_slots: 10,
            same_environment: same,
            same_environment_in_cell: same_cell,
        }
    }

    const NEED: Need = Need {
        memory_mb: 512,
        cpu_millis: 1000,
    };

    #[test]
    fn the_roomiest_runner_takes_the_first_instance() {
        let c = [runner("a", 1, 1024, 0, 0), runner("b", 1, 4096, 0, 0)];
        assert_eq!(choose(&c, NEED, Some("eu")), Ok(1));
    }

    #[test]
    fn instances_spread_across_cells_before_runners() {
        // `b` has the most room, but its cell already runs an instance.
        let c = [
            runner("a", 1, 1024, 1, 1),
            runner("b", 1, 8192, 0, 1),
            runner("c", 2, 1024, 0, 0),
        ];
        assert_eq!(choose(&c, NEED, Some("eu")), Ok(2));
        // Within one cell, a runner without an instance first.
        let c = [runner("a", 1, 8192, 1, 1), runner("b", 1, 1024, 0, 1)];
        assert_eq!(choose(&c, NEED, Some("eu")), Ok(1));
    }

    #[test]
    fn no_room_names_every_runner_and_why() {
        let mut lost = runner("c", 2, 8192, 0, 0);
        lost.status = RunnerStatus::Lost;
        let mut busy = runner("b", 1, 8192, 0, 0);
        busy.free_slots = 0;
        busy.free_cpu_millis = 500;
        let c = [runner("a", 1, 256, 0, 0), busy, lost];
        let shortfall = choose(&c, NEED, Some("eu")).expect_err("no room");
        assert_eq!(
            shortfall.to_string(),
            "no runner in region eu has room for 512 MiB and 1000 millicores (of 3 runners: \
             1 short of memory, 1 short of CPU, 1 without a free slot, 1 not ready (lost or not \
             registered yet))",
            "what tenants see names no runner"
        );
        assert_eq!(
            shortfall.detail(),
            "a has 256 MiB free; b has 500 millicores free, no free slot; c is lost"
        );
        assert_eq!(
            choose(&[], NEED, Some("eu"))
                .expect_err("no runner")
                .to_string(),
            "no runner in region eu has room for 512 MiB and 1000 millicores: there is no runner"
        );
        assert!(
            choose(&c, NEED, None)
                .expect_err("no room")
                .to_string()
                .starts_with("no runner has room for 512 MiB")
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in RunnerStatus::ALL {
            assert_eq!(s.as_str().parse::<RunnerStatus>(), Ok(*s));
        }
        assert!("gone".parse::<RunnerStatus>().is_err());
    }
}
