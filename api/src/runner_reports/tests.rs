//! The report endpoint over real HTTP on an in-memory SQLite control DB: disabled without a
//! secret, refuses bad tokens and bodies, applies reports fenced by generation.

use anyhow::{Context, Result};
use rhone_schema::{
    allocations::{Desired, set_desired},
    entity::allocation,
    fixtures, new_id,
};
use sea_orm::{DatabaseConnection, EntityTrait};
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
    let t = fixtures::tenancy(&db, "reports", "preview").await?;
    let digest = fixtures::digest(0xbb);
    fixtures::artifact(&db, &digest).await?;
    let d = fixtures::deployment(&db, &t, &digest, "validating").await?;
    let row = fixtures::allocation(&db, &d).await?;
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
