//! The runner fleet: adding a runner (its credential kept as a hash), authenticating it,
//! registering it, and placement by capacity across runners and cells, on both backends.

use anyhow::{Context, Result};
use rhone_core::{RunnerStatus, fleet::Need};
use rhone_runner_protocol::fleet::{Capacity, Registration};
use rhone_schema::{
    SchemaError,
    entity::{region, runner},
    fixtures,
    fleet::{self, Placement, Refusal},
    new_id,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::support::on_both_backends;

on_both_backends!(
    a_credential_is_kept_hashed_and_revocable,
    placement_spreads_across_cells_and_counts_what_is_placed,
    no_room_names_every_runner,
    a_lost_runners_allocations_are_fenced_and_handed_back_to_drain,
    a_restarted_runners_missing_allocations_are_fenced,
);

async fn registered(
    db: &DatabaseConnection,
    name: &str,
    cell: &str,
    subnet: &str,
    memory_mb: i64,
) -> Result<runner::Model> {
    let (row, _) = fleet::add_runner(db, "eu", cell, name).await?;
    let registration = Registration {
        region: "eu".into(),
        cell: cell.into(),
        address: format!("http://{name}:8082"),
        subnet: subnet.into(),
        capacity: Capacity {
            memory_mb,
            cpu_millis: 4000,
            slots: 10,
        },
        agent_version: "test".into(),
        allocations: Vec::new(),
    };
    Ok(fleet::register_runner(db, &row, &registration)
        .await?
        .runner)
}

async fn a_credential_is_kept_hashed_and_revocable(db: DatabaseConnection) -> Result<()> {
    let (row, credential) = fleet::add_runner(&db, "eu", "eu-a", "h1").await?;
    assert_eq!(row.status, RunnerStatus::Registered.as_str());
    let stored = row.credential_sha256.clone().context("a hash")?;
    assert_ne!(stored, credential.expose(), "never stored in clear");
    assert!(matches!(
        fleet::add_runner(&db, "eu", "eu-a", "h1").await,
        Err(SchemaError::Conflict { .. })
    ));
    let ok = fleet::authenticate_runner(&db, "h1", credential.expose()).await?;
    assert_eq!(ok.map(|r| r.id), Ok(row.id));
    let other = fleet::new_credential();
    assert_eq!(
        fleet::authenticate_runner(&db, "h1", other.expose())
            .await?
            .err(),
        Some(Refusal::WrongCredential)
    );
    assert_eq!(
        fleet::authenticate_runner(&db, "nobody", credential.expose())
            .await?
            .err(),
        Some(Refusal::Unknown)
    );
    let (revoked, from) = fleet::revoke_runner(&db, "h1").await?;
    assert_eq!(
        (revoked.status.as_str(), from.as_str()),
        ("revoked", "registered")
    );
    assert_eq!(
        fleet::authenticate_runner(&db, "h1", credential.expose())
            .await?
            .err(),
        Some(Refusal::Revoked)
    );
    Ok(())
}

fn placement(
    env: Uuid,
    dep: Uuid,
    digest: &str,
    region: Option<Uuid>,
    memory_mb: i64,
) -> Placement {
    Placement {
        allocation_id: new_id(),
        deployment_id: dep,
        artifact_digest: digest.into(),
        environment_id: env,
        region_id: region,
        need: Need {
            memory_mb,
            cpu_millis: 1000,
        },
        avoid: Vec::new(),
    }
}

async fn placement_spreads_across_cells_and_counts_what_is_placed(
    db: DatabaseConnection,
) -> Result<()> {
    // a1 (cell a, the roomiest), a2 (cell a), b1 (cell b).
    registered(&db, "a1", "eu-a", "10.213.10.0/24", 8192).await?;
    registered(&db, "a2", "eu-a", "10.213.11.0/24", 4096).await?;
    registered(&db, "b1", "eu-b", "10.213.12.0/24", 2048).await?;
    let t = fixtures::tenancy(&db, "fleet", "production").await?;
    let digest = fixtures::digest(0xcc);
    fixtures::artifact(&db, &digest).await?;
    let d = fixtures::deployment(&db, &t, &digest, "preview_ready").await?;
    let eu = region::Entity::find()
        .filter(region::Column::Name.eq("eu"))
        .one(&db)
        .await?
        .context("region eu")?;
    let place = |memory| placement(t.environment.id, d.id, &digest, Some(eu.id), memory);
    let mut on = Vec::new();
    for _ in 0..3 {
        let (row, runner) = fleet::place_allocation(&db, &place(1024)).await?;
        assert_eq!(
            (row.memory_mb, row.cpu_millis, row.stage.as_str()),
            (1024, 1000, "planned")
        );
        on.push(runner.name);
    }
    // The roomiest first, then the other cell, then the runner of cell a without one.
    assert_eq!(on, ["a1", "b1", "a2"]);
    // Another environment starts afresh: the roomiest runner.
    let other = fixtures::tenancy(&db, "fleet2", "production").await?;
    let d2 = fixtures::deployment(&db, &other, &digest, "preview_ready").await?;
    let (_, runner) = fleet::place_allocation(
        &db,
        &placement(other.environment.id, d2.id, &digest, Some(eu.id), 1024),
    )
    .await?;
    assert_eq!(runner.name, "a1");
    // What is placed counts: b1 has 1024 of 2048 MiB left, so 1536 does not fit there.
    let (_, runner) = fleet::place_allocation(&db, &place(1536)).await?;
    assert_ne!(runner.name, "b1");
    let usage = fleet::runners_with_usage(&db).await?;
    let b1 = usage.iter().find(|(r, ..)| r.name == "b1").context("b1")?;
    assert_eq!((b1.3.memory_mb, b1.3.allocations), (1024, 1));
    Ok(())
}

async fn no_room_names_every_runner(db: DatabaseConnection) -> Result<()> {
    let lost = registered(&db, "gone", "eu-b", "10.213.21.0/24", 8192).await?;
    fleet::mark_lost(
        &db,
        lost.last_seen_at.context("seen")? + chrono::Duration::seconds(1),
        "test",
    )
    .await?;
    registered(&db, "small", "eu-a", "10.213.20.0/24", 256).await?;
    let t = fixtures::tenancy(&db, "full", "production").await?;
    let digest = fixtures::digest(0xdd);
    fixtures::artifact(&db, &digest).await?;
    let d = fixtures::deployment(&db, &t, &digest, "preview_ready").await?;
    let refused =
        fleet::place_allocation(&db, &placement(t.environment.id, d.id, &digest, None, 512)).await;
    let Err(SchemaError::NoCapacity(shortfall)) = refused else {
        anyhow::bail!("expected no capacity, got {refused:?}");
    };
    assert_eq!(
        shortfall.to_string(),
        "no runner has room for 512 MiB and 1000 millicores (of 2 runners: 1 short of memory, 1 not ready (lost or not registered yet))"
    );
    assert_eq!(shortfall.detail(), "gone is lost; small has 256 MiB free");
    Ok(())
}

async fn placed_on(
    db: &DatabaseConnection,
    runner: &str,
    subnet: &str,
) -> Result<(runner::Model, rhone_schema::entity::allocation::Model)> {
    let r = registered(db, runner, "eu-a", subnet, 8192).await?;
    let t = fixtures::tenancy(db, &format!("t-{runner}"), "production").await?;
    let digest = fixtures::digest(0xee);
    fixtures::artifact(db, &digest).await.ok();
    let d = fixtures::deployment(db, &t, &digest, "preview_ready").await?;
    let (row, on) =
        fleet::place_allocation(db, &placement(t.environment.id, d.id, &digest, None, 512)).await?;
    assert_eq!(on.id, r.id);
    Ok((r, row))
}

fn registration_of(runner: &runner::Model, running: Vec<Uuid>) -> Registration {
    Registration {
        region: "eu".into(),
        cell: "eu-a".into(),
        address: runner.address.clone(),
        subnet: runner.subnet.clone().unwrap_or_default(),
        capacity: Capacity {
            memory_mb: 8192,
            cpu_millis: 4000,
            slots: 10,
        },
        agent_version: "test".into(),
        allocations: running,
    }
}

async fn a_lost_runners_allocations_are_fenced_and_handed_back_to_drain(
    db: DatabaseConnection,
) -> Result<()> {
    let (r, row) = placed_on(&db, "h1", "10.213.30.0/24").await?;
    let lost = fleet::mark_lost(
        &db,
        r.last_seen_at.context("seen")? + chrono::Duration::seconds(1),
        "test",
    )
    .await?;
    assert_eq!(lost.len(), 1);
    let fenced = rhone_schema::entity::allocation::Entity::find_by_id(row.id)
        .one(&db)
        .await?
        .context("row")?;
    assert_eq!(
        (
            fenced.stage.as_str(),
            fenced.desired.as_str(),
            fenced.generation
        ),
        ("failed", "stop", row.generation + 1)
    );
    assert!(
        fenced
            .exit_status
            .as_deref()
            .is_some_and(|s| s.starts_with("runner h1 lost")),
        "{fenced:?}"
    );
    // The fenced row holds no capacity, and the runner's late report is stale.
    let usage = fleet::runners_with_usage(&db).await?;
    assert_eq!(
        usage
            .iter()
            .find(|(x, ..)| x.id == r.id)
            .map(|u| u.3.allocations),
        Some(0)
    );
    let late = rhone_schema::allocations::apply_report(
        &db,
        &rhone_schema::allocations::ReportSource::of(&r),
        &rhone_schema::allocations::RunnerReport {
            allocation_id: row.id,
            generation: row.generation,
            stage: rhone_core::stage::AllocationStage::Ready,
            address: Some("http://10.213.30.2:8080".into()),
            exit_status: None,
            message: None,
            last_log_lines: Vec::new(),
        },
    )
    .await;
    assert!(
        matches!(late, Err(SchemaError::Conflict { .. })),
        "{late:?}"
    );
    // It comes back still running the allocation: told to drain it.
    let back = fleet::register_runner(&db, &r, &registration_of(&r, vec![row.id])).await?;
    assert_eq!(back.runner.status, "ready");
    assert_eq!(back.drain, [row.id]);
    assert!(back.fenced.is_empty());
    Ok(())
}

async fn a_restarted_runners_missing_allocations_are_fenced(db: DatabaseConnection) -> Result<()> {
    let (r, row) = placed_on(&db, "h2", "10.213.31.0/24").await?;
    let again = fleet::register_runner(&db, &r, &registration_of(&r, Vec::new())).await?;
    assert_eq!(again.fenced, [row.id]);
    assert!(again.drain.is_empty());
    let now = rhone_schema::entity::allocation::Entity::find_by_id(row.id)
        .one(&db)
        .await?
        .context("row")?;
    assert_eq!(now.stage, "failed");
    assert!(
        now.exit_status
            .as_deref()
            .is_some_and(|s| s.contains("registered again without it")),
        "{now:?}"
    );
    // Registering again with what it runs fences nothing.
    let (_, kept) = placed_on_existing(&db, &r).await?;
    let same = fleet::register_runner(&db, &r, &registration_of(&r, vec![kept.id])).await?;
    assert!(same.fenced.is_empty() && same.drain.is_empty(), "{same:?}");
    Ok(())
}

async fn placed_on_existing(
    db: &DatabaseConnection,
    r: &runner::Model,
) -> Result<(runner::Model, rhone_schema::entity::allocation::Model)> {
    let t = fixtures::tenancy(db, "again", "production").await?;
    let digest = fixtures::digest(0xef);
    fixtures::artifact(db, &digest).await?;
    let d = fixtures::deployment(db, &t, &digest, "preview_ready").await?;
    let (row, on) =
        fleet::place_allocation(db, &placement(t.environment.id, d.id, &digest, None, 512)).await?;
    assert_eq!(on.id, r.id);
    Ok((on, row))
}
