//! Asking for a wake: the one thing the edge asks Temporal, and only on the cold path. A
//! request creates or attaches to the Wake workflow of its route key and epoch with
//! update-with-start (workflow id [`rhone_core::wake_workflow_id`], conflict policy "use
//! existing"), so concurrent cold requests on every edge coalesce into one Wake operation.
//! On one edge, reads of the same key and epoch share one call while it is recent.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rhone_workflows::wake::{WakeInput, WakeRequest, WakeStatus, WakeTrigger, WakeWorkflow};
use temporalio_client::{
    Client, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowUpdateWithStartOptions,
    errors::WorkflowUpdateWithStartError,
};
use tokio::{runtime::Handle, sync::watch};

use crate::route::Owner;

/// How long an answered wake call is shared by later reads of the same key and epoch.
const SHARE_FOR: Duration = Duration::from_secs(1);
/// How long a call waits before asking again when it reached a run that was putting the
/// route to sleep.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(100);
/// How long the edge waits for Temporal to answer a wake call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// First and longest wait between two attempts to connect to Temporal.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What the edge needs to ask for wakes: a Temporal client (connected, or being connected)
/// and the control plane's task queue.
#[derive(Clone)]
pub struct WakeClient {
    client: watch::Receiver<Option<Client>>,
    task_queue: String,
}

impl WakeClient {
    /// With a connected client.
    pub fn new(client: Client, task_queue: String) -> Self {
        WakeClient {
            client: watch::channel(Some(client)).1,
            task_queue,
        }
    }

    /// With the client `connect` makes, tried now and again (every 0.5 s, doubling up to
    /// 10 s) until it succeeds, on the current runtime: an edge that starts before Temporal
    /// routes every awake app meanwhile, and a request for a sleeping one gets a 503 until
    /// Temporal answers.
    pub fn connecting<F, Fut, E>(connect: F, task_queue: String) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Client, E>> + Send,
        E: std::fmt::Display + Send,
    {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut wait = FIRST_RETRY;
            loop {
                match connect().await {
                    Ok(client) => {
                        tracing::info!("connected to Temporal: this edge can wake sleeping apps");
                        let _ = tx.send(Some(client));
                        return;
                    }
                    Err(e) => {
                        let error = e.to_string();
                        tracing::warn!(%error, retry_in = ?wait, "no Temporal yet: this edge cannot wake sleeping apps until it connects");
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_RETRY);
                    }
                }
            }
        });
        WakeClient {
            client: rx,
            task_queue,
        }
    }
}

/// The outcome of one wake call, when it has come: the operation and its stage, or why the
/// call failed.
pub(crate) type Outcome = Option<Result<WakeStatus, String>>;

/// One edge's wake calls.
pub(crate) struct Waker {
    wake: WakeClient,
    /// The runtime the Temporal client was made on; calls run there.
    io: Handle,
    recent: Mutex<HashMap<(String, i64), Recent>>,
    calls: AtomicU64,
}

struct Recent {
    at: Instant,
    outcome: watch::Receiver<Outcome>,
}

impl Waker {
    pub(crate) fn new(wake: WakeClient, io: Handle) -> Self {
        Self {
            wake,
            io,
            recent: Mutex::default(),
            calls: AtomicU64::new(0),
        }
    }

    /// Calls made so far.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Asks for the wake of `owner`'s key at its epoch on behalf of `request`, and returns
    /// where its outcome will show. With `share`, a recent call for the same key and epoch is
    /// reused (reads); without, every request is its own call, so its evidence is recorded
    /// on the operation (webhooks, refused writes).
    pub(crate) fn wake(
        &self,
        owner: &Owner,
        request: WakeRequest,
        share: bool,
    ) -> watch::Receiver<Outcome> {
        let slot = (owner.route_key.clone(), owner.epoch);
        if share {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.retain(|_, r| {
                let outcome = r.outcome.borrow();
                let stale = outcome.is_some() && r.at.elapsed() >= SHARE_FOR;
                !stale && !ended(&outcome)
            });
            if let Some(r) = recent.get(&slot) {
                return r.outcome.clone();
            }
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        if share {
            self.recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    slot,
                    Recent {
                        at: Instant::now(),
                        outcome: rx.clone(),
                    },
                );
        }
        let input = WakeInput {
            route_key: owner.route_key.clone(),
            epoch: owner.epoch,
            trigger: WakeTrigger::Request(request.clone()),
        };
        let workflow_id = rhone_core::wake_workflow_id(&owner.route_key, owner.epoch);
        let options = WorkflowUpdateWithStartOptions::new(
            self.wake.task_queue.clone(),
            workflow_id.clone(),
            WorkflowIdConflictPolicy::UseExisting,
        )
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .build();
        let Some(client) = self.wake.client.borrow().clone() else {
            let _ = tx.send(Some(Err(
                "Temporal is not reachable yet; the edge keeps trying to connect".to_owned(),
            )));
            return rx;
        };
        let route_key = owner.route_key.clone();
        let epoch = owner.epoch;
        self.io.spawn(async move {
            let started = Instant::now();
            let outcome = loop {
                let call = client.execute_update_with_start_workflow(
                    WakeWorkflow::run,
                    input.clone(),
                    WakeWorkflow::attach,
                    request.clone(),
                    options.clone(),
                );
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    // A run that has just put the route to sleep answers so and ends; the
                    // call after it starts the next run, which wakes the route (and
                    // records this request).
                    Ok(Ok(status))
                        if status.stage == "sleeping" && started.elapsed() < CALL_TIMEOUT =>
                    {
                        tokio::time::sleep(ASK_AGAIN_AFTER).await;
                    }
                    Ok(Ok(status)) => {
                        tracing::info!(
                            %route_key, epoch, %workflow_id, operation = %status.operation_id,
                            stage = %status.stage, "wake requested"
                        );
                        break Ok(status);
                    }
                    // The run ended while the call was in flight: Temporal aborts the update
                    // (UNAVAILABLE, "workflow update was aborted"), and the next call
                    // reaches or starts the next run.
                    Ok(Err(e)) if aborted(&e) && started.elapsed() < CALL_TIMEOUT => {
                        tracing::debug!(%route_key, epoch, %workflow_id, "the run ended under the call; asking again");
                        tokio::time::sleep(ASK_AGAIN_AFTER).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%route_key, epoch, %workflow_id, error = %e, "asking for a wake failed");
                        break Err(e.to_string());
                    }
                    Err(_) => {
                        tracing::warn!(%route_key, epoch, %workflow_id, "asking for a wake timed out");
                        break Err(format!("Temporal did not answer within {CALL_TIMEOUT:?}"));
                    }
                }
            };
            let _ = tx.send(Some(outcome));
        });
        rx
    }
}

/// Whether an update-with-start was aborted because its run ended under it: retryable.
pub(crate) fn aborted(e: &WorkflowUpdateWithStartError) -> bool {
    use temporalio_client::{errors::WorkflowUpdateError, tonic::Code};
    match e {
        WorkflowUpdateWithStartError::Update(WorkflowUpdateError::Rpc(s))
        | WorkflowUpdateWithStartError::Rpc(s) => s.code() == Code::Unavailable,
        _ => false,
    }
}

/// Whether a call's answer cannot lead to a wake: it failed, or it reached a run that was
/// just putting the route to sleep (that run ends; the next call starts a new one).
pub(crate) fn ended(outcome: &Outcome) -> bool {
    match outcome {
        Some(Ok(s)) => s.stage == "failed" || s.stage == "sleeping",
        Some(Err(_)) => true,
        None => false,
    }
}
