//! Allocations on a real runner running small Python artifacts: started with ids derived
//! from the operation (a retry creates nothing new), ready allocations of the deployment
//! reused, an allocation that dies fails the health window with its last log lines, and a
//! drain that never touches the live owner's allocations and is safe to repeat.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rhone_activities::Heartbeat;
use rhone_core::{OperationId, OperationKind, stage::AllocationStage};
use rhone_schema::entity::{allocation, deployment};
use rhone_workflows::activities::{AllocationsInput, AllocationsReady, DrainInput, HealthInput};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use uuid::Uuid;

use crate::support::{OrFail, Runner, World, allocation_row, on_both_backends, refusal};

on_both_backends!(
    starts_are_idempotent_and_reuse_ready_allocations,
    an_allocation_that_dies_fails_the_health_window,
    a_start_that_fails_is_refused_and_stopped,
    a_drain_never_touches_the_live_owner,
);

const SERVE: &str = "exec python3 -m http.server \"$PORT\" --bind 0.0.0.0";

/// A healthy artifact whose index says `text`, and a production deployment of it.
async fn deployment(
    w: &World,
    runner: &Runner,
    dir: &tempfile::TempDir,
    text: &str,
    command: &str,
) -> Result<deployment::Model> {
    let digest = runner
        .artifact(w, &dir.path().join(text), &[("index.html", text)], command)
        .await?;
    w.production(&digest, None).await
}

fn start(
    op: OperationId,
    d: &deployment::Model,
    instances: u32,
    purpose: &str,
) -> AllocationsInput {
    AllocationsInput {
        operation_id: op,
        deployment_id: d.id,
        digest: d.artifact_digest.clone().unwrap_or_default(),
        instances,
        purpose: purpose.into(),
    }
}

async fn count(db: &DatabaseConnection, d: &deployment::Model) -> Result<u64> {
    Ok(allocation::Entity::find()
        .filter(allocation::Column::DeploymentId.eq(d.id))
        .count(db)
        .await?)
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

async fn starts_are_idempotent_and_reuse_ready_allocations(db: DatabaseConnection) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = World::new(db).await?;
    let runner = Runner::start(&w.db, dir.path()).await?;
    let d = deployment(&w, &runner, &dir, "one", SERVE).await?;

    let op = w.operation(OperationKind::Promotion).await?;
    let first = w
        .acts
        .allocations(&start(op, &d, 2, "route"), Heartbeat::none())
        .await
        .or_fail()?;
    assert_eq!((first.allocation_ids.len(), first.reused.len()), (2, 0));
    for id in &first.allocation_ids {
        let row = allocation_row(&w.db, *id).await?;
        assert_eq!((row.stage.as_str(), row.desired.as_str()), ("ready", "run"));
        assert!(row.address.is_some());
        assert_eq!(runner.status(*id).await?.stage, AllocationStage::Ready);
    }
    // A retried attempt finds the same allocations and creates none.
    let again = w
        .acts
        .allocations(&start(op, &d, 2, "route"), Heartbeat::none())
        .await
        .or_fail()?;
    assert_eq!(again, first);
    assert_eq!(count(&w.db, &d).await?, 2);

    // A rollback to the deployment reuses its ready allocations ...
    let rollback = w.operation(OperationKind::Rollback).await?;
    let back = w
        .acts
        .allocations(&start(rollback, &d, 2, "rollback"), Heartbeat::none())
        .await
        .or_fail()?;
    assert_eq!(
        sorted(back.reused.clone()),
        sorted(first.allocation_ids.clone())
    );
    assert_eq!(
        sorted(back.allocation_ids),
        sorted(first.allocation_ids.clone())
    );
    assert_eq!(count(&w.db, &d).await?, 2);
    // ... and starts only what is missing.
    let more = w.operation(OperationKind::Rollback).await?;
    let three: AllocationsReady = w
        .acts
        .allocations(&start(more, &d, 3, "rollback"), Heartbeat::none())
        .await
        .or_fail()?;
    assert_eq!((three.allocation_ids.len(), three.reused.len()), (3, 2));
    assert_eq!(count(&w.db, &d).await?, 3);

    let health = w
        .acts
        .health(
            &HealthInput {
                operation_id: more,
                allocation_ids: three.allocation_ids,
                window_ms: 800,
            },
            Heartbeat::none(),
        )
        .await
        .or_fail()?;
    assert!(health.healthy, "{health:?}");
    assert!(health.checks >= 3, "{health:?}");
    runner.stop().await
}

async fn an_allocation_that_dies_fails_the_health_window(db: DatabaseConnection) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = World::new(db).await?;
    let runner = Runner::start(&w.db, dir.path()).await?;
    let dying =
        "python3 -m http.server \"$PORT\" --bind 0.0.0.0 & sleep 3; echo boom; kill $!; exit 3";
    let d = deployment(&w, &runner, &dir, "dies", dying).await?;
    let op = w.operation(OperationKind::Promotion).await?;
    let started = w
        .acts
        .allocations(&start(op, &d, 1, "route"), Heartbeat::none())
        .await
        .or_fail()?;
    let id = started.allocation_ids[0];
    let watch = Instant::now();
    let health = w
        .acts
        .health(
            &HealthInput {
                operation_id: op,
                allocation_ids: vec![id],
                window_ms: 20_000,
            },
            Heartbeat::none(),
        )
        .await
        .or_fail()?;
    assert!(!health.healthy);
    assert!(watch.elapsed() < Duration::from_secs(15), "{health:?}");
    let reason = health.reason.unwrap_or_default();
    assert!(
        reason.starts_with(&format!("allocation {id} failed: ")),
        "{reason}"
    );
    assert!(
        reason.contains("last log lines:") && reason.contains("boom"),
        "{reason}"
    );
    runner.stop().await
}

async fn a_start_that_fails_is_refused_and_stopped(db: DatabaseConnection) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = World::new(db).await?;
    let runner = Runner::start(&w.db, dir.path()).await?;
    let d = deployment(&w, &runner, &dir, "broken", "echo broken; exit 3").await?;
    let op = w.operation(OperationKind::Promotion).await?;
    let message = refusal(
        w.acts
            .allocations(&start(op, &d, 1, "route"), Heartbeat::none())
            .await,
    );
    let rows = allocation::Entity::find()
        .filter(allocation::Column::DeploymentId.eq(d.id))
        .all(&w.db)
        .await?;
    let [row] = rows.as_slice() else {
        panic!("one allocation, got {rows:#?}")
    };
    assert!(
        message.starts_with(&format!("the route allocation {} failed: ", row.id)),
        "{message}"
    );
    assert!(message.contains("last log lines:\nbroken"), "{message}");
    assert_eq!(row.desired, "stop", "the failed start is not left to run");

    // A later attempt starts a new incarnation of the slot instead of the failed one.
    refusal(
        w.acts
            .allocations(&start(op, &d, 1, "route"), Heartbeat::none())
            .await,
    );
    assert_eq!(count(&w.db, &d).await?, 2);
    runner.stop().await
}

/// Waits until the runner says allocation `id` stopped.
async fn stopped(runner: &Runner, id: Uuid) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = runner.status(id).await?;
        if status.stage == AllocationStage::Stopped {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("allocation {id} is still {} on the runner", status.stage);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_drain_never_touches_the_live_owner(db: DatabaseConnection) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = World::new(db).await?;
    let runner = Runner::start(&w.db, dir.path()).await?;
    let a = deployment(&w, &runner, &dir, "a", SERVE).await?;
    let b = deployment(&w, &runner, &dir, "b", SERVE).await?;
    let drain = |d: &deployment::Model, ids: Option<Vec<Uuid>>| DrainInput {
        operation_id: OperationId(rhone_schema::new_id()),
        deployment_id: d.id,
        allocation_ids: ids,
    };

    let op = w.operation(OperationKind::Promotion).await?;
    let a_ids = w
        .acts
        .allocations(&start(op, &a, 2, "route"), Heartbeat::none())
        .await
        .or_fail()?
        .allocation_ids;
    w.acts.route(&w.move_input(op, &a, 0)).await.or_fail()?;
    // `a` is live: kept, whether asked for by deployment or by id.
    for ids in [None, Some(a_ids.clone())] {
        let drained = w
            .acts
            .drain(&drain(&a, ids), Heartbeat::none())
            .await
            .or_fail()?;
        assert_eq!(drained.allocation_ids, Vec::<Uuid>::new());
        assert_eq!(sorted(drained.kept), sorted(a_ids.clone()));
    }
    for id in &a_ids {
        assert_eq!(runner.status(*id).await?.stage, AllocationStage::Ready);
        assert_eq!(allocation_row(&w.db, *id).await?.desired, "run");
    }

    // `b` takes the route over; now `a` drains, and draining again changes nothing.
    let op = w.operation(OperationKind::Promotion).await?;
    let b_ids = w
        .acts
        .allocations(&start(op, &b, 1, "route"), Heartbeat::none())
        .await
        .or_fail()?
        .allocation_ids;
    w.acts.route(&w.move_input(op, &b, 1)).await.or_fail()?;
    for _attempt in 0..2 {
        let drained = w
            .acts
            .drain(&drain(&a, None), Heartbeat::none())
            .await
            .or_fail()?;
        assert_eq!(sorted(drained.allocation_ids), sorted(a_ids.clone()));
        assert_eq!(drained.kept, Vec::<Uuid>::new());
    }
    for id in &a_ids {
        stopped(&runner, *id).await?;
        let row = allocation_row(&w.db, *id).await?;
        assert_eq!((row.desired.as_str(), row.generation), ("stop", 2));
    }
    assert_eq!(runner.status(b_ids[0]).await?.stage, AllocationStage::Ready);
    runner.stop().await
}
