//! Runner reports fenced by generation (`rhone_schema::allocations`): a stale generation is
//! rejected and changes nothing, an illegal transition is rejected, the same report twice is
//! idempotent, and a newer generation is accepted.

use anyhow::{Context, Result};
use rhone_core::{StageError, stage::AllocationStage};
use rhone_schema::{
    SchemaError,
    allocations::{Desired, ReportOutcome, ReportSource, RunnerReport, apply_report, set_desired},
    entity::{allocation, audit_log, runner},
    fixtures, new_id, topology,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::support::on_both_backends;

on_both_backends!(
    a_new_allocation_is_planned_at_generation_one,
    reports_walk_the_lifecycle,
    stale_generation_is_rejected_audited_and_changes_nothing,
    illegal_transition_is_rejected,
    the_same_report_twice_is_idempotent,
    newer_generation_is_accepted,
    desired_change_bumps_the_generation_once,
    unknown_allocation_is_not_found,
    a_report_on_another_runners_allocation_is_refused_and_audited,
    an_address_outside_the_runners_subnet_is_refused,
);

const SUBNET: &str = "10.213.250.0/24";
const DIGEST: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";

/// An allocation with everything it refers to.
async fn new_allocation(db: &DatabaseConnection) -> Result<allocation::Model> {
    let t = fixtures::tenancy(db, "allocs", "preview").await?;
    fixtures::artifact(db, DIGEST).await?;
    let d = fixtures::deployment(db, &t, DIGEST, "validating").await?;
    Ok(fixtures::allocation(db, &d).await?)
}

fn report(row: &allocation::Model, generation: i64, stage: AllocationStage) -> RunnerReport {
    RunnerReport {
        allocation_id: row.id,
        generation,
        stage,
        address: (stage == AllocationStage::Ready).then(|| "http://10.213.250.2:4100".to_owned()),
        exit_status: None,
        message: None,
        last_log_lines: vec!["listening".into()],
    }
}

/// The fixtures' runner `r1`, with its subnet recorded.
async fn r1(db: &DatabaseConnection) -> Result<runner::Model, SchemaError> {
    let r1 = runner::Entity::find()
        .filter(runner::Column::Name.eq("r1"))
        .one(db)
        .await?
        .ok_or(SchemaError::NotFound {
            what: "runner",
            id: "r1".into(),
        })?;
    topology::record_runner_subnet(db, r1.id, SUBNET).await
}

/// Applies `report` as runner `r1` (where the fixtures place allocations) sends it.
async fn apply(
    db: &DatabaseConnection,
    report: &RunnerReport,
) -> Result<ReportOutcome, SchemaError> {
    apply_report(db, &ReportSource::of(&r1(db).await?), report).await
}

async fn row(db: &DatabaseConnection, id: uuid::Uuid) -> Result<allocation::Model> {
    allocation::Entity::find_by_id(id)
        .one(db)
        .await?
        .context("allocation row")
}

async fn walk(
    db: &DatabaseConnection,
    a: &allocation::Model,
    stages: &[AllocationStage],
) -> Result<()> {
    for &stage in stages {
        apply(db, &report(a, a.generation, stage)).await?;
    }
    Ok(())
}

async fn a_new_allocation_is_planned_at_generation_one(db: DatabaseConnection) -> Result<()> {
    let a = new_allocation(&db).await?;
    assert_eq!(
        (a.generation, a.desired.as_str(), a.stage.as_str()),
        (1, "run", "planned")
    );
    assert_eq!((a.address, a.last_report_at), (None, None));
    Ok(())
}

async fn reports_walk_the_lifecycle(db: DatabaseConnection) -> Result<()> {
    use AllocationStage::*;
    let a = new_allocation(&db).await?;
    walk(&db, &a, &[Pulling, Starting, Ready]).await?;
    let ready = row(&db, a.id).await?;
    assert_eq!(ready.stage, "ready");
    assert_eq!(ready.address.as_deref(), Some("http://10.213.250.2:4100"));
    assert!(ready.last_report_at.is_some());

    let mut stopped = report(&a, 1, Draining);
    apply(&db, &stopped).await?;
    stopped.stage = Stopped;
    stopped.exit_status = Some("signal 15 (SIGTERM)".into());
    let outcome = apply(&db, &stopped).await?;
    let ReportOutcome::Applied(done) = outcome else {
        panic!("stopped not applied: {outcome:?}");
    };
    assert_eq!(done.stage, "stopped");
    assert_eq!(done.address, None, "a stopped allocation has no address");
    assert_eq!(done.exit_status.as_deref(), Some("signal 15 (SIGTERM)"));
    Ok(())
}

async fn stale_generation_is_rejected_audited_and_changes_nothing(
    db: DatabaseConnection,
) -> Result<()> {
    use AllocationStage::*;
    let a = new_allocation(&db).await?;
    walk(&db, &a, &[Pulling, Starting, Ready]).await?;
    let bumped = set_desired(&db, a.id, Desired::Stop).await?;
    assert_eq!(bumped.generation, 2);
    let before = row(&db, a.id).await?;

    let stale = apply(&db, &report(&a, 1, Failed)).await;
    match stale {
        Err(SchemaError::Conflict { what }) => {
            assert_eq!(what, "stale report from generation 1, current is 2");
        }
        other => panic!("expected a stale-generation conflict, got {other:?}"),
    }
    assert_eq!(
        row(&db, a.id).await?,
        before,
        "a stale report changed the allocation"
    );
    // The refusal is in the audit log, once per refused report.
    let rejected = rhone_schema::entity::audit_log::Entity::find()
        .filter(rhone_schema::entity::audit_log::Column::TargetId.eq(a.id.to_string()))
        .all(&db)
        .await?;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].action, "allocation.report_rejected");
    assert_eq!(rejected[0].detail["report_generation"], 1);
    assert_eq!(rejected[0].detail["current_generation"], 2);
    Ok(())
}

async fn illegal_transition_is_rejected(db: DatabaseConnection) -> Result<()> {
    use AllocationStage::*;
    let a = new_allocation(&db).await?;
    let skip = apply(&db, &report(&a, 1, Ready)).await;
    assert!(
        matches!(
            skip,
            Err(SchemaError::IllegalTransition(StageError::Illegal(_)))
        ),
        "planned → ready must be refused: {skip:?}"
    );
    walk(&db, &a, &[Pulling, Failed]).await?;
    let after_terminal = apply(&db, &report(&a, 1, Starting)).await;
    assert!(
        matches!(after_terminal, Err(SchemaError::IllegalTransition(_))),
        "failed is final: {after_terminal:?}"
    );
    assert_eq!(row(&db, a.id).await?.stage, "failed");
    Ok(())
}

async fn the_same_report_twice_is_idempotent(db: DatabaseConnection) -> Result<()> {
    use AllocationStage::*;
    let a = new_allocation(&db).await?;
    walk(&db, &a, &[Pulling, Starting]).await?;
    let ready = report(&a, 1, Ready);
    let first = apply(&db, &ready).await?;
    assert!(matches!(first, ReportOutcome::Applied(_)), "{first:?}");
    let second = apply(&db, &ready).await?;
    assert_eq!(second, ReportOutcome::Unchanged(first.allocation().clone()));
    assert_eq!(&row(&db, a.id).await?, first.allocation());

    // Terminal stages too: re-reporting `stopped` is not an illegal stopped → stopped.
    walk(&db, &a, &[Draining, Stopped]).await?;
    let again = apply(&db, &report(&a, 1, Stopped)).await?;
    assert!(matches!(again, ReportOutcome::Unchanged(_)), "{again:?}");
    Ok(())
}

async fn newer_generation_is_accepted(db: DatabaseConnection) -> Result<()> {
    use AllocationStage::*;
    let a = new_allocation(&db).await?;
    walk(&db, &a, &[Pulling, Starting, Ready]).await?;
    // The runner already acts on generation 3 (say the row's write raced the report).
    let outcome = apply(&db, &report(&a, 3, Draining)).await?;
    let ReportOutcome::Applied(row3) = outcome else {
        panic!("newer generation refused: {outcome:?}");
    };
    assert_eq!((row3.generation, row3.stage.as_str()), (3, "draining"));
    // From now on generation 2 is stale.
    let stale = apply(&db, &report(&a, 2, Stopped)).await;
    assert!(
        matches!(stale, Err(SchemaError::Conflict { .. })),
        "{stale:?}"
    );
    // The same stage at a newer generation moves the generation only.
    let same = apply(&db, &report(&a, 4, Draining)).await?;
    assert!(matches!(same, ReportOutcome::Applied(_)), "{same:?}");
    let now = row(&db, a.id).await?;
    assert_eq!((now.generation, now.stage.as_str()), (4, "draining"));
    Ok(())
}

async fn desired_change_bumps_the_generation_once(db: DatabaseConnection) -> Result<()> {
    let a = new_allocation(&db).await?;
    let stop = set_desired(&db, a.id, Desired::Stop).await?;
    assert_eq!((stop.generation, stop.desired.as_str()), (2, "stop"));
    let again = set_desired(&db, a.id, Desired::Stop).await?;
    assert_eq!(again, stop, "setting the same desired state writes nothing");
    let run = set_desired(&db, a.id, Desired::Run).await?;
    assert_eq!((run.generation, run.desired.as_str()), (3, "run"));
    Ok(())
}

async fn unknown_allocation_is_not_found(db: DatabaseConnection) -> Result<()> {
    let a = new_allocation(&db).await?;
    let mut missing = report(&a, 1, AllocationStage::Pulling);
    missing.allocation_id = new_id();
    let outcome = apply(&db, &missing).await;
    assert!(
        matches!(
            outcome,
            Err(SchemaError::NotFound {
                what: "allocation",
                ..
            })
        ),
        "{outcome:?}"
    );
    let desired = set_desired(&db, missing.allocation_id, Desired::Stop).await;
    assert!(
        matches!(desired, Err(SchemaError::NotFound { .. })),
        "{desired:?}"
    );
    Ok(())
}

async fn a_report_on_another_runners_allocation_is_refused_and_audited(
    db: DatabaseConnection,
) -> Result<()> {
    let a = new_allocation(&db).await?;
    let other =
        topology::ensure_runner(&db, "local", "local-a", "r2", "http://127.0.0.1:2").await?;
    let other = topology::record_runner_subnet(&db, other.id, "10.213.251.0/24").await?;
    let mut ready = report(&a, 1, AllocationStage::Pulling);
    ready.address = None;
    let refused = apply_report(&db, &ReportSource::of(&other), &ready).await;
    assert!(
        matches!(&refused, Err(SchemaError::Forbidden { what }) if what.contains("not placed on it")),
        "{refused:?}"
    );
    assert_eq!(row(&db, a.id).await?.stage, "planned", "nothing changed");
    let audit = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("allocation.report_refused"))
        .filter(audit_log::Column::TargetId.eq(a.id.to_string()))
        .one(&db)
        .await?
        .context("an audit row")?;
    assert_eq!(audit.actor, "runner:r2");
    // Its own runner's report is taken.
    assert!(apply(&db, &ready).await.is_ok());
    Ok(())
}

async fn an_address_outside_the_runners_subnet_is_refused(db: DatabaseConnection) -> Result<()> {
    let a = new_allocation(&db).await?;
    walk(
        &db,
        &a,
        &[AllocationStage::Pulling, AllocationStage::Starting],
    )
    .await?;
    for address in [
        "http://127.0.0.1:5432",
        "http://10.213.251.2:8080",
        "http://10.213.250.1:8082",
        "http://10.213.250.255:80",
        "http://db.internal:5432",
    ] {
        let mut ready = report(&a, 1, AllocationStage::Ready);
        ready.address = Some(address.to_owned());
        let refused = apply(&db, &ready).await;
        assert!(
            matches!(&refused, Err(SchemaError::Forbidden { what }) if what.contains("outside its subnet")),
            "{address}: {refused:?}"
        );
    }
    assert_eq!(row(&db, a.id).await?.stage, "starting");
    let ready = report(&a, 1, AllocationStage::Ready);
    assert!(apply(&db, &ready).await.is_ok(), "inside the subnet");
    Ok(())
}
