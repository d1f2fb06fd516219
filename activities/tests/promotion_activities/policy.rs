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
    a_rollback_over_an_applied_contract_migration_is_refused,
    a_rollback_over_an_applied_expand_migration_passes,
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

/// The production environment owns database `env_db` on provider `main`, and migration
/// `path` was applied to it with `class`, as a Migration records it.
async fn applied(w: &World, path: &str, class: &str) -> Result<()> {
    use rhone_schema::entity::{applied_migration, database_provider, provider_binding};
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
    let provider = match database_provider::Entity::find().one(&w.db).await? {
        Some(p) => p,
        None => {
            database_provider::ActiveModel {
                id: Set(rhone_schema::new_id()),
                name: Set("main".into()),
                kind: Set("postgres".into()),
                host: Set("db.internal:5432".into()),
                sealed_admin_url: Set("not-opened-here".into()),
                point_in_time_recovery: Set(true),
                created_by: Set("test".into()),
                created_at: Set(chrono::Utc::now()),
            }
            .insert(&w.db)
            .await?;
            provider_binding::ActiveModel {
                id: Set(rhone_schema::new_id()),
                environment_id: Set(w.t.environment.id),
                provider: Set("main".into()),
                resource: Set("env_db".into()),
                status: Set(provider_binding::STATUS_READY.into()),
                created_at: Set(chrono::Utc::now()),
                role: Set("env_db".into()),
                access: Set(provider_binding::ACCESS_READ_WRITE.into()),
                error: Set(None),
            }
            .insert(&w.db)
            .await?;
            database_provider::Entity::find()
                .one(&w.db)
                .await?
                .ok_or_else(|| anyhow::anyhow!("provider"))?
        }
    };
    applied_migration::ActiveModel {
        id: Set(rhone_schema::new_id()),
        provider_id: Set(provider.id),
        database: Set("env_db".into()),
        path: Set(path.into()),
        sha256: Set("a".repeat(64)),
        class: Set(class.into()),
        operation_id: Set(rhone_schema::new_id()),
        applied_at: Set(chrono::Utc::now()),
    }
    .insert(&w.db)
    .await?;
    Ok(())
}

fn with_orders() -> (Made, Made) {
    let old = Made {
        migrations: vec!["migrations/0001_init.sql"],
        ..Made::default()
    };
    let new = Made {
        migrations: vec!["migrations/0001_init.sql", "migrations/0002_orders.sql"],
        ..Made::default()
    };
    (old, new)
}

async fn a_rollback_over_an_applied_contract_migration_is_refused(
    db: DatabaseConnection,
) -> Result<()> {
    let w = World::new(db).await?;
    let (old, new) = with_orders();
    let (old, new) = two_live(&w, &old, &new).await?;
    applied(&w, "migrations/0001_init.sql", "expand").await?;
    applied(&w, "migrations/0002_orders.sql", "contract").await?;
    let message = refusal(
        w.acts
            .policy(&input(&w, OperationKind::Rollback, &old, None, 2, 1))
            .await,
    );
    assert_eq!(
        message,
        format!(
            "db_rollback_safe failed: DB rollback unsafe: contract migration(s) migrations/0002_orders.sql applied by the current deployment {} are unknown to deployment {}: the schema it reads is gone; roll forward instead",
            new.id, old.id
        )
    );
    Ok(())
}

/// An expand migration the target does not know leaves what it reads in place.
async fn a_rollback_over_an_applied_expand_migration_passes(db: DatabaseConnection) -> Result<()> {
    let w = World::new(db).await?;
    let (old, new) = with_orders();
    let (old, _) = two_live(&w, &old, &new).await?;
    applied(&w, "migrations/0002_orders.sql", "expand").await?;
    let policy = w
        .acts
        .policy(&input(&w, OperationKind::Rollback, &old, None, 2, 1))
        .await
        .or_fail()?;
    let gate = policy
        .gates
        .iter()
        .find(|g| g.gate == "db_rollback_safe")
        .ok_or_else(|| anyhow::anyhow!("db_rollback_safe recorded"))?;
    assert!(gate.passed);
    assert_eq!(
        gate.evidence["unknown"],
        serde_json::json!(["migrations/0002_orders.sql"])
    );
    assert_eq!(
        gate.evidence["applied"]["migrations/0002_orders.sql"],
        "expand"
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
