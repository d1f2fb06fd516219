//! The report endpoint over real HTTP on an in-memory SQLite control DB: disabled without a
//! runner key, refuses bad credentials and bodies, refuses (and audits) a runner's report on
//! an allocation that is not its own or with an address outside its subnet, applies reports
//! fenced by generation.

use anyhow::{Context, Result};
use rhone_runner_protocol::{RUNNER_HEADER, RunnerKey};
use rhone_schema::{
    allocations::{Desired, set_desired},
    entity::{allocation, audit_log, runner},
    fixtures, new_id, topology,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{RUNNER_REPORTS_PATH, routes};

fn key() -> RunnerKey {
    RunnerKey::new("runner-key-for-tests-0123456789abcdef").expect("a long key")
}

/// The report token of runner `r1`, where the fixtures place allocations.
fn token() -> String {
    key().report_token("r1").expose().to_owned()
}

/// Serves the report route alone, on a fresh port; the server ends with the test's runtime.
async fn serve(db: DatabaseConnection, key: Option<RunnerKey>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}{RUNNER_REPORTS_PATH}", listener.local_addr()?);
    let app: axum::Router = routes(db, key);
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
    let r1 = runner::Entity::find()
        .filter(runner::Column::Name.eq("r1"))
        .one(&db)
        .await?
        .context("runner r1")?;
    topology::record_runner_subnet(&db, r1.id, "10.213.250.0/24").await?;
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
    post_as(url, "r1", token, body).await
}

async fn post_as(
    url: &str,
    runner: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<(u16, Value)> {
    let mut request = reqwest::Client::new()
        .post(url)
        .header(RUNNER_HEADER, runner)
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn disabled_without_a_key() -> Result<()> {
    let (db, row) = db_with_allocation().await?;
    let url = serve(db, None).await?;
    let (status, body) = post(&url, Some(&token()), &report(row.id, 1, "pulling")).await?;
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
    let url = serve(db.clone(), Some(key())).await?;
    let good = report(row.id, 1, "pulling");
    let other_runners = key().report_token("r2").expose().to_owned();
    let call_token = key().call_token("r1").expose().to_owned();
    for token in [
        None,
        Some("wrong"),
        Some(other_runners.as_str()),
        Some(call_token.as_str()),
    ] {
        let (status, body) = post(&url, token, &good).await?;
        assert_eq!(status, 401, "token {token:?}: {body}");
        assert_eq!(body["code"], "UNAUTHENTICATED");
    }
    let (status, body) = post_as(&url, "", Some(&token()), &good).await?;
    assert_eq!(status, 401, "no runner named: {body}");
    let (status, body) = post(&url, Some(&token()), &report(row.id, 1, "sleeping")).await?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("stage"),
        "{body}"
    );
    let (status, body) = post(&url, Some(&token()), &report(new_id(), 1, "pulling")).await?;
    assert_eq!(status, 404, "{body}");
    // Nothing was written by any of them.
    let now = allocation::Entity::find_by_id(row.id).one(&db).await?;
    assert_eq!(now.as_ref(), Some(&row));
    Ok(())
}

#[tokio::test]
async fn applies_reports_fenced_by_generation() -> Result<()> {
    let (db, row) = db_with_allocation().await?;
    let url = serve(db.clone(), Some(key())).await?;
    for stage in ["pulling", "starting"] {
        let (status, body) = post(&url, Some(&token()), &report(row.id, 1, stage)).await?;
        assert_eq!(
            (status, body["applied"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
    }
    let mut ready = report(row.id, 1, "ready");
    ready["address"] = json!("http://10.213.250.2:4100");
    let (status, body) = post(&url, Some(&token()), &ready).await?;
    assert_eq!(
        (status, body["stage"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    let (status, body) = post(&url, Some(&token()), &ready).await?;
    assert_eq!(
        (status, body["applied"].as_bool()),
        (200, Some(false)),
        "a repeat: {body}"
    );

    let (status, body) = post(&url, Some(&token()), &report(row.id, 1, "pulling")).await?;
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
    let (status, body) = post(&url, Some(&token()), &report(row.id, 1, "draining")).await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        "stale report from generation 1, current is 2"
    );
    let (status, body) = post(&url, Some(&token()), &report(row.id, 2, "draining")).await?;
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

#[tokio::test]
async fn refuses_and_audits_another_runners_allocation_and_foreign_addresses() -> Result<()> {
    let (db, row) = db_with_allocation().await?;
    topology::ensure_runner(&db, "local", "local-a", "r2", "http://127.0.0.1:2").await?;
    let url = serve(db.clone(), Some(key())).await?;
    let r2 = key().report_token("r2").expose().to_owned();
    let (status, body) = post_as(&url, "r2", Some(&r2), &report(row.id, 1, "pulling")).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("not placed on it"),
        "{body}"
    );
    let unknown = key().report_token("r9").expose().to_owned();
    let (status, body) = post_as(&url, "r9", Some(&unknown), &report(row.id, 1, "pulling")).await?;
    assert_eq!(status, 403, "an unregistered runner: {body}");

    for stage in ["pulling", "starting"] {
        assert_eq!(
            post(&url, Some(&token()), &report(row.id, 1, stage))
                .await?
                .0,
            200
        );
    }
    let mut ready = report(row.id, 1, "ready");
    ready["address"] = json!("http://127.0.0.1:5432");
    let (status, body) = post(&url, Some(&token()), &ready).await?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("outside its subnet"),
        "{body}"
    );

    let audits = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("allocation.report_refused"))
        .all(&db)
        .await?;
    let actors: Vec<&str> = audits.iter().map(|a| a.actor.as_str()).collect();
    assert_eq!(actors.len(), 2, "{actors:?}");
    assert!(
        actors.contains(&"runner:r2") && actors.contains(&"runner:r1"),
        "{actors:?}"
    );
    let stored = allocation::Entity::find_by_id(row.id)
        .one(&db)
        .await?
        .context("row")?;
    assert_eq!((stored.stage.as_str(), stored.address), ("starting", None));
    Ok(())
}
