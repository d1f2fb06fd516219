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
    };
    Ok(fleet::register_runner(db, &row, &registration).await?)
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
        "no runner has room for 512 MiB and 1000 millicores: gone is lost; small has 256 MiB free"
    );
    Ok(())
}
