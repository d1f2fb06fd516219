//! The Promotion workflow (and rollback) end to end on a real Temporal dev server, a real
//! worker, real builds of `examples/counter`, an in-test runner and real edges reading the
//! control DB: the production host serves exactly the promoted artifact, epochs move by one
//! per change, concurrent promotions race by compare-and-swap, a failed health window rolls
//! the route back, an edge that stops acknowledging is named, and an unsafe rollback is
//! refused. Killing the worker process in each stage is `cli/tests/promotion_kill.rs`.

#[allow(dead_code)]
mod deploy_support;
#[allow(dead_code)]
#[path = "deploy_workflow/harness.rs"]
mod harness;
#[path = "promotion_workflow/prod.rs"]
mod prod;

use std::{collections::HashSet, time::Duration};

use anyhow::Result;
use deploy_support::{Repo, change_counter_codec, commit, replace_in};
use harness::stages;
use prod::Prod;
use rhone_core::OperationKind;
use rhone_schema::entity::audit_log;
use rhone_workflows::DecisionKind;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

const HEALTHY: [&str; 5] = [
    "requested",
    "policy_check",
    "route_cas",
    "edge_propagating",
    "healthy",
];

/// A harmless change: a new artifact with the same state schema.
fn next_version(repo: &Repo, n: u32) -> Result<Repo> {
    let server = repo.path.join("server.py");
    let text = std::fs::read_to_string(&server)?;
    std::fs::write(&server, format!("{text}\n# version {n}\n"))?;
    commit(&repo.path, &format!("version {n}"))
}

/// deploy → preview → promote (waiting for the environment's approval) → the production
/// host serves the same digest → promote a second deployment → the first one's allocations
/// drain → rollback → the first deployment serves again; one epoch per change.
#[tokio::test]
async fn promote_promote_again_and_roll_back() -> Result<()> {
    let p = Prod::start("promo_e2e", true, |_| {}).await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let (d1, digest1) = p.preview(&repo).await?;

    let p1 = p.promote(d1, 1).await?;
    let seen = p.h.wait_status(p1, "waiting", 2).await?;
    assert_eq!(seen.op.current_stage, "policy_check");
    assert!(
        seen.error().contains("requires an approval"),
        "{}",
        seen.error()
    );
    assert_eq!(p.owner().await?, None, "nothing moves before the approval");
    p.h.decide_operation(OperationKind::Promotion, p1, DecisionKind::Approve)
        .await?;
    let seen = p.ended(p1).await?;
    assert_eq!(seen.op.status, "succeeded", "{:?}", seen.op.error);
    assert_eq!(
        seen.stages,
        stages(&[
            "requested",
            "policy_check",
            "policy_check",
            "route_cas",
            "edge_propagating",
            "healthy"
        ])
    );
    p.h.record_operation_history(OperationKind::Promotion, p1, "promotion_approved")
        .await?;
    let owner = p.owner().await?.expect("an owner");
    assert_eq!((owner.deployment_id, owner.epoch), (p1.id, 1));
    assert_eq!(
        owner.artifact_digest, digest1,
        "the preview's artifact, not a rebuild"
    );
    let served = p.serves(0, &digest1).await?;
    let p1_allocations = p.allocations(p1.id).await?;
    assert_eq!(p1_allocations.len(), 1);
    assert_eq!(served.allocation_id, p1_allocations[0].id);

    let repo = next_version(&repo, 2)?;
    let (d2, digest2) = p.preview(&repo).await?;
    assert_ne!(digest1, digest2);
    let p2 = p.promote(d2, 1).await?;
    p.h.wait_status(p2, "waiting", 2).await?;
    p.h.decide_operation(OperationKind::Promotion, p2, DecisionKind::Approve)
        .await?;
    let seen = p.ended(p2).await?;
    assert_eq!(seen.op.status, "succeeded", "{:?}", seen.op.error);
    let owner = p.owner().await?.expect("an owner");
    assert_eq!((owner.deployment_id, owner.epoch), (p2.id, 2));
    p.serves(0, &digest2).await?;
    // The first deployment's allocation drains after the grace period.
    p.drained(p1.id).await?;

    let back = p.rollback(p1.id).await?;
    let seen = p.h.wait_status(back, "waiting", 2).await?;
    assert_eq!(seen.op.current_stage, "policy_check");
    p.h.decide_operation(OperationKind::Rollback, back, DecisionKind::Approve)
        .await?;
    let seen = p.ended(back).await?;
    assert_eq!(seen.op.status, "succeeded", "{:?}", seen.op.error);
    let owner = p.owner().await?.expect("an owner");
    assert_eq!((owner.deployment_id, owner.epoch), (p1.id, 3));
    assert_eq!(owner.artifact_digest, digest1);
    p.serves(0, &digest1).await?;

    p.h.record_operation_history(OperationKind::Promotion, p2, "promotion_drains_previous")
        .await?;
    p.h.record_operation_history(OperationKind::Rollback, back, "rollback_approved")
        .await?;
    let changes = p.changes().await?;
    let epochs: Vec<i64> = changes.iter().map(|c| c.1).collect();
    assert_eq!(epochs, [1, 2, 3], "one epoch per change: {changes:?}");
    let deployments: Vec<_> = changes.iter().map(|c| c.2).collect();
    assert_eq!(deployments, [p1.id, p2.id, p1.id]);
    p.stop().await
}

/// Twenty promotions start from the same epoch at once: exactly one wins it, the others end
/// `failed` with a route-epoch conflict (on the operation and in the audit log) and drain
/// what they started, and no request ever reaches an allocation outside the owner's
/// authority while they race.
#[tokio::test]
async fn twenty_concurrent_promotions_one_wins_the_epoch() -> Result<()> {
    let p = Prod::start("promo_race", false, |_| {}).await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let (d1, digest1) = p.preview(&repo).await?;
    let first = p.promote(d1, 1).await?;
    assert_eq!(p.ended(first).await?.op.status, "succeeded");
    p.serves(0, &digest1).await?;
    let legitimate: HashSet<_> = p
        .allocations(first.id)
        .await?
        .iter()
        .map(|a| a.id)
        .collect();

    // Watch the production host through the edge while the promotions race.
    let (stop_watch, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let p = &p;
        async move {
            let mut seen = Vec::new();
            loop {
                if let (200, Some(stats)) = p.stats(0).await? {
                    seen.push(stats.allocation_id);
                }
                tokio::select! {
                    _ = &mut stopped => return anyhow::Ok(seen),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    };
    let race = async {
        // Twenty requests that all read the route at epoch 1.
        let epoch = p.epoch().await?;
        let mut promotions = Vec::new();
        for _ in 0..20 {
            promotions.push(p.promote_from_epoch(d1, 1, epoch).await?);
        }
        let mut ended = Vec::new();
        for promotion in &promotions {
            ended.push(p.ended(*promotion).await?);
        }
        let _ = stop_watch.send(());
        anyhow::Ok((promotions, ended))
    };
    let (observed, raced) = tokio::join!(watcher, race);
    let (promotions, ended) = raced?;
    let observed = observed?;

    let winners: Vec<_> = promotions
        .iter()
        .zip(&ended)
        .filter(|(_, s)| s.op.status == "succeeded")
        .map(|(d, _)| *d)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one winner");
    let winner = winners[0];
    for (d, seen) in promotions.iter().zip(&ended) {
        if *d == winner {
            assert_eq!(seen.stages, stages(&HEALTHY));
            continue;
        }
        assert_eq!(seen.op.status, "failed");
        assert_eq!(seen.op.current_stage, "failed");
        assert!(
            seen.error().contains("route epoch conflict"),
            "{}",
            seen.error()
        );
        if seen.stages.iter().any(|s| s == "route_cas") {
            p.h.record_operation_history(OperationKind::Promotion, *d, "promotion_cas_lost")
                .await?;
        }
    }
    let owner = p.owner().await?.expect("an owner");
    assert_eq!((owner.deployment_id, owner.epoch), (winner.id, 2));
    assert_eq!(p.changes().await?.len(), 2, "one change per epoch");

    // Losers that got as far as the CAS are in the audit log, and drained what they started.
    let conflicts = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("route.cas_conflict"))
        .count(&p.h.fx.db)
        .await?;
    let at_cas = ended
        .iter()
        .filter(|s| s.stages.iter().any(|x| x == "route_cas") && s.op.status == "failed")
        .count() as u64;
    assert_eq!(conflicts, at_cas, "one audit row per CAS lost");
    for d in promotions.iter().filter(|d| **d != winner) {
        for a in p.allocations(d.id).await? {
            assert_eq!(a.desired, "stop", "a loser's allocation {a:?}");
        }
    }

    let winner_allocations: HashSet<_> = p
        .allocations(winner.id)
        .await?
        .iter()
        .map(|a| a.id)
        .collect();
    assert!(!observed.is_empty());
    for id in &observed {
        assert!(
            legitimate.contains(id) || winner_allocations.contains(id),
            "a request reached allocation {id}, outside the owner's authority"
        );
    }
    p.stop().await
}

/// An edge that stops acknowledging (it crashed and its row is still fresh): the promotion
/// fails at `edge_propagating` with an edge replay gap naming that edge, and only that one.
#[tokio::test]
async fn an_edge_that_stops_acknowledging_is_named() -> Result<()> {
    let mut p = Prod::start("promo_gap", false, |_| {}).await?;
    p.start_edge("edge-b").await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let (d1, digest1) = p.preview(&repo).await?;
    let first = p.promote(d1, 1).await?;
    assert_eq!(p.ended(first).await?.op.status, "succeeded");
    p.serves(1, &digest1).await?;

    let crashed = p.edges.pop().expect("edge-b");
    crashed.crash();
    let second = p.promote(d1, 1).await?;
    let seen = p.ended(second).await?;
    assert_eq!(seen.op.status, "failed");
    assert_eq!(
        seen.stages,
        stages(&[
            "requested",
            "policy_check",
            "route_cas",
            "edge_propagating",
            "failed"
        ])
    );
    assert!(
        seen.error().contains("edge replay gap") && seen.error().contains("edge-b"),
        "{}",
        seen.error()
    );
    assert!(!seen.error().contains("edge-a"), "{}", seen.error());
    p.h.record_operation_history(OperationKind::Promotion, second, "promotion_edge_gap")
        .await?;
    // The live edge serves the new epoch.
    let owner = p.owner().await?.expect("an owner");
    assert_eq!((owner.deployment_id, owner.epoch), (second.id, 2));
    let served = p.serves(0, &digest1).await?;
    let second_allocations: Vec<_> = p
        .allocations(second.id)
        .await?
        .iter()
        .map(|a| a.id)
        .collect();
    assert!(second_allocations.contains(&served.allocation_id));
    p.stop().await
}

/// The new allocations pass readiness but die inside the health window: the route goes back
/// to the previous deployment by a new CAS (epoch 3) and the promotion ends `rolled_back`.
#[tokio::test]
async fn a_failed_health_window_rolls_the_route_back() -> Result<()> {
    let p = Prod::start("promo_unhealthy", false, |c| {
        c.promotion.health_window = Duration::from_secs(6);
    })
    .await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let (d1, digest1) = p.preview(&repo).await?;
    let first = p.promote(d1, 1).await?;
    assert_eq!(p.ended(first).await?.op.status, "succeeded");

    // Version 2 exits two seconds after it starts listening.
    replace_in(
        &repo.path.join("server.py"),
        "import os\n",
        "import os\nimport threading\nthreading.Timer(2.0, lambda: os._exit(3)).start()\n",
    )?;
    let repo = commit(&repo.path, "crash after two seconds")?;
    let (d2, _) = p.preview(&repo).await?;
    let second = p.promote(d2, 1).await?;
    let seen = p.ended(second).await?;
    assert_eq!(seen.op.status, "failed");
    assert_eq!(seen.op.current_stage, "rolled_back");
    assert_eq!(
        seen.stages,
        stages(&[
            "requested",
            "policy_check",
            "route_cas",
            "edge_propagating",
            "healthy",
            "rolled_back"
        ])
    );
    assert!(
        seen.error().contains("rolled back to deployment"),
        "{}",
        seen.error()
    );
    p.h.record_operation_history(OperationKind::Promotion, second, "promotion_rolled_back")
        .await?;
    let owner = p.owner().await?.expect("an owner");
    assert_eq!((owner.deployment_id, owner.epoch), (first.id, 3));
    p.serves(0, &digest1).await?;
    let epochs: Vec<i64> = p.changes().await?.iter().map(|c| c.1).collect();
    assert_eq!(epochs, [1, 2, 3]);
    p.stop().await
}

/// A rollback across a cold state change (the live deployment changed a persisted
/// primitive's codec) is refused at `policy_check` with the reason; the route stays.
#[tokio::test]
async fn a_rollback_across_a_state_schema_change_is_refused() -> Result<()> {
    let p = Prod::start("promo_unsafe", false, |_| {}).await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let (d1, _) = p.preview(&repo).await?;
    let first = p.promote(d1, 1).await?;
    assert_eq!(p.ended(first).await?.op.status, "succeeded");

    let repo = change_counter_codec(&repo)?;
    let d2 = p.h.deploy(&repo).await?;
    p.h.wait_status(d2, "waiting", 1).await?;
    p.h.decide(d2, DecisionKind::Approve).await?;
    p.h.wait_status(d2, "succeeded", 1).await?;
    let second = p.promote(d2, 1).await?;
    assert_eq!(p.ended(second).await?.op.status, "succeeded");

    let back = p.rollback(first.id).await?;
    let seen = p.ended(back).await?;
    assert_eq!(seen.op.status, "failed");
    assert_eq!(
        seen.stages,
        stages(&["requested", "policy_check", "failed"])
    );
    assert!(seen.error().contains("state schema"), "{}", seen.error());
    p.h.record_operation_history(OperationKind::Rollback, back, "rollback_refused")
        .await?;
    let owner = p.owner().await?.expect("an owner");
    assert_eq!((owner.deployment_id, owner.epoch), (second.id, 2));
    p.stop().await
}

/// No runner has room for the promoted allocation: the promotion stops `blocked` (status
/// waiting) with the shortfall as evidence, places nothing and moves no route; once room is
/// made, a retry places it and the promotion ends healthy.
#[tokio::test]
async fn no_room_blocks_the_promotion_until_a_retry() -> Result<()> {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let p = Prod::start("promo_no_room", false, |_| {}).await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let (d1, digest1) = p.preview(&repo).await?;
    // The preview's allocation takes 512 of runner-1's 600 MiB.
    let runner = rhone_schema::entity::runner::Entity::find()
        .filter(rhone_schema::entity::runner::Column::Name.eq("runner-1"))
        .one(&p.h.fx.db)
        .await?
        .expect("runner-1");
    let set_memory = |mb: i64| {
        let mut row: rhone_schema::entity::runner::ActiveModel = runner.clone().into();
        row.memory_mb = Set(mb);
        row.update(&p.h.fx.db)
    };
    set_memory(600).await?;

    let p1 = p.promote(d1, 1).await?;
    let seen = p.h.wait_status(p1, "waiting", 1).await?;
    assert_eq!(seen.op.current_stage, "blocked");
    assert_eq!(
        seen.error(),
        "no capacity: no runner has room for 512 MiB and 1000 millicores (of 1 runner: 1 short of memory)"
    );
    assert_eq!(p.owner().await?, None, "no route moves");
    assert!(p.allocations(p1.id).await?.is_empty(), "nothing is placed");

    set_memory(rhone_schema::topology::AMPLE.memory_mb).await?;
    p.h.decide_operation(OperationKind::Promotion, p1, DecisionKind::Retry)
        .await?;
    let seen = p.ended(p1).await?;
    assert_eq!(seen.op.status, "succeeded", "{:?}", seen.op.error);
    assert_eq!(
        seen.stages,
        stages(&[
            "requested",
            "policy_check",
            "route_cas",
            "blocked",
            "route_cas",
            "edge_propagating",
            "healthy"
        ])
    );
    p.serves(0, &digest1).await?;
    p.stop().await
}
