//! The migrations: idempotent, and the constraints they declare hold on both backends.

use anyhow::Result;
use chrono::Utc;
use rhone_schema::entity::{api_token, environment, route_activity, user, workspace};
use rhone_schema::{Migrator, SchemaError, migrate, new_id};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait};
use sea_orm_migration::MigratorTrait;

use crate::fixtures::{try_project, try_workspace, workspace};
use crate::support::on_both_backends;

on_both_backends!(
    migrating_twice_is_a_no_op,
    duplicate_names_are_conflicts,
    missing_references_are_rejected,
    a_token_has_exactly_one_owner,
    wake_columns_default_and_route_activity_is_per_key_and_edge,
    the_fleet_migration_makes_the_first_user_an_operator,
    tokens_from_before_expiry_get_ninety_days,
    self_approval_is_off_for_production_environments_from_before,
);

async fn migrating_twice_is_a_no_op(db: DatabaseConnection) -> Result<()> {
    let ws = workspace(&db, "acme").await?;
    migrate(&db).await?;
    migrate(&db).await?;
    assert!(Migrator::get_pending_migrations(&db).await?.is_empty());
    assert_eq!(
        Migrator::get_applied_migrations(&db).await?.len(),
        Migrator::migrations().len()
    );
    assert_eq!(
        workspace::Entity::find_by_id(ws.id).one(&db).await?,
        Some(ws)
    );
    Ok(())
}

async fn duplicate_names_are_conflicts(db: DatabaseConnection) -> Result<()> {
    let acme = workspace(&db, "acme").await?;
    let other = workspace(&db, "other").await?;
    assert!(matches!(
        try_workspace(&db, "acme").await,
        Err(SchemaError::Conflict { .. })
    ));
    try_project(&db, acme.id, "web").await?;
    let dup = try_project(&db, acme.id, "web").await;
    assert!(matches!(dup, Err(SchemaError::Conflict { .. })), "{dup:?}");
    // The name is unique per workspace, not globally.
    try_project(&db, other.id, "web").await?;
    Ok(())
}

async fn missing_references_are_rejected(db: DatabaseConnection) -> Result<()> {
    let orphan = try_project(&db, new_id(), "web").await;
    assert!(
        matches!(orphan, Err(SchemaError::MissingReference { .. })),
        "{orphan:?}"
    );
    Ok(())
}

async fn a_token_has_exactly_one_owner(db: DatabaseConnection) -> Result<()> {
    let token = |kind: &str, user_id, app_id| api_token::ActiveModel {
        id: Set(new_id()),
        user_id: Set(user_id),
        app_id: Set(app_id),
        kind: Set(kind.to_owned()),
        name: Set("ci".to_owned()),
        token_hash: Set(api_token::hash_token(&new_id().to_string())),
        prefix: Set("rht_".to_owned()),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        revoked_at: Set(None),
        expires_at: Set(None),
    };
    let user = user::ActiveModel {
        id: Set(new_id()),
        email: Set("ada@example.com".to_owned()),
        display_name: Set("Ada".to_owned()),
        created_at: Set(Utc::now()),
        operator: Set(false),
    }
    .insert(&db)
    .await?;
    token("user", Some(user.id), None).insert(&db).await?;
    // A runtime token must be an app's, and no token may be nobody's.
    assert!(
        token("runtime", Some(user.id), None)
            .insert(&db)
            .await
            .is_err()
    );
    assert!(token("user", None, None).insert(&db).await.is_err());
    assert_eq!(api_token::hash_token("abc").len(), 64);
    Ok(())
}

/// Rolls back every migration after the first `keep`.
async fn down_to(db: &DatabaseConnection, keep: usize) -> Result<()> {
    use sea_orm_migration::MigratorTrait;
    let after = Migrator::migrations().len() - keep;
    Migrator::down(db, Some(u32::try_from(after)?)).await?;
    Ok(())
}

/// Migration 8: environments that existed before it get `sleep_after_ms` 300000 and
/// `wake_state` `hot`; `route_activity` has one row per (route key, edge); it rolls back
/// and applies again.
async fn wake_columns_default_and_route_activity_is_per_key_and_edge(
    db: DatabaseConnection,
) -> Result<()> {
    let t = rhone_schema::fixtures::tenancy(&db, "acme", "production").await?;
    let mut env: environment::ActiveModel = t.environment.clone().into();
    env.sleep_after_ms = Set(5);
    env.wake_state = Set("sleeping".into());
    env.update(&db).await?;
    // Down to before migration 8, then up again.
    down_to(&db, 7).await?;
    Migrator::up(&db, None).await?;
    let env = environment::Entity::find_by_id(t.environment.id)
        .one(&db)
        .await?
        .expect("the environment survives");
    assert_eq!(env.sleep_after_ms, environment::DEFAULT_SLEEP_AFTER_MS);
    assert_eq!(env.wake_state, environment::WAKE_STATE_HOT);

    let row = |edge: &str| route_activity::ActiveModel {
        route_key: Set("web.shop.acme.rhone.localhost".into()),
        edge_id: Set(edge.into()),
        last_request_at: Set(Some(Utc::now())),
        open_sockets: Set(2),
        updated_at: Set(Utc::now()),
    };
    row("edge-a").insert(&db).await?;
    row("edge-b").insert(&db).await?;
    let again = route_activity::Entity::insert(row("edge-a"))
        .exec(&db)
        .await
        .map_err(SchemaError::from);
    assert!(
        matches!(again, Err(SchemaError::Conflict { .. })),
        "{again:?}"
    );
    let rows = route_activity::Entity::find().all(&db).await?;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.open_sockets == 2));
    Ok(())
}

/// Migration 10: on a control DB that had users, the first one (the bootstrap admin)
/// becomes the platform's operator, no one else; runners and allocations get their
/// capacity columns with zero defaults.
async fn the_fleet_migration_makes_the_first_user_an_operator(
    db: DatabaseConnection,
) -> Result<()> {
    down_to(&db, 9).await?;
    for (email, offset) in [("first@example.com", 0), ("second@example.com", 1)] {
        use sea_orm::{
            ConnectionTrait,
            sea_query::{Alias, Query},
        };
        let insert = Query::insert()
            .into_table(Alias::new("users"))
            .columns([
                Alias::new("id"),
                Alias::new("email"),
                Alias::new("display_name"),
                Alias::new("created_at"),
            ])
            .values_panic([
                new_id().into(),
                email.into(),
                email.into(),
                (Utc::now() + chrono::Duration::seconds(offset)).into(),
            ])
            .to_owned();
        db.execute(&insert).await?;
    }
    Migrator::up(&db, None).await?;
    let users = user::Entity::find().all(&db).await?;
    let operators: Vec<&str> = users
        .iter()
        .filter(|u| u.operator)
        .map(|u| u.email.as_str())
        .collect();
    assert_eq!(operators, ["first@example.com"]);
    Ok(())
}

/// Migration 12: a token made before tokens expired gets 90 days from the migration.
async fn tokens_from_before_expiry_get_ninety_days(db: DatabaseConnection) -> Result<()> {
    use sea_orm::{
        ConnectionTrait,
        sea_query::{Alias, Query},
    };
    down_to(&db, 11).await?;
    let user_id = new_id();
    db.execute(
        &Query::insert()
            .into_table(Alias::new("users"))
            .columns(["id", "email", "display_name", "created_at"].map(Alias::new))
            .values_panic([
                user_id.into(),
                "old@example.com".into(),
                "old".into(),
                Utc::now().into(),
            ])
            .to_owned(),
    )
    .await?;
    db.execute(
        &Query::insert()
            .into_table(Alias::new("api_tokens"))
            .columns(
                [
                    "id",
                    "user_id",
                    "kind",
                    "name",
                    "token_hash",
                    "prefix",
                    "created_at",
                ]
                .map(Alias::new),
            )
            .values_panic([
                new_id().into(),
                user_id.into(),
                "user".into(),
                "old".into(),
                api_token::hash_token("old").into(),
                "rhone_old".into(),
                Utc::now().into(),
            ])
            .to_owned(),
    )
    .await?;
    Migrator::up(&db, None).await?;
    let token = api_token::Entity::find()
        .one(&db)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the token"))?;
    let left = token.expires_at.map(|at| (at - Utc::now()).num_hours());
    assert!(
        left.is_some_and(|h| (89 * 24..=90 * 24).contains(&h)),
        "{left:?}"
    );
    Ok(())
}

/// Migration 13: production environments from before it do not let a requester approve
/// their own operations; the other kinds do.
async fn self_approval_is_off_for_production_environments_from_before(
    db: DatabaseConnection,
) -> Result<()> {
    use sea_orm::{
        ConnectionTrait,
        sea_query::{Alias, Query},
    };
    let t = rhone_schema::fixtures::tenancy(&db, "selfapproval", "preview").await?;
    down_to(&db, 12).await?;
    for (name, kind) in [("prod", "production"), ("stg", "staging")] {
        db.execute(
            &Query::insert()
                .into_table(Alias::new("environments"))
                .columns(
                    [
                        "id",
                        "workspace_id",
                        "app_id",
                        "name",
                        "kind",
                        "requires_approval",
                        "scale_to_zero",
                        "wake_budget_ms",
                        "created_at",
                    ]
                    .map(Alias::new),
                )
                .values_panic([
                    new_id().into(),
                    t.workspace.id.into(),
                    t.app.id.into(),
                    name.into(),
                    kind.into(),
                    true.into(),
                    false.into(),
                    10_000i64.into(),
                    Utc::now().into(),
                ])
                .to_owned(),
        )
        .await?;
    }
    Migrator::up(&db, None).await?;
    let envs = environment::Entity::find().all(&db).await?;
    for env in envs {
        assert_eq!(env.self_approval, env.kind != "production", "{}", env.name);
    }
    Ok(())
}
