//! The in-memory route table on SQLite and PostgreSQL: changes applied in order and
//! acknowledged, a gap held closed until a reload, snapshot verification, one ack row per
//! edge (deleted on a graceful stop, left by a crash), and never a target outside the
//! owner's authority.

use std::time::Duration;

use anyhow::{Result, ensure};
use reqwest::StatusCode;

use crate::{
    backends::echo,
    fixtures::Db,
    harness::{Edge, HOST, OTHER, until},
};

/// Runs each case (`async fn(Db) -> Result<()>`) on both backends, as the tests
/// `table::sqlite::<case>` and `table::postgres::<case>`.
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case(crate::fixtures::Db::sqlite().await?).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let name = concat!(module_path!(), "::", stringify!($case));
                    super::$case(crate::fixtures::Db::postgres(name).await?).await
                }
            )+
        }
    };
}

on_both_backends!(
    a_change_is_applied_in_order_and_acknowledged,
    a_gap_holds_its_keys_closed_until_a_reload,
    a_snapshot_holds_a_key_the_log_disagrees_with,
    edges_acknowledge_separately_and_leave_on_a_graceful_stop,
    never_a_target_outside_the_owners_authority,
);

async fn a_change_is_applied_in_order_and_acknowledged(db: Db) -> Result<()> {
    let (a_backend, b_backend) = (echo("a").await?, echo("b").await?);
    let a = db.deployment(&db.artifact(1).await?).await?;
    let b = db.deployment(&db.artifact(2).await?).await?;
    db.ready(&a, &a_backend.address).await?;
    db.ready(&b, &b_backend.address).await?;
    db.owner(HOST, &a).await?;

    let edge = Edge::start(&db, "edge-order", |_| {}).await?;
    edge.settle(&db).await?;
    assert_eq!(edge.backend(HOST).await?.as_deref(), Some("a"));

    let (epoch, seq) = db.owner(HOST, &b).await?;
    assert_eq!(epoch, 2);
    edge.until_served_by(HOST, "b").await?;
    let ack = until("the edge to acknowledge the change", || async {
        Ok(db.ack("edge-order").await?.filter(|a| a.acked_seq >= seq))
    })
    .await?;
    assert_eq!(ack.acked_seq, seq);
    assert_eq!(ack.address, Some(format!("http://{}", edge.addr)));
    assert!(ack.seen_at >= ack.acked_at && ack.acked_at >= ack.started_at);
    let status = edge.status().await?;
    assert_eq!(status["edge_id"], "edge-order");
    assert_eq!(status["applied_seq"], seq);
    assert_eq!(status["route_keys"], 1);
    assert_eq!(status["gaps"], 0);
    assert_eq!(status["reloads"], 0);
    Ok(())
}

async fn a_gap_holds_its_keys_closed_until_a_reload(db: Db) -> Result<()> {
    let (a_backend, b_backend) = (echo("a").await?, echo("b").await?);
    let a = db.deployment(&db.artifact(1).await?).await?;
    let b = db.deployment(&db.artifact(2).await?).await?;
    db.ready(&a, &a_backend.address).await?;
    db.ready(&b, &b_backend.address).await?;
    db.owner(HOST, &a).await?;
    db.owner(OTHER, &a).await?;
    let grace = Duration::from_millis(1500);
    let edge = Edge::start(&db, "edge-gap", |c| c.gap_grace = grace).await?;
    edge.settle(&db).await?;

    // HOST moves to b at a sequence number one past the next: head + 1 never commits.
    let head = db.head().await?;
    db.owner_row_only(HOST, &b, 2).await?;
    db.change_row_only(Some(head + 2), HOST, &b, 2).await?;

    let (status, page) = until("HOST to be held for the gap", || async {
        let resp = edge.http.get(edge.url(HOST, "/")).send().await?;
        let status = resp.status();
        let retry_after = resp.headers().contains_key("retry-after");
        let page = resp.text().await?;
        Ok((status != StatusCode::OK || !page.contains("\"a\""))
            .then_some(((status, retry_after), page)))
    })
    .await?;
    assert_eq!(status, (StatusCode::SERVICE_UNAVAILABLE, true), "{page}");
    assert!(page.contains("route table gap"), "{page}");
    // Other keys keep serving meanwhile.
    assert_eq!(edge.backend(OTHER).await?.as_deref(), Some("a"));
    let held = edge.status().await?;
    assert_eq!(held["gaps"], 1);
    assert_eq!(held["closed_keys"][0]["route_key"], HOST, "{held}");
    assert_eq!(held["applied_seq"], head, "{held}");

    // The missing change never appears: after the grace a snapshot reload serves b.
    edge.until_served_by(HOST, "b").await?;
    let status = edge.status().await?;
    assert_eq!(status["gaps"], 1, "{status}");
    assert!(status["reloads"].as_u64() >= Some(1), "{status}");
    assert!(status["last_reload_at"].is_string(), "{status}");
    assert_eq!(status["closed_total"], 0, "{status}");
    assert_eq!(status["applied_seq"], head + 2, "{status}");
    until("the edge to acknowledge the snapshot head", || async {
        Ok(db
            .ack("edge-gap")
            .await?
            .filter(|a| a.acked_seq == head + 2))
    })
    .await?;
    assert_eq!(edge.backend(OTHER).await?.as_deref(), Some("a"));
    Ok(())
}

async fn a_snapshot_holds_a_key_the_log_disagrees_with(db: Db) -> Result<()> {
    let backend = echo("a").await?;
    let a = db.deployment(&db.artifact(1).await?).await?;
    db.ready(&a, &backend.address).await?;
    db.owner(HOST, &a).await?;
    db.owner(OTHER, &a).await?;
    // The owner row says epoch 5; the log's latest change for HOST says epoch 1.
    db.owner_row_only(HOST, &a, 5).await?;

    let edge = Edge::start(&db, "edge-verify", |_| {}).await?;
    edge.settle(&db).await?;
    let (status, page) = edge.get(HOST).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{page}");
    assert!(page.contains("cannot yet confirm"), "{page}");
    assert_eq!(edge.backend(OTHER).await?.as_deref(), Some("a"));
    let s = edge.status().await?;
    assert_eq!(s["closed_total"], 1, "{s}");
    assert_eq!(s["closed_keys"][0]["route_key"], HOST, "{s}");
    assert_eq!(
        s["closed_keys"][0]["reason"], "owner at epoch 5, change log at epoch 1",
        "{s}"
    );

    // The log catches up with the owner: the next snapshot agrees and HOST opens.
    db.change_row_only(None, HOST, &a, 5).await?;
    edge.until_served_by(HOST, "a").await?;
    let s = edge.status().await?;
    assert_eq!(s["closed_total"], 0, "{s}");
    assert!(s["reloads"].as_u64() >= Some(1), "{s}");
    Ok(())
}

async fn edges_acknowledge_separately_and_leave_on_a_graceful_stop(db: Db) -> Result<()> {
    let (a_backend, b_backend) = (echo("a").await?, echo("b").await?);
    let a = db.deployment(&db.artifact(1).await?).await?;
    let b = db.deployment(&db.artifact(2).await?).await?;
    db.ready(&a, &a_backend.address).await?;
    db.ready(&b, &b_backend.address).await?;
    db.owner(HOST, &a).await?;
    let one = Edge::start(&db, "edge-one", |_| {}).await?;
    let two = Edge::start(&db, "edge-two", |_| {}).await?;
    one.settle(&db).await?;
    two.settle(&db).await?;

    let (_, seq) = db.owner(HOST, &b).await?;
    for edge in [&one, &two] {
        edge.until_served_by(HOST, "b").await?;
        let ack = until("both edges to acknowledge", || async {
            Ok(db.ack(&edge.edge_id).await?.filter(|a| a.acked_seq == seq))
        })
        .await?;
        assert_eq!(ack.address, Some(format!("http://{}", edge.addr)));
    }

    // A graceful stop deletes the edge's row before `serve` returns.
    one.stop().await?;
    ensure!(db.ack("edge-one").await?.is_none(), "edge-one left its row");
    let before = db.ack("edge-two").await?;
    ensure!(before.is_some(), "edge-two lost its row");
    // A crash (the task aborted) leaves the row, and nothing refreshes it any more: its
    // `seen_at` grows older than the 1 s heartbeat.
    two.abort().await;
    ensure!(
        db.ack("edge-two").await?.is_some(),
        "an aborted edge deleted its row"
    );
    until("the aborted edge's row to go stale", || async {
        let row = db.ack("edge-two").await?;
        let stale = chrono::Duration::milliseconds(1500);
        Ok(row.filter(|r| chrono::Utc::now() - r.seen_at > stale))
    })
    .await?;
    Ok(())
}

async fn never_a_target_outside_the_owners_authority(db: Db) -> Result<()> {
    let (b_backend, old_backend) = (echo("b").await?, echo("old").await?);
    // A and B run the same artifact; B is healthy, A is not ready yet, and A's ready
    // allocation of an older artifact is not A's authority either.
    let digest = db.artifact(1).await?;
    let old = db.artifact(2).await?;
    let a = db.deployment(&digest).await?;
    let b = db.deployment(&digest).await?;
    db.owner(HOST, &a).await?;
    db.allocation(&a, &digest, "starting", "run", None).await?;
    db.allocation(&a, &old, "ready", "run", Some(&old_backend.address))
        .await?;
    db.ready(&b, &b_backend.address).await?;

    let edge = Edge::start(&db, "edge-authority", |_| {}).await?;
    let s = edge.settle(&db).await?;
    assert_eq!(s["allocations"], 2, "{s}");
    for _ in 0..5 {
        let resp = edge.http.get(edge.url(HOST, "/")).send().await?;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "5");
    }
    assert_eq!((b_backend.hits(), old_backend.hits()), (0, 0));

    // Once A's own allocation is ready, it and only it serves.
    let a_backend = echo("a").await?;
    db.ready(&a, &a_backend.address).await?;
    edge.until_served_by(HOST, "a").await?;
    for _ in 0..5 {
        assert_eq!(edge.backend(HOST).await?.as_deref(), Some("a"));
    }
    assert_eq!((b_backend.hits(), old_backend.hits()), (0, 0));
    Ok(())
}
