//! Which route owners are due a Repair, on both backends: one short of allocations because
//! some ended, and none that scales to zero, whose moving operation is under way, whose last
//! Repair at this epoch was aborted, or whose last Repair ended inside its backoff.

use anyhow::{Context, Result};
use chrono::Utc;
use rhone_core::repair_workflow_id;
use rhone_schema::{
    entity::{allocation, environment, operation, route_owner},
    fixtures, new_id,
    ops::{self, NewOperation},
    repair::repairs_needed,
    routes::{self, OwnerWrite},
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait};
use uuid::Uuid;

use crate::support::on_both_backends;

on_both_backends!(repairs_are_due_only_where_allocations_were_lost_and_no_one_else_acts);

async fn set_stage(
    db: &DatabaseConnection,
    id: Uuid,
    stage: &str,
    why: Option<&str>,
) -> Result<()> {
    let row = allocation::Entity::find_by_id(id)
        .one(db)
        .await?
        .context("row")?;
    let mut row: allocation::ActiveModel = row.into();
    row.stage = Set(stage.into());
    row.exit_status = Set(why.map(str::to_owned));
    row.update(db).await?;
    Ok(())
}

/// An operation of `kind` in `status`, last updated `ago` before now.
async fn operation(
    db: &DatabaseConnection,
    kind: &str,
    target: &str,
    workflow_id: &str,
    status: &str,
    ago: chrono::Duration,
) -> Result<Uuid> {
    let id = new_id();
    ops::create_operation(
        db,
        NewOperation {
            id,
            workspace_id: None,
            kind,
            actor: "system",
            target_type: "route",
            target_id: target,
            initial_stage: rhone_core::OperationKind::Repair.initial_stage(),
            status: "running",
            workflow_id,
        },
    )
    .await?;
    let row = operation::Entity::find_by_id(id)
        .one(db)
        .await?
        .context("op")?;
    let mut row: operation::ActiveModel = row.into();
    row.status = Set(status.into());
    row.updated_at = Set(Utc::now() - ago);
    row.update(db).await?;
    Ok(id)
}

async fn repairs_are_due_only_where_allocations_were_lost_and_no_one_else_acts(
    db: DatabaseConnection,
) -> Result<()> {
    let t = fixtures::tenancy(&db, "acme", "production").await?;
    fixtures::artifact(&db, "sha256:aa").await?;
    let d = fixtures::deployment(&db, &t, "sha256:aa", "promoted").await?;
    let a = fixtures::allocation(&db, &d).await?;
    let b = fixtures::allocation(&db, &d).await?;
    for id in [a.id, b.id] {
        set_stage(&db, id, "ready", None).await?;
    }
    let key = "web.shop.acme.rhone.localhost";
    let owner = routes::write_owner(
        &db,
        OwnerWrite {
            instances: 2,
            route_key: key.into(),
            environment_id: t.environment.id,
            deployment_id: d.id,
            artifact_digest: "sha256:aa".into(),
            region_id: a.region_id,
            cell_id: a.cell_id,
            operation_id: None,
            expected_epoch: None,
        },
    )
    .await?;
    assert_eq!(owner.instances, 2);
    assert!(
        repairs_needed(&db, Utc::now()).await?.is_empty(),
        "both serve"
    );

    // Fenced: its runner was lost (desired `stop` at the next generation).
    set_stage(&db, a.id, "failed", Some("runner r1 lost: no heartbeat")).await?;
    rhone_schema::allocations::set_desired(&db, a.id, rhone_schema::allocations::Desired::Stop)
        .await?;
    let needs = repairs_needed(&db, Utc::now()).await?;
    assert_eq!(needs.len(), 1, "{needs:?}");
    let need = &needs[0];
    assert_eq!(
        (
            need.route_key.as_str(),
            need.epoch,
            need.instances,
            need.serving
        ),
        (key, owner.epoch, 2, 1)
    );
    assert_eq!(need.lost.len(), 1);
    assert_eq!(need.lost[0].allocation_id, a.id);
    assert_eq!(need.lost[0].runner.as_deref(), Some("r1"));
    assert_eq!(
        need.lost[0].reason.as_deref(),
        Some("runner r1 lost: no heartbeat")
    );

    // The promotion that moved the route is still under way: it decides.
    let promoting = operation(
        &db,
        "promotion",
        "x",
        "promotion-x",
        "running",
        chrono::Duration::zero(),
    )
    .await?;
    let mut row: route_owner::ActiveModel = owner.clone().into();
    row.operation_id = Set(Some(promoting));
    row.update(&db).await?;
    assert!(repairs_needed(&db, Utc::now()).await?.is_empty());
    let mut op: operation::ActiveModel = operation::Entity::find_by_id(promoting)
        .one(&db)
        .await?
        .context("op")?
        .into();
    op.status = Set("succeeded".into());
    op.update(&db).await?;
    assert_eq!(repairs_needed(&db, Utc::now()).await?.len(), 1);

    // A route that scales to zero wakes on its next request instead.
    let mut env: environment::ActiveModel = t.environment.clone().into();
    env.scale_to_zero = Set(true);
    env.update(&db).await?;
    assert!(repairs_needed(&db, Utc::now()).await?.is_empty());
    let mut env: environment::ActiveModel = t.environment.clone().into();
    env.scale_to_zero = Set(false);
    env.update(&db).await?;

    let this_epoch = repair_workflow_id(key, owner.epoch);
    // A Repair under way: no second one.
    let running = operation(
        &db,
        "repair",
        key,
        &format!("{this_epoch}/run-1"),
        "running",
        chrono::Duration::zero(),
    )
    .await?;
    assert!(repairs_needed(&db, Utc::now()).await?.is_empty());
    // On-call aborted it: not again at this epoch.
    let mut op: operation::ActiveModel = operation::Entity::find_by_id(running)
        .one(&db)
        .await?
        .context("op")?
        .into();
    op.status = Set("aborted".into());
    op.updated_at = Set(Utc::now() - chrono::Duration::seconds(10));
    op.update(&db).await?;
    assert!(repairs_needed(&db, Utc::now()).await?.is_empty());

    // A later Repair (on-call retried by hand) failed half a second ago: two ended within
    // the window, so the next waits 2 s.
    operation(
        &db,
        "repair",
        key,
        &format!("{this_epoch}/run-2"),
        "failed",
        chrono::Duration::milliseconds(500),
    )
    .await?;
    // A fenced loss is repaired at once: hosts failing often is no reason to wait.
    let now = Utc::now();
    assert_eq!(repairs_needed(&db, now).await?.len(), 1, "a fenced loss");
    // A crash (it ended while still meant to run) waits out the backoff.
    rhone_schema::allocations::set_desired(&db, a.id, rhone_schema::allocations::Desired::Run)
        .await?;
    set_stage(&db, a.id, "failed", Some("exited with status 3")).await?;
    assert!(
        repairs_needed(&db, now).await?.is_empty(),
        "inside the backoff"
    );
    let later = now + chrono::Duration::milliseconds(1600);
    assert_eq!(
        repairs_needed(&db, later).await?.len(),
        1,
        "after the backoff"
    );
    Ok(())
}
