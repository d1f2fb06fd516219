//! The policy check: a clean promotion passes every gate and hands the timings over; each
//! failed gate is a non-retryable refusal naming the gate and the facts.

use anyhow::Result;
use rhone_core::{OperationId, OperationKind};
use rhone_schema::entity::deployment;
use rhone_workflows::activities::{PolicyInput, RouteTarget};
use sea_orm::DatabaseConnection;

use crate::support::{Made, OrFail, World, on_both_backends, refusal};

on_both_backends!(
    a_clean_promotion_passes_every_gate,
    the_preview_artifact_must_match_exactly,
    a_stale_epoch_is_a_route_epoch_conflict,
    more_than_one_instance_needs_ready_services,
    a_rollback_over_an_unknown_migration_is_refused,
    a_rollback_that_breaks_live_sessions_is_refused,
    a_safe_rollback_passes,
    a_rollback_target_must_have_owned_the_route,
);

fn input(
    w: &World,
    kind: OperationKind,
    target: &deployment::Model,
    source: Option<&deployment::Model>,
    expected_epoch: i64,
    instances: u32,
) -> PolicyInput {
    PolicyInput {
        operation_id: OperationId(rhone_schema::new_id()),
        kind,
        environment_id: w.t.environment.id,
        deployment_id: target.id,
        source_deployment_id: source.map(|s| s.id),
        expected_epoch,
        instances,
    }
}

async fn a_clean_promotion_passes_every_gate(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let digest = w.artifact(1, &Made::default()).await?;
    let preview = w.preview(&digest, true).await?;
    let target = w.production(&digest, Some(&preview)).await?;
    let promotion = OperationKind::Promotion;
    let policy = w
        .acts
        .policy(&input(&w, promotion, &target, Some(&preview), 0, 1))
        .await
        .or_fail()?;
    assert_eq!(policy.route_key, w.route_key);
    assert_eq!(policy.digest, digest);
    assert_eq!(policy.previous, None);
    assert!(policy.approval_required, "production requires approval");
    let gates: Vec<(&str, bool)> = policy
        .gates
        .iter()
        .map(|g| (g.gate.as_str(), g.passed))
        .collect();
    assert_eq!(
        gates,
        [
            ("preview_artifact_matches", true),
            ("route_epoch_current", true),
            ("runtime_services_ready", true)
        ]
    );
    assert_eq!(
        (
            policy.health_window_ms,
            policy.drain_grace_ms,
            policy.propagation_deadline_ms
        ),
        (5_000, 30_000, 10_000)
    );

    // Once the route is live, the next promotion starts from its epoch and knows it.
    let moved = w.make_live(&target, 0).await?;
    let next_digest = w.artifact(2, &Made::default()).await?;
    let next_preview = w.preview(&next_digest, true).await?;
    let next = w.production(&next_digest, Some(&next_preview)).await?;
    let policy = w
        .acts
        .policy(&input(&w, promotion, &next, Some(&next_preview), 1, 1))
        .await
        .or_fail()?;
    assert_eq!(
        policy.previous,
        Some(RouteTarget {
            deployment_id: target.id,
            artifact_digest: digest,
            epoch: moved.epoch,
        })
    );
    Ok(())
}

async fn the_preview_artifact_must_match_exactly(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let previewed = w.artifact(1, &Made::default()).await?;
    let other = w.artifact(2, &Made::default()).await?;
    let preview = w.preview(&previewed, true).await?;
    let target = w.production(&other, None).await?;
    let promotion = OperationKind::Promotion;
    let message = refusal(
        w.acts
            .policy(&input(&w, promotion, &target, Some(&preview), 0, 1))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "preview_artifact_matches failed: deployment {} records artifact {other}, the preview deployment {} ran {previewed}; a promotion runs the exact preview artifact",
            target.id, preview.id
        )
    );

    // The same artifact, but its deploy never reached preview_ready.
    let unready = w.preview(&other, false).await?;
    let message = refusal(
        w.acts
            .policy(&input(&w, promotion, &target, Some(&unready), 0, 1))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "preview_artifact_matches failed: preview deployment {} never reached preview_ready (its deploy is at queued)",
            unready.id
        )
    );

    let message = refusal(
        w.acts
            .policy(&input(&w, promotion, &target, None, 0, 1))
            .await,
    );
    assert!(
        message.starts_with(
            "preview_artifact_matches failed: a promotion names the preview deployment"
        ),
        "{message}"
    );
    Ok(())
}

async fn a_stale_epoch_is_a_route_epoch_conflict(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let digest = w.artifact(1, &Made::default()).await?;
    let preview = w.preview(&digest, true).await?;
    let first = w.production(&digest, Some(&preview)).await?;
    w.make_live(&first, 0).await?;
    let target = w.production(&digest, Some(&preview)).await?;
    let message = refusal(
        w.acts
            .policy(&input(
                &w,
                OperationKind::Promotion,
                &target,
                Some(&preview),
                0,
                1,
            ))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "route_epoch_current failed: route epoch conflict on {}: the operation started from epoch 0, the owner is at epoch 1",
            w.route_key
        )
    );
    Ok(())
}

async fn more_than_one_instance_needs_ready_services(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let made = Made {
        services: vec!["idempotency"],
        ..Made::default()
    };
    let digest = w.artifact(1, &made).await?;
    let preview = w.preview(&digest, true).await?;
    let target = w.production(&digest, Some(&preview)).await?;
    w.bind("idempotency", "pending").await?;
    let one = input(&w, OperationKind::Promotion, &target, Some(&preview), 0, 1);
    let acts = &w.acts;
    let check = |instances| {
        let input = PolicyInput {
            instances,
            ..one.clone()
        };
        async move { acts.policy(&input).await }
    };
    let message = refusal(check(2).await);
    assert_eq!(
        message,
        "runtime_services_ready failed: runtime service(s) not ready on environment production: idempotency (status pending); \
         2 instances need a ready session_store binding on environment production so sessions resume on any allocation (not bound)"
    );

    w.bind("session_store", "ready").await?;
    let message = refusal(check(2).await);
    assert_eq!(
        message,
        "runtime_services_ready failed: runtime service(s) not ready on environment production: idempotency (status pending)"
    );

    w.bind("idempotency", "ready").await?;
    check(2).await.or_fail()?;
    check(1).await.or_fail()?;
    Ok(())
}

/// Deployments `old` and `new` of the production environment that each owned the route,
/// `new` now (epoch 2).
async fn two_live(
    w: &World,
    old: &Made,
    new: &Made,
) -> Result<(deployment::Model, deployment::Model)> {
    let old_digest = w.artifact(1, old).await?;
    let new_digest = w.artifact(2, new).await?;
    let old = w.production(&old_digest, None).await?;
    let new = w.production(&new_digest, None).await?;
    w.make_live(&old, 0).await?;
    w.make_live(&new, 1).await?;
    Ok((old, new))
}

async fn a_rollback_over_an_unknown_migration_is_refused(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let old = Made {
        migrations: vec!["migrations/0001_init.sql"],
        ..Made::default()
    };
    let new = Made {
        migrations: vec!["migrations/0001_init.sql", "migrations/0002_orders.sql"],
        ..Made::default()
    };
    let (old, new) = two_live(&w, &old, &new).await?;
    let message = refusal(
        w.acts
            .policy(&input(&w, OperationKind::Rollback, &old, None, 2, 1))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "db_rollback_safe failed: DB rollback unsafe: migration(s) migrations/0002_orders.sql applied by the current deployment {} are unknown to deployment {}",
            new.id, old.id
        )
    );
    Ok(())
}

async fn a_rollback_that_breaks_live_sessions_is_refused(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let old = Made {
        state: Some("count:v1"),
        ..Made::default()
    };
    let new = Made {
        state: Some("count:v2 name:v1"),
        ..Made::default()
    };
    let (old, new) = two_live(&w, &old, &new).await?;
    let message = refusal(
        w.acts
            .policy(&input(&w, OperationKind::Rollback, &old, None, 2, 1))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "state_schema_compatible failed: Vango state schema of deployment {} is incompatible with the live sessions of {}: persisted state name unknown to it, codec of count changed",
            old.id, new.id
        )
    );

    Ok(())
}

async fn a_safe_rollback_passes(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let same = Made {
        state: Some("count:v1"),
        migrations: vec!["migrations/0001_init.sql"],
        ..Made::default()
    };
    let (old, new) = two_live(&w, &same, &same).await?;
    let policy = w
        .acts
        .policy(&input(&w, OperationKind::Rollback, &old, None, 2, 1))
        .await
        .or_fail()?;
    assert_eq!(
        policy.digest,
        old.artifact_digest.clone().unwrap_or_default()
    );
    assert_eq!(
        policy.previous.map(|p| (p.deployment_id, p.epoch)),
        Some((new.id, 2))
    );
    let gates: Vec<(&str, bool)> = policy
        .gates
        .iter()
        .map(|g| (g.gate.as_str(), g.passed))
        .collect();
    assert_eq!(
        gates,
        [
            ("rollback_target_was_live", true),
            ("db_rollback_safe", true),
            ("state_schema_compatible", true),
            ("route_epoch_current", true),
            ("runtime_services_ready", true)
        ]
    );
    Ok(())
}

async fn a_rollback_target_must_have_owned_the_route(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let (_, _) = two_live(&w, &Made::default(), &Made::default()).await?;
    let digest = w.artifact(3, &Made::default()).await?;
    let never = w.production(&digest, None).await?;
    let message = refusal(
        w.acts
            .policy(&input(&w, OperationKind::Rollback, &never, None, 2, 1))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "rollback_target_was_live failed: deployment {} never owned route {}",
            never.id, w.route_key
        )
    );
    Ok(())
}
