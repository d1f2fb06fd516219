//! Per test: a temp SQLite DB with an environment (the `deploy_support` fixture), a local
//! artifact store shared by a worker on its own task queue and an in-test runner registered
//! as the one ready runner, and deploys started as the API starts them.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rhone_activities::temporal::{self, Client, TemporalConfig};
use rhone_activities::{Worker, WorkerConfig, WorkerHandle};
use rhone_core::{OperationKind, workflow_id};
use rhone_runner::{ArtifactStore, RunnerConfig, RunnerIdentity, RunnerState};
use rhone_schema::entity::{allocation, operation, route_owner};
use rhone_workflows::{
    Decision, DecisionKind, DecisionTaken, DecisionUpdate, DeployInput, DeployWorkflow,
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use temporalio_client::WorkflowStartOptions;

use super::deploy_support::{Deployment, Fixture, Repo};

/// Where the runner of a harness shows `markers/` of the test's directory to apps.
pub const MARKERS: &str = "/shared/markers";

/// The in-test API's stop signal and task.
type ApiTask = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), rhone_api::ApiError>>,
);

pub struct Harness {
    pub fx: Fixture,
    pub client: Client,
    pub queue: String,
    worker: WorkerHandle,
    /// The API serving the runner's registration, heartbeats and reports, when it
    /// registers ([`Harness::start_registered`]).
    api: Option<ApiTask>,
    runner_stop: tokio::sync::oneshot::Sender<()>,
    runner: tokio::task::JoinHandle<Result<(), rhone_runner::RunnerError>>,
}

/// The operation row and its recorded stage names, in order.
pub struct Seen {
    pub op: operation::Model,
    pub stages: Vec<String>,
}

impl Seen {
    pub fn error(&self) -> &str {
        self.op.error.as_deref().unwrap_or("")
    }
}

impl Harness {
    /// A marker file: where the test writes it, and where an app sees it
    /// ([`MARKERS`], shown read-only to every app of the harness's runner).
    pub fn marker(&self, name: &str) -> (std::path::PathBuf, String) {
        (
            self.fx.tmp.path().join("markers").join(name),
            format!("{MARKERS}/{name}"),
        )
    }

    pub async fn start(test: &str) -> Result<Harness> {
        Self::start_with(test, None, false, |_| {}).await
    }

    /// A harness whose runner registers with an in-test API under a credential an operator
    /// issued, heartbeats and reports its allocations' changes there, as runners do in
    /// production (the default harness's runner is a fixture row and reports nowhere).
    pub async fn start_registered(
        test: &str,
        configure: impl FnOnce(&mut WorkerConfig),
    ) -> Result<Harness> {
        Self::start_with(test, None, true, configure).await
    }

    /// A harness whose worker's configuration is adjusted by `configure` first.
    pub async fn start_configured(
        test: &str,
        configure: impl FnOnce(&mut WorkerConfig),
    ) -> Result<Harness> {
        Self::start_with(test, None, false, configure).await
    }

    /// A harness whose worker and runner share an artifact store in a fresh bucket of the
    /// test S3 API server, instead of a local directory.
    pub async fn start_s3(test: &str) -> Result<Harness> {
        let s3 = rhone_testkit::s3::server().await?;
        // Bucket names allow `-` but not `_`.
        let bucket = rhone_testkit::unique_name(test).replace('_', "-");
        let store = rhone_store::S3Store::new(&rhone_store::S3Config {
            endpoint: s3.endpoint,
            region: s3.region,
            bucket,
            prefix: "artifacts".into(),
            access_key_id: s3.access_key,
            secret_access_key: rhone_store::SecretKey::new(s3.secret_key),
        })?;
        store
            .client()
            .create_bucket()
            .bucket(store.bucket())
            .send()
            .await
            .with_context(|| format!("creating bucket {}", store.bucket()))?;
        Self::start_with(test, Some(ArtifactStore::S3(store)), false, |_| {}).await
    }

    async fn start_with(
        test: &str,
        store: Option<ArtifactStore>,
        registered: bool,
        configure: impl FnOnce(&mut WorkerConfig),
    ) -> Result<Harness> {
        let mut fx = Fixture::new().await?;
        if let Some(store) = store {
            fx.config.store = store;
        }
        let server = rhone_testkit::temporal::server().await?;
        let client = temporal::connect(&TemporalConfig {
            address: Some(server.target.clone()),
            namespace: Some(server.namespace.clone()),
        })
        .await?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let mut config = RunnerConfig::new(fx.tmp.path().join("runner"));
        config.artifact_dir = fx.tmp.path().join("artifacts");
        // Marker files a test's app version reads (read-only) to change behaviour later.
        std::fs::create_dir_all(fx.tmp.path().join("markers"))?;
        config.shared_dirs = vec![(fx.tmp.path().join("markers"), MARKERS.to_owned())];
        let queue = rhone_testkit::unique_name(test);
        // Registered runners are judged by their heartbeats; a loaded test machine must not
        // make one look lost.
        let fleet = rhone_core::fleet::FleetTimings {
            heartbeat_interval_ms: 1000,
            lost_after_ms: 10_000,
        };
        let mut api = None;
        if registered {
            let txn = rhone_schema::begin_write(&fx.db).await?;
            let (_, credential) =
                rhone_schema::fleet::add_runner(&txn, "local", "cell-1", "runner-1").await?;
            txn.commit().await?;
            let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            config.api_url = Some(format!("http://{}", api_listener.local_addr()?));
            config.credential = Some(credential);
            let state = rhone_api::ApiState {
                db: fx.db.clone(),
                temporal: client.clone(),
                task_queue: queue.clone(),
                runner_key: Some(rhone_testkit::runner_key()),
                fleet,
                local_repositories: true,
                secrets: None,
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(rhone_api::serve(api_listener, state, async move {
                let _ = stopped.await;
            }));
            api = Some((stop, task));
        } else {
            config.call_token_sha256 = Some(rhone_testkit::runner_call_token_sha256("runner-1"));
        }
        let state = RunnerState {
            identity: RunnerIdentity {
                name: "runner-1".into(),
                region: "local".into(),
                cell: "cell-1".into(),
            },
            store: fx.config.store.clone(),
            config,
        };
        let (runner_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runner = tokio::spawn(rhone_runner::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        if registered {
            wait_ready(&fx.db, "runner-1").await?;
        } else {
            rhone_schema::topology::ensure_runner(&fx.db, "local", "cell-1", "runner-1", &address)
                .await?;
        }

        let mut worker_config = WorkerConfig {
            task_queue: queue.clone(),
            deploy: fx.config.clone(),
            runner_key: Some(rhone_testkit::runner_key()),
            fleet,
            ..WorkerConfig::default()
        };
        configure(&mut worker_config);
        let worker = Worker::spawn(worker_config, client.clone(), fx.db.clone())?;
        Ok(Harness {
            fx,
            client,
            queue,
            worker,
            api,
            runner_stop,
            runner,
        })
    }

    /// Stops the worker, then the runner (which stops the apps it started).
    pub async fn stop(self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(30), self.worker.shutdown())
            .await
            .context("worker shutdown")??;
        let _ = self.runner_stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.runner)
            .await
            .context("runner shutdown")???;
        if let Some((stop, task)) = self.api {
            let _ = stop.send(());
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("API shutdown")???;
        }
        Ok(())
    }

    /// A test repository: `examples/counter` with `edit` applied.
    pub fn repo(
        &self,
        name: &str,
        edit: impl FnOnce(&std::path::Path) -> Result<()>,
    ) -> Result<Repo> {
        self.fx.repo(name, edit)
    }

    /// Records the deployment and its operation as the API does, then starts the workflow.
    pub async fn deploy(&self, repo: &Repo) -> Result<Deployment> {
        let source = Fixture::source(repo, "main");
        let d = self.fx.deployment(&source).await?;
        let input = DeployInput {
            operation_id: d.operation_id,
            deployment_id: d.id,
            environment_id: self.fx.env.id,
            source,
        };
        let id = workflow_id(OperationKind::Deploy, d.operation_id);
        self.client
            .start_workflow(
                DeployWorkflow::run,
                input,
                WorkflowStartOptions::new(self.queue.clone(), id).build(),
            )
            .await?;
        Ok(d)
    }

    /// Sends a decision to the deploy's workflow as on-call does from the Temporal CLI;
    /// fails when the workflow refuses it.
    pub async fn decide(&self, d: Deployment, kind: DecisionKind) -> Result<DecisionTaken> {
        self.decide_operation(OperationKind::Deploy, d, kind).await
    }

    /// The refusal of a decision the deploy's workflow must refuse.
    pub async fn refused(&self, d: Deployment, kind: DecisionKind) -> Result<String> {
        match self.send(OperationKind::Deploy, d, kind).await {
            Ok(taken) => bail!("{} was accepted: {taken:?}", kind.as_str()),
            Err(temporalio_client::errors::WorkflowUpdateError::Failed(f)) => Ok(f.message),
            Err(other) => Err(other.into()),
        }
    }

    /// Sends a decision to the workflow of `d`'s operation of kind `op`.
    pub async fn decide_operation(
        &self,
        op: OperationKind,
        d: Deployment,
        kind: DecisionKind,
    ) -> Result<DecisionTaken> {
        Ok(self.send(op, d, kind).await?)
    }

    async fn send(
        &self,
        op: OperationKind,
        d: Deployment,
        kind: DecisionKind,
    ) -> Result<DecisionTaken, temporalio_client::errors::WorkflowUpdateError> {
        let decision = Decision {
            actor: "oncall".into(),
            reason: Some(format!("test {}", kind.as_str())),
            ..Decision::default()
        };
        self.send_decision(op, d, kind, decision).await
    }

    /// Sends `decision` as it is, straight to Temporal, to the workflow of `d`'s operation
    /// of kind `op`.
    pub async fn send_decision(
        &self,
        op: OperationKind,
        d: Deployment,
        kind: DecisionKind,
        decision: Decision,
    ) -> Result<DecisionTaken, temporalio_client::errors::WorkflowUpdateError> {
        let id = workflow_id(op, d.operation_id);
        self.client
            .get_workflow_handle::<temporalio_common::UntypedWorkflow>(id)
            .execute_update(DecisionUpdate(kind), decision, Default::default())
            .await
    }

    /// With `RHONE_RECORD_HISTORIES=DIR`, saves the deploy's workflow history as
    /// `DIR/NAME.json` for the replay test in `workflows/tests/replay.rs`.
    pub async fn record_history(&self, d: Deployment, name: &str) -> Result<()> {
        self.record_operation_history(OperationKind::Deploy, d, name)
            .await
    }

    /// [`Harness::record_history`] of `d`'s operation of kind `kind`.
    pub async fn record_operation_history(
        &self,
        kind: OperationKind,
        d: Deployment,
        name: &str,
    ) -> Result<()> {
        let Ok(dir) = std::env::var("RHONE_RECORD_HISTORIES") else {
            return Ok(());
        };
        let json = self
            .client
            .get_workflow_handle::<temporalio_common::UntypedWorkflow>(workflow_id(
                kind,
                d.operation_id,
            ))
            .fetch_history(Default::default())
            .to_json()
            .await?;
        std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.json")),
            json,
        )?;
        Ok(())
    }

    pub async fn seen(&self, d: Deployment) -> Result<Seen> {
        let op = operation::Entity::find_by_id(d.operation_id.0)
            .one(&self.fx.db)
            .await?
            .context("operation row")?;
        let stages = rhone_schema::ops::stages(&self.fx.db, d.operation_id.0)
            .await?
            .into_iter()
            .map(|s| s.stage)
            .collect();
        Ok(Seen { op, stages })
    }

    /// Polls until `done` holds, failing with what was last seen once the deploy has ended
    /// otherwise or a deadline has passed.
    pub async fn wait(&self, d: Deployment, done: impl Fn(&Seen) -> bool) -> Result<Seen> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let seen = self.seen(d).await?;
            if done(&seen) {
                return Ok(seen);
            }
            let ended = ["succeeded", "failed", "aborted"].contains(&seen.op.status.as_str());
            if ended || tokio::time::Instant::now() > deadline {
                bail!(
                    "deploy is {} at {} (stages {:?}, error {:?})",
                    seen.op.status,
                    seen.op.current_stage,
                    seen.stages,
                    seen.op.error
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the deploy has `status` with `count` records of its current stage.
    pub async fn wait_status(&self, d: Deployment, status: &str, count: usize) -> Result<Seen> {
        self.wait(d, |s| {
            s.op.status == status
                && s.stages
                    .iter()
                    .filter(|x| **x == s.op.current_stage)
                    .count()
                    == count
        })
        .await
    }

    /// Checks that the deploy's state stays as it is for a moment (a decision that must not
    /// move it has had time to be handled).
    pub async fn stays(&self, d: Deployment, before: &Seen) -> Result<Seen> {
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        loop {
            let seen = self.seen(d).await?;
            if (&seen.op.status, &seen.op.current_stage, &seen.stages)
                != (&before.op.status, &before.op.current_stage, &before.stages)
            {
                bail!(
                    "deploy moved to {} at {} ({:?})",
                    seen.op.status,
                    seen.op.current_stage,
                    seen.stages
                );
            }
            if tokio::time::Instant::now() > until {
                return Ok(seen);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn route_owners(&self) -> Result<Vec<route_owner::Model>> {
        Ok(route_owner::Entity::find().all(&self.fx.db).await?)
    }

    pub async fn allocations(&self, d: Deployment) -> Result<Vec<allocation::Model>> {
        Ok(allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(d.id))
            .all(&self.fx.db)
            .await?)
    }

    /// Nothing of a preview was written for `d`: no allocation, no route owner names it.
    pub async fn assert_no_preview(&self, d: Deployment) -> Result<()> {
        let allocations = self.allocations(d).await?;
        assert!(allocations.is_empty(), "no allocation: {allocations:?}");
        let owners = self.route_owners().await?;
        assert!(
            owners.iter().all(|o| o.deployment_id != d.id),
            "no route owner: {owners:?}"
        );
        Ok(())
    }
}

/// Stage names, for comparing with [`Seen::stages`].
pub fn stages(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until runner `name` has registered (its row is `ready`).
async fn wait_ready(db: &sea_orm::DatabaseConnection, name: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = rhone_schema::entity::runner::Entity::find()
            .filter(rhone_schema::entity::runner::Column::Name.eq(name))
            .one(db)
            .await?;
        if row.as_ref().is_some_and(|r| r.status == "ready") {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("runner {name} did not register: {row:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
