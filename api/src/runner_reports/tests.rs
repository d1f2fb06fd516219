//! The report endpoint over real HTTP on an in-memory SQLite control DB: disabled without a
//! secret, refuses bad tokens and bodies, applies reports fenced by generation.

use anyhow::{Context, Result};
use chrono::Utc;
use rhone_schema::{
    allocations::{Desired, NewAllocation, create_allocation, set_desired},
    entity::{allocation, app, artifact, cell, deployment, environment, project, workspace},
    new_id,
    topology::ensure_runner,
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{RUNNER_REPORTS_PATH, RunnerSecret, routes};

const SECRET: &str = "runner-secret-for-tests";

/// Serves the report route alone, on a fresh port; the server ends with the test's runtime.
async fn serve(db: DatabaseConnection, secret: Option<RunnerSecret>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}{RUNNER_REPORTS_PATH}", listener.local_addr()?);
    let app: axum::Router = routes(db, secret.as_ref());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn db_with_allocation() -> Result<(DatabaseConnection, allocation::Model)> {
    let db = rhone_schema::connect("sqlite::memory:").await?;
    rhone_schema::migrate(&db).await?;
    let now = Utc::now();
    let ws = workspace::ActiveModel {
        id: Set(new_id()),
        name: Set("reports".into()),
        display_name: Set("Reports".into()),
        created_at: Set(now),
    }
    .insert(&db)
    .await?;
    let p = project::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(ws.id),
        name: Set("shop".into()),
        created_at: Set(now),
    }
    .insert(&db)
    .await?;
    let a = app::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(ws.id),
        project_id: Set(p.id),
        name: Set("web".into()),
        created_at: Set(now),
    }
    .insert(&db)
    .await?;
    let env = environment::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(ws.id),
        app_id: Set(a.id),
        name: Set("preview".into()),
        kind: Set("preview".into()),
        requires_approval: Set(false),
        scale_to_zero: Set(false),
        wake_budget_ms: Set(10_000),
        created_at: Set(now),
    }
    .insert(&db)
    .await?;
    let digest = format!("sha256:{}", "b".repeat(64));
    artifact::ActiveModel {
        digest: Set(digest.clone()),
        size_bytes: Set(1),
        manifest: Set(json!({})),
        store_uri: Set("local".into()),
        created_at: Set(now),
    }
    .insert(&db)
    .await?;
    let d = deployment::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(ws.id),
        app_id: Set(a.id),
        environment_id: Set(env.id),
        artifact_digest: Set(Some(digest.clone())),
        source: Set(json!({})),
        stage: Set("validating".into()),
        operation_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&db)
    .await?;
    let runner = ensure_runner(&db, "local", "local-a", "r1", "http://127.0.0.1:1").await?;
    let cell = cell::Entity::find_by_id(runner.cell_id)
        .one(&db)
        .await?
        .context("the runner's cell")?;
    let row = create_allocation(
        &db,
        NewAllocation {
            id: new_id(),
            deployment_id: d.id,
            artifact_digest: digest,
            runner_id: Some(runner.id),
            region_id: cell.region_id,
            cell_id: cell.id,
        },
    )
    .await?;
    Ok((db, row))
}

fn report(id: Uuid, generation: i64, stage: &str) -> Value {
    json!({
        "allocation_id": id,
        "generation": generation,
        "stage": stage,
        "address": null,
        "exit_status": null,
        "message": null,
        "last_log_lines": [],
    })
}

async fn post(url: &str, token: Option<&str>, body: &Value) -> Result<(u16, Value)> {
    let mut request = reqwest::Client::new().post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn disabled_without_a_secret() -> Result<()> {
    let (db, row) = db_with_allocation().await?;
    let url = serve(db, None).await?;
    let (status, body) = post(&url, Some(SECRET), &report(row.id, 1, "pulling")).await?;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("disabled"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn refuses_bad_tokens_and_bodies() -> Result<()> {
    let (db, row) = db_with_allocation().await?;
    let url = serve(db.clone(), Some(RunnerSecret::new(SECRET))).await?;
    let good = report(row.id, 1, "pulling");
    for token in [None, Some("wrong"), Some("runner-secret-for-test")] {
        let (status, body) = post(&url, token, &good).await?;
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert_eq!(body["code"], "UNAUTHENTICATED");
    }
    let (status, body) = post(&url, Some(SECRET), &report(row.id, 1, "sleeping")).await?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("stage"),
        "{body}"
    );
    let (status, body) = post(&url, Some(SECRET), &report(new_id(), 1, "pulling")).await?;
    assert_eq!(status, 404, "{body}");
    // Nothing was written by any of them.
    let now = allocation::Entity::find_by_id(row.id).one(&db).await?;
    assert_eq!(now.as_ref(), Some(&row));
    Ok(())
}

#[tokio::test]
async fn applies_reports_fenced_by_generation() -> Result<()> {
    let (db, row) = db_with_allocation().await?;
    let url = serve(db.clone(), Some(RunnerSecret::new(SECRET))).await?;
    for stage in ["pulling", "starting"] {
        let (status, body) = post(&url, Some(SECRET), &report(row.id, 1, stage)).await?;
        assert_eq!(
            (status, body["applied"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
    }
    let mut ready = report(row.id, 1, "ready");
    ready["address"] = json!("http://127.0.0.1:4100");
    let (status, body) = post(&url, Some(SECRET), &ready).await?;
    assert_eq!(
        (status, body["stage"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    let (status, body) = post(&url, Some(SECRET), &ready).await?;
    assert_eq!(
        (status, body["applied"].as_bool()),
        (200, Some(false)),
        "a repeat: {body}"
    );

    let (status, body) = post(&url, Some(SECRET), &report(row.id, 1, "pulling")).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("CONFLICT")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap_or("").contains("illegal"),
        "{body}"
    );

    set_desired(&db, row.id, Desired::Stop).await?;
    let (status, body) = post(&url, Some(SECRET), &report(row.id, 1, "draining")).await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        "stale report from generation 1, current is 2"
    );
    let (status, body) = post(&url, Some(SECRET), &report(row.id, 2, "draining")).await?;
    assert_eq!(
        (status, body["generation"].as_i64()),
        (200, Some(2)),
        "{body}"
    );

    let stored = allocation::Entity::find_by_id(row.id)
        .one(&db)
        .await?
        .context("allocation")?;
    assert_eq!((stored.stage.as_str(), stored.address), ("draining", None));
    Ok(())
}

#[test]
fn the_secret_never_prints() {
    let secret = RunnerSecret::new(SECRET);
    assert_eq!(format!("{secret} {secret:?}"), "*** ***");
    assert_ne!(RunnerSecret::generate(), RunnerSecret::generate());
    assert_eq!(RunnerSecret::generate().expose().len(), 43);
}
