//! The Wake workflow and scale to zero end to end on a real Temporal dev server, a real
//! worker, real builds of `examples/counter` and an in-test runner: a promoted production
//! route that scales to zero is watched, sleeps when idle (its allocation drained) and wakes
//! by update-with-start as the edge calls it; concurrent wakes coalesce into one run, one
//! operation and one allocation; a readiness timeout fails with the app's last log lines; a
//! route that moves on fails the wake with "route epoch superseded".

#[allow(dead_code)]
mod deploy_support;
#[allow(dead_code)]
#[path = "deploy_workflow/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "promotion_workflow/prod.rs"]
mod prod;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use deploy_support::{Repo, commit, replace_in};
use harness::stages;
use prod::Prod;
use rhone_core::{StateMachine, wake_workflow_id};
use rhone_runner::AllocationStatus;
use rhone_schema::{
    entity::{allocation, audit_log, environment, operation, route_owner, runner},
    routes::{self, OwnerWrite},
};
use rhone_workflows::{WakeInput, WakeRequest, WakeStatus, WakeTrigger, WakeWorkflow};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};
use temporalio_client::{
    WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowUpdateWithStartOptions,
    errors::{WorkflowUpdateError, WorkflowUpdateWithStartError},
    tonic::Code,
};
use uuid::Uuid;

/// The production environment scales to zero and sleeps after this long without requests.
const SLEEP_AFTER_MS: i64 = 1500;

struct Wake {
    p: Prod,
    http: reqwest::Client,
}

impl Wake {
    /// A production environment that scales to zero after [`SLEEP_AFTER_MS`], checked every
    /// 250 ms.
    async fn start(test: &str) -> Result<Wake> {
        let p = Prod::start(test, false, |c| {
            c.wake.idle_check = Duration::from_millis(250);
        })
        .await?;
        let mut env: environment::ActiveModel = p.env.clone().into();
        env.scale_to_zero = Set(true);
        env.sleep_after_ms = Set(SLEEP_AFTER_MS);
        env.update(&p.h.fx.db).await?;
        Ok(Wake {
            p,
            http: reqwest::Client::new(),
        })
    }

    /// Previews and promotes `repo`; the production route key, its epoch and the digest.
    async fn promoted(&self, repo: &Repo) -> Result<(String, i64, String)> {
        let (d, digest) = self.p.preview(repo).await?;
        let promoted = self.p.promote(d, 1).await?;
        let seen = self.p.ended(promoted).await?;
        assert_eq!(seen.op.status, "succeeded", "{:?}", seen.op.error);
        // A promotion of a scale-to-zero environment starts the watch as a child.
        self.p
            .h
            .record_operation_history(
                rhone_core::OperationKind::Promotion,
                promoted,
                "promotion_starts_wake_watch",
            )
            .await?;
        let owner = self.p.owner().await?.context("an owner")?;
        Ok((owner.route_key, owner.epoch, digest))
    }

    /// The wake operations of `key`, oldest first.
    async fn operations(&self, key: &str) -> Result<Vec<operation::Model>> {
        Ok(operation::Entity::find()
            .filter(operation::Column::Kind.eq("wake"))
            .filter(operation::Column::TargetId.eq(key))
            .order_by_asc(operation::Column::CreatedAt)
            .all(&self.p.h.fx.db)
            .await?)
    }

    /// Waits until operation `id` is in `stage` (failing early when it ended elsewhere).
    async fn reaches(&self, id: Uuid, stage: &str) -> Result<(operation::Model, Vec<String>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let op = operation::Entity::find_by_id(id)
                .one(&self.p.h.fx.db)
                .await?
                .context("operation row")?;
            let recorded: Vec<String> = rhone_schema::ops::stages(&self.p.h.fx.db, id)
                .await?
                .into_iter()
                .map(|s| s.stage)
                .collect();
            if op.current_stage == stage {
                return Ok((op, recorded));
            }
            let ended = ["failed", "aborted"].contains(&op.status.as_str())
                || op.current_stage == "sleeping";
            if ended || tokio::time::Instant::now() > deadline {
                bail!(
                    "wake {id} is {} at {} ({recorded:?}, {:?}), not at {stage}",
                    op.status,
                    op.current_stage,
                    op.error
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the `n`-th wake operation of `key` (1-based) to exist.
    async fn nth(&self, key: &str, n: usize) -> Result<operation::Model> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ops = self.operations(key).await?;
            if ops.len() >= n {
                return Ok(ops[n - 1].clone());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} wake operation(s) of {key}, expected {n}", ops.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until operation `id` is failed (or aborted).
    async fn ended(&self, id: Uuid) -> Result<operation::Model> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let row = operation::Entity::find_by_id(id)
                .one(&self.p.h.fx.db)
                .await?
                .context("operation row")?;
            if ["failed", "aborted"].contains(&row.status.as_str()) {
                return Ok(row);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("wake {id} is {} at {}", row.status, row.current_stage);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn env(&self) -> Result<environment::Model> {
        environment::Entity::find_by_id(self.p.env.id)
            .one(&self.p.h.fx.db)
            .await?
            .context("environment row")
    }

    /// `attach` by update-with-start, as the edge calls it: a `sleeping` answer comes from
    /// the run that has just put the route to sleep and is ending (its workflow id is the
    /// same), so the edge asks again, and so does this; likewise when that run ends under
    /// the call and Temporal aborts the update (UNAVAILABLE).
    async fn wake(&self, key: &str, epoch: i64, request: WakeRequest) -> Result<WakeStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let again = tokio::time::Instant::now() < deadline;
            match self.wake_once(key, epoch, request.clone()).await {
                Ok(status) if status.stage == "sleeping" && again => {}
                Err(e) if again && aborted(&e) => {}
                answer => return Ok(answer?),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wake_once(
        &self,
        key: &str,
        epoch: i64,
        request: WakeRequest,
    ) -> Result<WakeStatus, WorkflowUpdateWithStartError> {
        let options = WorkflowUpdateWithStartOptions::new(
            self.p.h.queue.clone(),
            wake_workflow_id(key, epoch),
            WorkflowIdConflictPolicy::UseExisting,
        )
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .build();
        let input = WakeInput {
            route_key: key.to_owned(),
            epoch,
            trigger: WakeTrigger::Request(request.clone()),
        };
        self.p
            .h
            .client
            .execute_update_with_start_workflow(
                WakeWorkflow::run,
                input,
                WakeWorkflow::attach,
                request,
                options,
            )
            .await
    }

    /// What the runner says about allocation `id`.
    async fn on_runner(&self, id: Uuid) -> Result<AllocationStatus> {
        let row = allocation::Entity::find_by_id(id)
            .one(&self.p.h.fx.db)
            .await?
            .context("allocation row")?;
        let runner = runner::Entity::find_by_id(row.runner_id.context("placed")?)
            .one(&self.p.h.fx.db)
            .await?
            .context("runner row")?;
        Ok(self
            .http
            .get(format!("{}/v1/allocations/{id}", runner.address))
            .bearer_auth(
                rhone_testkit::runner_key()
                    .call_token(&runner.name)
                    .expose(),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until the runner has drained allocation `id`.
    async fn stopped(&self, id: Uuid) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.on_runner(id).await?;
            if status.stage.as_str() == "stopped" {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("allocation {id} is {} on its runner", status.stage);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves the route to the next epoch, pointing at what it points at already (as a
    /// concurrent promotion of the same deployment would).
    async fn move_route(&self, key: &str) -> Result<i64> {
        let owner = route_owner::Entity::find_by_id(key.to_owned())
            .one(&self.p.h.fx.db)
            .await?
            .context("an owner")?;
        let moved = routes::write_owner(
            &self.p.h.fx.db,
            OwnerWrite {
                instances: 1,
                route_key: key.to_owned(),
                environment_id: owner.environment_id,
                deployment_id: owner.deployment_id,
                artifact_digest: owner.artifact_digest,
                region_id: owner.region_id,
                cell_id: owner.cell_id,
                operation_id: None,
                expected_epoch: Some(owner.epoch),
            },
        )
        .await?;
        Ok(moved.epoch)
    }

    /// Waits for the first wake operation of `key`: the watch the promotion started; it goes
    /// hot, then sleeps. Its allocation ids, drained.
    async fn watched_to_sleep(&self, key: &str) -> Result<(operation::Model, Vec<Uuid>)> {
        let watch = self.nth(key, 1).await?;
        let (_, recorded) = self.reaches(watch.id, "sleeping").await?;
        assert_eq!(recorded, stages(&["cold", "hot", "sleeping"]));
        let records = rhone_schema::ops::stages(&self.p.h.fx.db, watch.id).await?;
        let drained: Vec<Uuid> = serde_json::from_value(records[2].evidence["drained"].clone())?;
        Ok((watch, drained))
    }

    async fn wake_requests(&self, operation_id: Uuid) -> Result<Vec<audit_log::Model>> {
        Ok(audit_log::Entity::find()
            .filter(audit_log::Column::OperationId.eq(operation_id))
            .filter(audit_log::Column::Action.eq("wake.request"))
            .all(&self.p.h.fx.db)
            .await?)
    }

    /// With `RHONE_RECORD_HISTORIES=DIR`, saves the latest run of the wake of (key, epoch) as
    /// `DIR/NAME.json` once it has completed.
    async fn record(&self, key: &str, epoch: i64, name: &str) -> Result<()> {
        let Ok(dir) = std::env::var("RHONE_RECORD_HISTORIES") else {
            return Ok(());
        };
        let handle = self
            .p
            .h
            .client
            .get_workflow_handle::<temporalio_common::UntypedWorkflow>(wake_workflow_id(
                key, epoch,
            ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let json = handle.fetch_history(Default::default()).to_json().await?;
        std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.json")),
            json,
        )?;
        Ok(())
    }
}

fn request(edge: &str, path: &str) -> WakeRequest {
    WakeRequest {
        class: "read".into(),
        method: "GET".into(),
        path: path.into(),
        edge_id: edge.into(),
        decision: "hold within the wake budget, then route".into(),
        detail: serde_json::json!({ "budget_ms": 10_000 }),
    }
}

/// A version whose `/healthz` fails (and says so on stderr) while `marker` exists, with
/// a readiness timeout of `readiness_secs`.
fn healthz_failing_with(repo: &Repo, marker: &str, readiness_secs: u32) -> Result<Repo> {
    replace_in(
        &repo.path.join("server.py"),
        "        if url.path == \"/healthz\":\n",
        &format!(
            "        if url.path == \"/healthz\":\n            if os.path.exists({marker:?}):\n                sys.stderr.write(\"healthz: failing on purpose, marker present\\n\")\n                sys.stderr.flush()\n                return self.respond(503, \"not ready\\n\")\n",
            marker = marker
        ),
    )?;
    replace_in(
        &repo.path.join("rhone.toml"),
        "readiness_timeout_secs = 20",
        &format!("readiness_timeout_secs = {readiness_secs}"),
    )?;
    commit(&repo.path, "healthz fails while the marker exists")
}

/// (a) promote → the watch goes hot → idle, it sleeps (allocation told to stop and drained,
/// `wake_state` sleeping) → a request wakes it by update-with-start: `wake_requested →
/// starting → readiness_wait → hot` with a new ready allocation, the request recorded as
/// evidence.
#[tokio::test]
async fn promoted_route_sleeps_when_idle_and_wakes_on_request() -> Result<()> {
    let w = Wake::start("wake_sleep").await?;
    let repo = w.p.h.repo("repo", |_| Ok(()))?;
    let (key, epoch, digest) = w.promoted(&repo).await?;

    let (watch, drained) = w.watched_to_sleep(&key).await?;
    assert_eq!(watch.actor, "system");
    assert_eq!(
        watch.workflow_id.split_once('/').map(|p| p.0),
        Some(wake_workflow_id(&key, epoch).as_str())
    );
    assert_eq!(
        watch.workflow_id.split_once('/').map(|p| p.1),
        Some(watch.id.to_string().as_str()),
        "the operation id is the run id"
    );
    assert_eq!(drained.len(), 1, "the promotion's one allocation");
    let row = allocation::Entity::find_by_id(drained[0])
        .one(&w.p.h.fx.db)
        .await?
        .context("allocation")?;
    assert_eq!(row.desired, "stop");
    w.stopped(drained[0]).await?;
    assert_eq!(w.env().await?.wake_state, "sleeping");
    w.record(&key, epoch, "wake_watch_sleeps").await?;

    let status = w.wake(&key, epoch, request("edge-a", "/dashboard")).await?;
    assert_ne!(
        status.operation_id, watch.id,
        "a new awake period is a new operation"
    );
    let (op, recorded) = w.reaches(status.operation_id, "hot").await?;
    assert_eq!(op.status, "succeeded");
    assert_eq!(op.actor, "edge:edge-a");
    assert_eq!(
        recorded,
        stages(&[
            "cold",
            "wake_requested",
            "starting",
            "readiness_wait",
            "hot"
        ])
    );
    let records = rhone_schema::ops::stages(&w.p.h.fx.db, op.id).await?;
    assert_eq!(records[1].evidence["digest"], digest.as_str());
    assert_eq!(records[1].evidence["trigger"]["path"], "/dashboard");
    assert!(records[4].evidence["since_request_ms"].as_u64().is_some());
    let woke: Vec<Uuid> = serde_json::from_value(records[4].evidence["allocation_ids"].clone())?;
    assert_eq!(woke.len(), 1);
    assert!(!drained.contains(&woke[0]));
    let row = allocation::Entity::find_by_id(woke[0])
        .one(&w.p.h.fx.db)
        .await?
        .context("allocation")?;
    assert_eq!((row.stage.as_str(), row.desired.as_str()), ("ready", "run"));
    assert_eq!(row.artifact_digest, digest, "the owner's exact artifact");
    assert_eq!(w.on_runner(woke[0]).await?.stage.as_str(), "ready");
    let evidence = w.wake_requests(op.id).await?;
    assert_eq!(evidence.len(), 1, "{evidence:?}");
    assert_eq!(evidence[0].actor, "edge:edge-a");
    assert_eq!(evidence[0].target_id, key);
    assert_eq!(evidence[0].detail["path"], "/dashboard");

    // Idle again, it sleeps again.
    w.reaches(op.id, "sleeping").await.ok();
    let (op, recorded) = (
        operation::Entity::find_by_id(op.id)
            .one(&w.p.h.fx.db)
            .await?
            .context("op")?,
        rhone_schema::ops::stages(&w.p.h.fx.db, op.id).await?,
    );
    assert_eq!(op.current_stage, "sleeping", "{recorded:?}");
    w.stopped(woke[0]).await?;
    w.record(&key, epoch, "wake_request_hot_sleeps").await?;
    w.p.stop().await
}

/// Whether the run ended under an update-with-start, as the edge's own check reads it.
fn aborted(e: &WorkflowUpdateWithStartError) -> bool {
    match e {
        WorkflowUpdateWithStartError::Update(WorkflowUpdateError::Rpc(s))
        | WorkflowUpdateWithStartError::Rpc(s) => s.code() == Code::Unavailable,
        _ => false,
    }
}

/// (b) Twenty edges find the route asleep at once: one run, one operation, one allocation,
/// and each request is evidence on that operation.
#[tokio::test]
async fn twenty_concurrent_wakes_coalesce() -> Result<()> {
    let w = Wake::start("wake_race").await?;
    let repo = w.p.h.repo("repo", |_| Ok(()))?;
    let (key, epoch, _) = w.promoted(&repo).await?;
    let (_, drained) = w.watched_to_sleep(&key).await?;
    let before: Vec<Uuid> = allocation::Entity::find()
        .all(&w.p.h.fx.db)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();

    let wakes = (0..20).map(|i| {
        let w = &w;
        let key = key.clone();
        async move {
            w.wake(
                &key,
                epoch,
                request(&format!("edge-{i}"), &format!("/page/{i}")),
            )
            .await
        }
    });
    let answers = futures::future::join_all(wakes).await;
    let mut operations: Vec<Uuid> = Vec::new();
    for answer in answers {
        operations.push(answer?.operation_id);
    }
    operations.dedup();
    assert_eq!(
        operations.len(),
        1,
        "one run answers every request: {operations:?}"
    );
    let op = operations[0];
    assert_eq!(
        w.operations(&key).await?.len(),
        2,
        "the watch and this wake"
    );
    let (_, recorded) = w.reaches(op, "hot").await?;
    assert_eq!(
        recorded,
        stages(&[
            "cold",
            "wake_requested",
            "starting",
            "readiness_wait",
            "hot"
        ])
    );
    let after = allocation::Entity::find().all(&w.p.h.fx.db).await?;
    let new: Vec<&allocation::Model> = after.iter().filter(|a| !before.contains(&a.id)).collect();
    assert_eq!(new.len(), 1, "one allocation: {new:?}");
    assert_eq!(
        (new[0].stage.as_str(), new[0].desired.as_str()),
        ("ready", "run")
    );
    assert!(
        drained
            .iter()
            .all(|d| after.iter().any(|a| a.id == *d && a.desired == "stop"))
    );
    let evidence = w.wake_requests(op).await?;
    assert_eq!(evidence.len(), 20, "every request is evidence once");
    let mut edges: Vec<String> = evidence.iter().map(|e| e.actor.clone()).collect();
    edges.sort();
    edges.dedup();
    assert_eq!(edges.len(), 20);
    w.p.stop().await
}

/// (c) The woken version never passes `/healthz`: the wake fails at its readiness timeout
/// with the app's last log lines, and its allocation is told to stop.
#[tokio::test]
async fn readiness_timeout_fails_with_the_log_lines() -> Result<()> {
    let w = Wake::start("wake_timeout").await?;
    let (marker, seen) = w.p.h.marker("healthz-fails");
    let repo = w.p.h.repo("repo", |_| Ok(()))?;
    let repo = healthz_failing_with(&repo, &seen, 2)?;
    let (key, epoch, _) = w.promoted(&repo).await?;
    w.watched_to_sleep(&key).await?;

    std::fs::write(&marker, "")?;
    let status = w.wake(&key, epoch, request("edge-a", "/")).await?;
    let op = w.ended(status.operation_id).await?;
    assert_eq!(op.status, "failed");
    let error = op.error.clone().unwrap_or_default();
    assert!(error.contains("did not become ready"), "{error}");
    assert!(error.contains("healthz: failing on purpose"), "{error}");
    let recorded = rhone_schema::ops::stages(&w.p.h.fx.db, op.id).await?;
    let names: Vec<&str> = recorded.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(
        names,
        [
            "cold",
            "wake_requested",
            "starting",
            "readiness_wait",
            "failed"
        ]
    );
    let last = recorded.last().context("a record")?;
    let lines = last.evidence["log_lines"].as_array().context("log lines")?;
    assert!(!lines.is_empty() && lines.len() <= 20, "{lines:?}");
    let started: Uuid = serde_json::from_value(recorded[3].evidence["allocation_id"].clone())?;
    let row = allocation::Entity::find_by_id(started)
        .one(&w.p.h.fx.db)
        .await?
        .context("allocation")?;
    assert_eq!(row.desired, "stop");
    assert_eq!(w.env().await?.wake_state, "failed");
    w.record(&key, epoch, "wake_readiness_timeout").await?;
    w.p.stop().await
}

/// (d) A wake for an epoch the route has left fails "route epoch superseded" when it opens,
/// and a wake whose route moves while it waits for readiness fails the same way and drains
/// what it started.
#[tokio::test]
async fn a_moved_route_supersedes_the_wake() -> Result<()> {
    let w = Wake::start("wake_epoch").await?;
    let (marker, seen) = w.p.h.marker("healthz-fails");
    let repo = w.p.h.repo("repo", |_| Ok(()))?;
    let repo = healthz_failing_with(&repo, &seen, 60)?;
    let (key, epoch, _) = w.promoted(&repo).await?;
    w.watched_to_sleep(&key).await?;

    // The route moves before the wake opens.
    let moved = w.move_route(&key).await?;
    assert_eq!(moved, epoch + 1);
    let status = w.wake(&key, epoch, request("edge-a", "/")).await?;
    assert_eq!(status.stage, "failed", "{status:?}");
    let error = status.error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "route epoch superseded: this wake was for epoch {epoch} of {key}, the owner is at epoch {moved}"
        )),
        "{error}"
    );
    let op = w.ended(status.operation_id).await?;
    assert_eq!(
        (op.status.as_str(), op.current_stage.as_str()),
        ("failed", "failed")
    );
    let recorded: Vec<String> = rhone_schema::ops::stages(&w.p.h.fx.db, op.id)
        .await?
        .into_iter()
        .map(|s| s.stage)
        .collect();
    assert_eq!(recorded, stages(&["cold", "failed"]));
    assert_eq!(
        w.env().await?.wake_state,
        "sleeping",
        "a superseded wake writes no state"
    );
    w.record(&key, epoch, "wake_superseded_at_open").await?;

    // The route moves while the wake waits for readiness.
    std::fs::write(&marker, "")?;
    let status = w.wake(&key, moved, request("edge-a", "/")).await?;
    let (_, recorded) = w.reaches(status.operation_id, "readiness_wait").await?;
    assert_eq!(
        recorded,
        stages(&["cold", "wake_requested", "starting", "readiness_wait"])
    );
    let records = rhone_schema::ops::stages(&w.p.h.fx.db, status.operation_id).await?;
    let started: Uuid = serde_json::from_value(records[3].evidence["allocation_id"].clone())?;
    let again = w.move_route(&key).await?;
    let op = w.ended(status.operation_id).await?;
    assert_eq!(op.current_stage, "failed");
    let error = op.error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "route epoch superseded: this wake was for epoch {moved} of {key}, the owner is at epoch {again}"
        )),
        "{error}"
    );
    let row = allocation::Entity::find_by_id(started)
        .one(&w.p.h.fx.db)
        .await?
        .context("allocation")?;
    assert_eq!(row.desired, "stop", "what the wake started is drained");
    w.stopped(started).await?;
    w.record(&key, moved, "wake_superseded_in_readiness_wait")
        .await?;
    w.p.stop().await
}
