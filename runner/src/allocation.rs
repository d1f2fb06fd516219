//! One allocation on this runner: its spec (the latest generation accepted), what is
//! observed of it, its output, and its stop signal. Every stage move goes through the core
//! Allocation machine ([`Allocation::enter`]) and is reported. Spec and observed state are
//! kept on disk too (`allocations/<id>/allocation.json`, root only: the spec holds the
//! secrets the sandbox's own bundle holds), rewritten at every change, so a runner that
//! restarts knows what it ran ([`Record`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_runner_protocol::{AllocationSpec, AllocationStatus, Desired, StageReport};
use tokio::sync::watch;
use uuid::Uuid;

use crate::logs::LogBuffer;
use crate::report::ReportQueue;

/// Lines of output a report carries.
pub const REPORT_LOG_LINES: usize = 20;
/// Bytes of one output line a report carries: reports stay far below the API's 64 KiB
/// body limit.
pub const REPORT_LINE_BYTES: usize = 1024;
/// Lines of output `GET /v1/allocations/{id}` shows.
pub const STATUS_LOG_LINES: usize = 50;

/// The file an allocation's [`Record`] is kept in, in its directory.
pub(crate) const RECORD_FILE: &str = "allocation.json";

/// What a runner keeps of an allocation on disk.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    pub spec: AllocationSpec,
    pub observed: Observed,
}

impl Record {
    /// The record in `dir`, if it is there and readable.
    pub(crate) fn read(dir: &Path) -> Option<Record> {
        let text = std::fs::read(dir.join(RECORD_FILE)).ok()?;
        match serde_json::from_slice(&text) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "an unreadable allocation record; ignored");
                None
            }
        }
    }
}

/// What changes as the allocation runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Observed {
    pub stage: AllocationStage,
    /// The allocation's own address on the runner's bridge.
    pub ip: Option<std::net::Ipv4Addr>,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub exit_status: Option<String>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
}

/// Why a spec was not taken for an existing allocation (each is a 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error(
        "allocation {id}: generation {got} is older than generation {seen}, which this runner already has"
    )]
    StaleGeneration { id: Uuid, got: i64, seen: i64 },
    #[error(
        "allocation {id}: generation {generation} was already given with a different spec; a change needs a new generation"
    )]
    GenerationReused { id: Uuid, generation: i64 },
    #[error(
        "allocation {id}: the artifact, process, env and secrets are fixed for an allocation; start a new allocation to change them"
    )]
    WorkloadChanged { id: Uuid },
    #[error("allocation {id} is {stage} and cannot run again; start a new allocation")]
    CannotRunAgain { id: Uuid, stage: AllocationStage },
}

/// What [`Allocation::update`] did with an accepted spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Updated {
    /// The same generation and spec again: nothing to do.
    Unchanged,
    /// A newer generation was taken.
    Newer,
}

/// The spec and what is observed, under one lock: a report is queued while it is held, so
/// reports leave in the order the state changed.
#[derive(Debug)]
struct State {
    spec: Arc<AllocationSpec>,
    observed: Observed,
}

#[derive(Debug)]
pub(crate) struct Allocation {
    pub id: Uuid,
    /// `allocations/<id>`: its record, its log, its home.
    pub dir: PathBuf,
    state: Mutex<State>,
    pub logs: Arc<LogBuffer>,
    stop_tx: watch::Sender<bool>,
    reports: ReportQueue,
}

impl Allocation {
    /// A `planned` allocation, recorded and reported as such; the caller starts its task.
    pub(crate) fn new(
        spec: AllocationSpec,
        dir: PathBuf,
        logs: Arc<LogBuffer>,
        reports: ReportQueue,
    ) -> Self {
        let observed = Observed {
            stage: AllocationStage::INITIAL,
            ip: None,
            port: None,
            pid: None,
            exit_status: None,
            exit_code: None,
            message: None,
        };
        Self::recovered(Record { spec, observed }, dir, logs, reports)
    }

    /// An allocation as its record has it (a new one, or one an earlier runner ran), its
    /// current stage reported again; the caller starts its task.
    pub(crate) fn recovered(
        record: Record,
        dir: PathBuf,
        logs: Arc<LogBuffer>,
        reports: ReportQueue,
    ) -> Self {
        let stop = record.spec.desired == Desired::Stop;
        let allocation = Allocation {
            id: record.spec.allocation_id,
            dir,
            state: Mutex::new(State {
                spec: Arc::new(record.spec),
                observed: record.observed,
            }),
            logs,
            stop_tx: watch::Sender::new(stop),
            reports,
        };
        allocation.save(&allocation.lock());
        allocation.report_current();
        allocation
    }

    /// Writes the record (a temporary file renamed over the last one). A failure is logged:
    /// the allocation runs on, and a restart would not adopt it.
    fn save(&self, state: &State) {
        let record = Record {
            spec: (*state.spec).clone(),
            observed: state.observed.clone(),
        };
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::create_dir_all(&self.dir)?;
                let tmp = self.dir.join(format!("{RECORD_FILE}.tmp"));
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(&bytes)?;
                std::fs::rename(&tmp, self.dir.join(RECORD_FILE))
            });
        if let Err(e) = written {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot record the allocation");
        }
    }

    pub(crate) fn spec(&self) -> Arc<AllocationSpec> {
        self.lock().spec.clone()
    }

    /// A receiver that sees `true` once a stop is requested.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Asks the allocation to stop: drain if it runs, or not start at all.
    pub(crate) fn request_stop(&self) {
        let mut state = self.lock();
        if state.spec.desired != Desired::Stop {
            let mut next = (*state.spec).clone();
            next.desired = Desired::Stop;
            state.spec = Arc::new(next);
            self.save(&state);
        }
        self.stop_tx.send_replace(true);
    }

    /// Takes `spec` for this allocation if its generation allows (see [`UpdateError`]).
    pub(crate) fn update(&self, spec: AllocationSpec) -> Result<Updated, UpdateError> {
        let id = self.id;
        let mut state = self.lock();
        let current = &state.spec;
        if spec.generation < current.generation {
            return Err(UpdateError::StaleGeneration {
                id,
                got: spec.generation,
                seen: current.generation,
            });
        }
        if spec.generation == current.generation {
            // `desired` may have moved to stop through DELETE; the rest must be identical.
            let same = current.same_workload(&spec)
                && (spec.desired == current.desired || spec.desired == Desired::Run);
            return if same {
                Ok(Updated::Unchanged)
            } else {
                Err(UpdateError::GenerationReused {
                    id,
                    generation: spec.generation,
                })
            };
        }
        if !current.same_workload(&spec) {
            return Err(UpdateError::WorkloadChanged { id });
        }
        let stage = state.observed.stage;
        let stopping = current.desired == Desired::Stop || *self.stop_tx.borrow();
        if spec.desired == Desired::Run && (stage.is_terminal() || stopping) {
            return Err(UpdateError::CannotRunAgain { id, stage });
        }
        let stop = spec.desired == Desired::Stop;
        state.spec = Arc::new(spec);
        self.save(&state);
        // The control plane learns that the new generation was taken.
        self.reports.send(self.report_of(&state));
        drop(state);
        if stop {
            self.stop_tx.send_replace(true);
        }
        Ok(Updated::Newer)
    }

    /// Moves to `next` if the core machine allows it, applies `change`, and reports the
    /// new stage. An illegal move is a bug in the lifecycle: logged, not applied.
    pub(crate) fn enter(&self, next: AllocationStage, change: impl FnOnce(&mut Observed)) -> bool {
        let mut state = self.lock();
        if let Err(e) = state.observed.stage.transition(next) {
            tracing::error!(error = %e, "bug: illegal allocation transition refused");
            return false;
        }
        state.observed.stage = next;
        state.observed.message = None;
        change(&mut state.observed);
        let scrubber = self.logs.scrubber();
        state.observed.message = state.observed.message.as_deref().map(|m| scrubber.scrub(m));
        self.save(&state);
        let report = self.report_of(&state);
        match next {
            AllocationStage::Failed => tracing::warn!(
                stage = %next,
                message = report.message.as_deref().unwrap_or(""),
                "allocation failed"
            ),
            _ => tracing::info!(stage = %next, "allocation stage"),
        }
        self.reports.send(report);
        true
    }

    /// Records a change that moves no stage (where the process runs); not reported.
    pub(crate) fn observe(&self, change: impl FnOnce(&mut Observed)) {
        let mut state = self.lock();
        change(&mut state.observed);
        self.save(&state);
    }

    /// The stage and what else is observed now.
    pub(crate) fn observed(&self) -> Observed {
        self.lock().observed.clone()
    }

    /// Reports the current stage again.
    pub(crate) fn report_current(&self) {
        let state = self.lock();
        self.reports.send(self.report_of(&state));
    }

    pub(crate) fn status(&self) -> AllocationStatus {
        let state = self.lock();
        let (spec, observed) = (&state.spec, &state.observed);
        AllocationStatus {
            allocation_id: self.id,
            generation: spec.generation,
            desired: spec.desired,
            stage: observed.stage,
            artifact_digest: spec.artifact_digest.clone(),
            port: observed.port,
            pid: observed.pid,
            address: address(observed),
            exit_status: observed.exit_status.clone(),
            exit_code: observed.exit_code,
            message: observed.message.clone(),
            last_log_lines: self.logs.last(STATUS_LOG_LINES),
        }
    }

    fn report_of(&self, state: &State) -> StageReport {
        StageReport {
            allocation_id: self.id,
            generation: state.spec.generation,
            stage: state.observed.stage,
            address: address(&state.observed),
            exit_status: state.observed.exit_status.clone(),
            message: state.observed.message.clone(),
            last_log_lines: self
                .logs
                .last(REPORT_LOG_LINES)
                .into_iter()
                .map(|line| shorten(line, REPORT_LINE_BYTES))
                .collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn address(observed: &Observed) -> Option<String> {
    match (observed.stage, observed.ip, observed.port) {
        (AllocationStage::Ready, Some(ip), Some(port)) => Some(format!("http://{ip}:{port}")),
        _ => None,
    }
}

/// `line` cut to at most `max` bytes (at a character boundary), marked with `…`.
fn shorten(mut line: String, max: usize) -> String {
    if line.len() > max {
        let mut end = max - '…'.len_utf8();
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn report_lines_are_shortened_at_char_boundaries() {
        assert_eq!(shorten("short".into(), 10), "short");
        assert_eq!(shorten("abcdefghijkl".into(), 10), "abcdefg…");
        let cut = shorten("ééééééé".into(), 10);
        assert!(cut.len() <= 10 && cut.ends_with('…'), "{cut:?}");
    }
}
