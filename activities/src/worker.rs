//! The control-plane worker: registers every workflow and activity on the task queue and
//! runs until its shutdown future resolves.

use std::{future::Future, time::Duration};

use rhone_workflows::{
    DatabaseBindWorkflow, DeployWorkflow, EnvironmentCreateWorkflow, FleetWorkflow,
    MigrationWorkflow, PromotionWorkflow, RepairWorkflow, TASK_QUEUE, WakeWorkflow,
};
use sea_orm::DatabaseConnection;
use temporalio_client::Client;
use temporalio_sdk::{Runtime, WorkerOptions};

use crate::deploy::{DeployActivities, DeployConfig};
use crate::preview::{PreviewActivities, PreviewConfig};
use crate::promotion::{PromotionActivities, PromotionConfig};
use crate::wake::{WakeActivities, WakeConfig};
use crate::{operation::OperationActivities, tenancy::TenancyActivities};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("creating the Temporal runtime: {0}")]
    Runtime(String),
    #[error("registering workflows: {0}")]
    Register(String),
    #[error("starting the worker: {0}")]
    Start(String),
    #[error("worker stopped with an error: {0}")]
    Run(String),
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The task queue to poll; tests use their own so they run in parallel.
    pub task_queue: String,
    /// Work directory, artifact store and git of the deploy activities; see
    /// [`DeployConfig`] for the defaults.
    pub deploy: DeployConfig,
    /// Where previews are published; see [`PreviewConfig`].
    pub preview: PreviewConfig,
    /// Health window, drain grace, edge propagation deadline and edge liveness of
    /// promotions; see [`PromotionConfig`] for the defaults.
    pub promotion: PromotionConfig,
    /// Scale to zero: how often a hot route is checked for idleness; see [`WakeConfig`].
    pub wake: WakeConfig,
    /// `RHONE_RUNNER_KEY`: the operator's runner key, from which the call token of each
    /// runner is derived. Default none: runners refuse this worker's calls.
    pub runner_key: Option<rhone_runner_protocol::RunnerKey>,
    /// When a runner counts as lost; the fleet watch sweeps every heartbeat interval.
    pub fleet: rhone_core::fleet::FleetTimings,
    /// Whether this worker starts the fleet watch of its task queue (on by default).
    pub watch_fleet: bool,
    /// The operator's secrets key (`RHONE_SECRETS_KEY`): allocations of environments with
    /// secrets get them; without it, such an allocation is refused naming the setting.
    pub secrets: Option<std::sync::Arc<rhone_schema::secrets::Keyring>>,
    /// How Migrations take their lock and where their dumps go.
    pub migration: crate::database::MigrationConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            task_queue: TASK_QUEUE.to_owned(),
            deploy: DeployConfig::default(),
            preview: PreviewConfig::default(),
            promotion: PromotionConfig::default(),
            wake: WakeConfig::default(),
            runner_key: None,
            fleet: rhone_core::fleet::FleetTimings::default(),
            watch_fleet: true,
            secrets: None,
            migration: crate::database::MigrationConfig::default(),
        }
    }
}

pub struct Worker;

/// A worker running on a thread of its own (its run future is not `Send`: workflows run on
/// a local task set), for processes that also run other servers.
pub struct WorkerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), WorkerError>>>,
}

impl WorkerHandle {
    /// Asks the worker to stop, and waits until it has.
    pub async fn shutdown(mut self) -> Result<(), WorkerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| WorkerError::Run(e.to_string()))?
            .map_err(|_| WorkerError::Run("worker thread panicked".to_owned()))?
    }

    /// Whether the worker has stopped on its own (an error, or its shutdown).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Worker {
    /// Starts the worker on its own thread; it runs until [`WorkerHandle::shutdown`] or drop.
    pub fn spawn(
        config: WorkerConfig,
        client: Client,
        db: DatabaseConnection,
    ) -> Result<WorkerHandle, WorkerError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| WorkerError::Runtime(e.to_string()))?;
        let thread = std::thread::Builder::new()
            .name(format!("worker-{}", config.task_queue))
            .spawn(move || {
                runtime.block_on(Worker::run(config, client, db, async move {
                    let _ = stopped.await;
                }))
            })
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        Ok(WorkerHandle {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs the worker until `shutdown` resolves, then lets in-flight tasks finish.
    pub async fn run(
        config: WorkerConfig,
        client: Client,
        db: DatabaseConnection,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        let runtime = Runtime::from_current_tokio(Default::default())
            .map_err(|e| WorkerError::Runtime(e.to_string()))?;
        // Runner requests are small; a runner that does not answer in time is retried (and
        // long activities heartbeat every 5 s).
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        let runners = crate::allocate::RunnerClient::new(http, config.runner_key.clone())
            .with_secrets(config.secrets.clone());
        // Build sandboxes a killed predecessor left behind go first.
        if let Ok(sandbox) = rhone_sandbox::Sandbox::new(&config.deploy.sandbox()) {
            let reaped = sandbox.reap().await;
            if reaped > 0 {
                tracing::warn!(reaped, "removed build sandboxes a previous worker left");
            }
        }
        let options = WorkerOptions::new(config.task_queue.clone())
            .register_workflow::<EnvironmentCreateWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_workflow::<DeployWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_workflow::<PromotionWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_workflow::<WakeWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_workflow::<FleetWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_workflow::<RepairWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_workflow::<DatabaseBindWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_workflow::<MigrationWorkflow>()
            .map_err(|e| WorkerError::Register(e.to_string()))?
            .register_activities(crate::database::DatabaseActivities {
                db: db.clone(),
                secrets: config.secrets.clone(),
                store: config.deploy.store.clone(),
                migration: config.migration.clone(),
            })
            .register_activities(crate::fleet::FleetActivities {
                db: db.clone(),
                timings: config.fleet,
                temporal: client.clone(),
                task_queue: config.task_queue.clone(),
            })
            .register_activities(crate::repair::RepairActivities {
                db: db.clone(),
                health_window: config.promotion.health_window,
            })
            .register_activities(PreviewActivities {
                db: db.clone(),
                config: config.preview.clone(),
                runners: runners.clone(),
            })
            .register_activities(WakeActivities {
                db: db.clone(),
                config: config.wake.clone(),
                edge_liveness: config.promotion.edge_liveness,
                runners: runners.clone(),
            })
            .register_activities(PromotionActivities {
                db: db.clone(),
                config: config.promotion.clone(),
                domain: config.preview.domain.clone(),
                runners,
            })
            .register_activities(OperationActivities { db: db.clone() })
            .register_activities(TenancyActivities { db: db.clone() })
            .register_activities(DeployActivities {
                db,
                config: config.deploy.clone(),
            })
            .build();
        if config.watch_fleet {
            start_fleet_watch(&client, &config).await;
        }
        let mut worker = temporalio_sdk::Worker::new(&runtime, client, options)
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        let stop = worker.shutdown_handle();
        tracing::info!(task_queue = %config.task_queue, "worker started");
        let run = worker.run();
        tokio::pin!(run);
        tokio::select! {
            res = &mut run => return res.map_err(|e| WorkerError::Run(e.to_string())),
            () = shutdown => stop(),
        }
        run.await.map_err(|e| WorkerError::Run(e.to_string()))
    }
}

/// Starts the fleet watch of the worker's task queue unless it runs already (a restarted
/// worker finds it). A failure is logged: the worker still runs everything else, and the
/// next start tries again.
async fn start_fleet_watch(client: &Client, config: &WorkerConfig) {
    use temporalio_client::{
        WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions,
    };
    let workflow_id = rhone_workflows::fleet_workflow_id(&config.task_queue);
    let input = rhone_workflows::FleetInput {
        lost_after_ms: config.fleet.lost_after_ms,
        sweep_every_ms: config.fleet.heartbeat_interval_ms,
    };
    let options = WorkflowStartOptions::new(config.task_queue.clone(), workflow_id.clone())
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
        .build();
    match client
        .start_workflow(FleetWorkflow::run, input, options)
        .await
    {
        Ok(_) => tracing::info!(%workflow_id, "fleet watch running"),
        Err(e) => tracing::error!(%workflow_id, error = %e, "the fleet watch did not start"),
    }
}
