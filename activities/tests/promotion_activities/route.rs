//! The RouteOwner compare-and-swap (a retry finds its own move; a lost race writes one
//! audit row and is refused, however often it is retried) and the wait for every live
//! edge to acknowledge a change (a lagging edge named at the deadline, which a retry does
//! not extend).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use rhone_core::OperationKind;
use rhone_schema::{
    entity::{audit_log, deployment, edge_ack, route_change},
    fixtures,
};
use rhone_workflows::activities::{AwaitEdgesInput, RouteMoved};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter,
};

use crate::support::{Made, OrFail, World, on_both_backends, refusal};
use rhone_activities::Heartbeat;

on_both_backends!(
    a_retried_move_returns_the_same_change,
    a_lost_compare_and_swap_is_audited_once_and_refused,
    the_deadline_names_the_lagging_edge_and_survives_retries,
    acknowledgements_end_the_wait,
);

async fn stage(db: &DatabaseConnection, d: &deployment::Model) -> Result<String> {
    Ok(deployment::Entity::find_by_id(d.id)
        .one(db)
        .await?
        .context("deployment")?
        .stage)
}

async fn two_deployments(w: &World) -> Result<(deployment::Model, deployment::Model)> {
    let a = w.artifact(1, &Made::default()).await?;
    let b = w.artifact(2, &Made::default()).await?;
    let a = w.production(&a, None).await?;
    let b = w.production(&b, None).await?;
    fixtures::allocation(&w.db, &a).await?;
    fixtures::allocation(&w.db, &b).await?;
    Ok((a, b))
}

async fn a_retried_move_returns_the_same_change(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let (a, b) = two_deployments(&w).await?;
    let op = w.operation(OperationKind::Promotion).await?;
    let first = w.acts.route(&w.move_input(op, &a, 0)).await.or_fail()?;
    assert_eq!(first.epoch, 1);
    assert_eq!(
        w.acts.route(&w.move_input(op, &a, 0)).await.or_fail()?,
        first
    );
    assert_eq!(stage(&w.db, &a).await?, "live");

    let op2 = w.operation(OperationKind::Promotion).await?;
    let second = w.acts.route(&w.move_input(op2, &b, 1)).await.or_fail()?;
    assert_eq!(second.epoch, 2);
    assert!(second.seq > first.seq);
    assert_eq!(
        w.acts.route(&w.move_input(op2, &b, 1)).await.or_fail()?,
        second
    );
    assert_eq!(
        (stage(&w.db, &a).await?, stage(&w.db, &b).await?),
        ("superseded".to_owned(), "live".to_owned())
    );
    assert_eq!(route_change::Entity::find().count(&w.db).await?, 2);
    Ok(())
}

async fn a_lost_compare_and_swap_is_audited_once_and_refused(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let (a, b) = two_deployments(&w).await?;
    w.make_live(&a, 0).await?;
    // Two operations started from epoch 1; the first to move wins.
    let winner = w.operation(OperationKind::Promotion).await?;
    let loser = w.operation(OperationKind::Rollback).await?;
    w.acts.route(&w.move_input(winner, &b, 1)).await.or_fail()?;
    let expected = format!(
        "route epoch conflict on {}: the operation started from epoch 1, the owner is at epoch 2",
        w.route_key
    );
    for _attempt in 0..3 {
        let message = refusal(w.acts.route(&w.move_input(loser, &a, 1)).await);
        assert_eq!(message, expected);
    }
    let audit = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("route.cas_conflict"))
        .all(&w.db)
        .await?;
    let [row] = audit.as_slice() else {
        panic!("one audit row, got {audit:#?}")
    };
    assert_eq!(
        (
            row.actor.as_str(),
            row.target_id.as_str(),
            row.operation_id,
            &row.detail["expected_epoch"],
            &row.detail["owner_epoch"]
        ),
        (
            "system:promotion",
            w.route_key.as_str(),
            Some(loser.0),
            &serde_json::json!(1),
            &serde_json::json!(2)
        )
    );
    // Moving the same deployment from the same epoch is still a conflict for another
    // operation, not a retry of the winner's move.
    let third = w.operation(OperationKind::Promotion).await?;
    let message = refusal(w.acts.route(&w.move_input(third, &b, 1)).await);
    assert_eq!(message, expected);
    assert_eq!(route_change::Entity::find().count(&w.db).await?, 2);
    Ok(())
}

/// Edge `id` at `acked_seq`, last seen `seen_ago` ago.
async fn edge(w: &World, id: &str, acked_seq: i64, seen_ago: Duration) -> Result<()> {
    let seen = Utc::now() - chrono::Duration::from_std(seen_ago)?;
    edge_ack::ActiveModel {
        edge_id: Set(id.into()),
        address: Set(Some(format!("10.0.0.{}:8081", id.len()))),
        acked_seq: Set(acked_seq),
        acked_at: Set(seen),
        seen_at: Set(seen),
        started_at: Set(seen),
    }
    .insert(&w.db)
    .await?;
    Ok(())
}

async fn ack(db: &DatabaseConnection, id: &str, seq: i64) -> Result<()> {
    let row = edge_ack::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .context("edge")?;
    let mut row: edge_ack::ActiveModel = row.into();
    row.acked_seq = Set(seq);
    row.acked_at = Set(Utc::now());
    row.seen_at = Set(Utc::now());
    row.update(db).await?;
    Ok(())
}

fn wait(w: &World, moved: &RouteMoved, deadline_ms: u64) -> AwaitEdgesInput {
    AwaitEdgesInput {
        operation_id: rhone_core::OperationId(rhone_schema::new_id()),
        route_key: w.route_key.clone(),
        seq: moved.seq,
        deadline_ms,
    }
}

async fn the_deadline_names_the_lagging_edge_and_survives_retries(
    db: DatabaseConnection,
) -> Result<()> {
    let w = World::new(db).await?;
    let (a, _) = two_deployments(&w).await?;

    // No edge at all (a deployment without edges): nothing to wait for.
    let moved = w.make_live(&a, 0).await?;
    let none = w
        .acts
        .edges(&wait(&w, &moved, 300), Heartbeat::none())
        .await
        .or_fail()?;
    assert_eq!(none.edges, Vec::<String>::new());

    edge(&w, "edge-b", moved.seq, Duration::ZERO).await?;
    edge(&w, "edge-a", moved.seq - 1, Duration::from_secs(1)).await?;
    // Not seen for longer than the liveness window: not waited for.
    edge(&w, "edge-gone", 0, Duration::from_secs(600)).await?;
    let started = Instant::now();
    let message = refusal(
        w.acts
            .edges(&wait(&w, &moved, 300), Heartbeat::none())
            .await,
    );
    assert!(
        message.starts_with(&format!(
            "edge replay gap: edge(s) edge-a (acked seq {}, last seen ",
            moved.seq - 1
        )),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            " ms ago, at 10.0.0.6:8081) did not acknowledge route change {} ({} epoch 1) within 300 ms",
            moved.seq, w.route_key
        )),
        "{message}"
    );
    assert!(
        !message.contains("edge-gone") && !message.contains("edge-b"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The deadline runs from the change, not from the attempt: a retry fails at once.
    let retried = Instant::now();
    refusal(
        w.acts
            .edges(&wait(&w, &moved, 300), Heartbeat::none())
            .await,
    );
    assert!(
        retried.elapsed() < Duration::from_millis(250),
        "a retry waited {:?}",
        retried.elapsed()
    );
    Ok(())
}

async fn acknowledgements_end_the_wait(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let (a, _) = two_deployments(&w).await?;
    let moved = w.make_live(&a, 0).await?;
    edge(&w, "edge-a", moved.seq - 1, Duration::ZERO).await?;
    edge(&w, "edge-b", moved.seq - 1, Duration::ZERO).await?;
    let db = w.db.clone();
    let seq = moved.seq;
    let acks = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ack(&db, "edge-a", seq).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ack(&db, "edge-b", seq + 5).await
    });
    let acked = w
        .acts
        .edges(&wait(&w, &moved, 10_000), Heartbeat::none())
        .await
        .or_fail()?;
    acks.await??;
    assert_eq!(acked.edges, ["edge-a", "edge-b"]);
    assert!(
        (400..10_000).contains(&acked.waited_ms),
        "waited {} ms",
        acked.waited_ms
    );
    Ok(())
}
