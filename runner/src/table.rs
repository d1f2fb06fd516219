//! The allocations of this runner, in memory: created by the first spec for an id, updated
//! by newer generations, drained on request, and all stopped when the runner shuts down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rhone_runner_protocol::{AllocationSpec, AllocationStatus};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::allocation::{Allocation, UpdateError, Updated};
use crate::lifecycle::{self, Context};
use crate::logs::LogBuffer;
use crate::report::Reporter;
use crate::scrub::Scrubber;

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
        let log_path = self
            .ctx
            .config
            .work_dir
            .join("allocations")
            .join(id.to_string())
            .join("output.log");
        let logs = Arc::new(LogBuffer::new(
            log_path,
            Scrubber::new(spec.secrets.values()),
        ));
        let allocation = Arc::new(Allocation::new(spec, logs, self.reporter.queue(id)));
        let task = tokio::spawn(lifecycle::run(self.ctx.clone(), allocation.clone()));
        let status = allocation.status();
        entries.insert(id, Entry { allocation, task });
        Ok(PutOutcome::Created(status))
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
