//! The allocations of this runner: created by the first spec for an id, updated by newer
//! generations, drained on request, all stopped when the runner shuts down, and taken over
//! from their records by the next runner when this one died without stopping them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rhone_core::StateMachine as _;
use rhone_runner_protocol::{AllocationSpec, AllocationStatus};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::allocation::{Allocation, Record, UpdateError, Updated};
use crate::lifecycle::{self, Context};
use crate::logs::LogBuffer;
use crate::report::Reporter;
use crate::scrub::Scrubber;

/// Where allocations keep their record, log and home, in the work directory.
pub(crate) const ALLOCATIONS_DIR: &str = "allocations";
/// An allocation's output, in its directory.
const LOG_FILE: &str = "output.log";

/// What a `PUT` did.
#[derive(Debug)]
pub(crate) enum PutOutcome {
    Created(AllocationStatus),
    Unchanged(AllocationStatus),
    Updated(AllocationStatus),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PutError {
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error("the runner is shutting down and takes no new allocations")]
    ShuttingDown,
}

struct Entry {
    allocation: Arc<Allocation>,
    task: JoinHandle<()>,
}

pub(crate) struct Table {
    ctx: Arc<Context>,
    reporter: Reporter,
    entries: Mutex<HashMap<Uuid, Entry>>,
    closing: AtomicBool,
}

impl Table {
    pub(crate) fn new(ctx: Arc<Context>, reporter: Reporter) -> Self {
        Table {
            ctx,
            reporter,
            entries: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        }
    }

    /// Creates the allocation, or hands the spec to the one with this id.
    pub(crate) fn put(&self, spec: AllocationSpec) -> Result<PutOutcome, PutError> {
        let mut entries = self.entries();
        if let Some(entry) = entries.get(&spec.allocation_id) {
            let allocation = entry.allocation.clone();
            drop(entries);
            return Ok(match allocation.update(spec)? {
                Updated::Unchanged => PutOutcome::Unchanged(allocation.status()),
                Updated::Newer => PutOutcome::Updated(allocation.status()),
            });
        }
        if self.closing.load(Ordering::SeqCst) {
            return Err(PutError::ShuttingDown);
        }
        let id = spec.allocation_id;
        let dir = self.dir_of(id);
        let logs = Arc::new(LogBuffer::new(
            dir.join(LOG_FILE),
            Scrubber::new(spec.secrets.values()),
        ));
        let allocation = Arc::new(Allocation::new(spec, dir, logs, self.reporter.queue(id)));
        let task = tokio::spawn(lifecycle::run(self.ctx.clone(), allocation.clone()));
        let status = allocation.status();
        entries.insert(id, Entry { allocation, task });
        Ok(PutOutcome::Created(status))
    }

    /// Takes over what an earlier runner in this work directory left unfinished: every
    /// allocation whose record is not final, each resumed by its own task
    /// ([`lifecycle::run`]: adopted if it still runs, reported if it died). Returns
    /// their sandbox ids, which are this runner's now.
    pub(crate) fn recover(&self) -> Vec<String> {
        let mut kept = Vec::new();
        let mut entries = self.entries();
        for (id, dir, record) in self.recorded() {
            if record.observed.stage.is_terminal() {
                continue;
            }
            let logs = LogBuffer::new(
                dir.join(LOG_FILE),
                Scrubber::new(record.spec.secrets.values()),
            );
            logs.restore();
            let allocation = Arc::new(Allocation::recovered(
                record,
                dir,
                Arc::new(logs),
                self.reporter.queue(id),
            ));
            let task = tokio::spawn(lifecycle::run(self.ctx.clone(), allocation.clone()));
            entries.insert(id, Entry { allocation, task });
            kept.push(id.to_string());
        }
        if !kept.is_empty() {
            tracing::info!(
                count = kept.len(),
                "taking over the allocations an earlier runner left"
            );
        }
        kept
    }

    /// Removes the directories (record, log, home) of allocations that ended more than
    /// `retain` ago and are no longer in the table; returns how many went.
    pub(crate) fn prune_ended(&self, retain: std::time::Duration) -> usize {
        let mut pruned = 0;
        for (id, path, record) in self.recorded() {
            let old_enough = std::fs::metadata(path.join(crate::allocation::RECORD_FILE))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > retain));
            let running = self
                .entries()
                .get(&id)
                .is_some_and(|e| !e.allocation.observed().stage.is_terminal());
            if !old_enough || running || !record.observed.stage.is_terminal() {
                continue;
            }
            self.entries().remove(&id);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => pruned += 1,
                Err(e) => {
                    tracing::warn!(dir = %path.display(), error = %e, "cannot remove an ended allocation's directory")
                }
            }
        }
        pruned
    }

    /// Every allocation directory of the work directory with a readable record of its own
    /// allocation: its id, its path and the record.
    fn recorded(&self) -> Vec<(Uuid, std::path::PathBuf, Record)> {
        let root = self.ctx.config.work_dir.join(ALLOCATIONS_DIR);
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|dir| {
                let id: Uuid = dir.file_name().to_str()?.parse().ok()?;
                let record = Record::read(&dir.path())?;
                (record.spec.allocation_id == id).then(|| (id, dir.path(), record))
            })
            .collect()
    }

    fn dir_of(&self, id: Uuid) -> std::path::PathBuf {
        self.ctx
            .config
            .work_dir
            .join(ALLOCATIONS_DIR)
            .join(id.to_string())
    }

    pub(crate) fn get(&self, id: Uuid) -> Option<AllocationStatus> {
        let allocation = self.entries().get(&id)?.allocation.clone();
        Some(allocation.status())
    }

    /// Every allocation, by id.
    pub(crate) fn list(&self) -> Vec<AllocationStatus> {
        let allocations: Vec<_> = self
            .entries()
            .values()
            .map(|e| e.allocation.clone())
            .collect();
        let mut all: Vec<_> = allocations.iter().map(|a| a.status()).collect();
        all.sort_by_key(|s| s.allocation_id);
        all
    }

    /// Asks the allocation to stop; its task drains it.
    pub(crate) fn drain(&self, id: Uuid) -> Option<AllocationStatus> {
        let allocation = self.entries().get(&id)?.allocation.clone();
        allocation.request_stop();
        Some(allocation.status())
    }

    /// Stops every allocation (each within its drain deadline), waits for their tasks,
    /// then for their last reports (a bounded time).
    pub(crate) async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let entries: Vec<Entry> = self.entries().drain().map(|(_, e)| e).collect();
        if !entries.is_empty() {
            tracing::info!(count = entries.len(), "stopping every allocation");
        }
        for entry in &entries {
            entry.allocation.request_stop();
        }
        for entry in entries {
            let id = entry.allocation.id;
            // The allocation (and its report queue) goes before the wait for reports.
            drop(entry.allocation);
            if let Err(e) = entry.task.await {
                tracing::error!(allocation_id = %id, error = %e, "allocation task failed");
            }
        }
        self.reporter.flush().await;
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
