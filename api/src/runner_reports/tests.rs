//! The runners' endpoints over real HTTP on an in-memory SQLite control DB: disabled
//! without a runner key; registration (the call token's hash in the answer, region and cell
//! checked, overlapping subnets refused), heartbeats and lost runners; refuses bad, unknown
//! and revoked credentials (audited) and bad bodies; refuses (and audits) a runner's report
//! on an allocation that is not its own or with an address outside its subnet; applies
//! reports fenced by generation.

use anyhow::{Context, Result};
use rhone_core::fleet::FleetTimings;
use rhone_runner_protocol::{
    RUNNER_HEADER, RunnerKey,
    credentials::token_hash,
    fleet::{HEARTBEAT_PATH, REGISTER_PATH},
};
use rhone_schema::{
    allocations::{Desired, set_desired},
    entity::{allocation, audit_log, runner},
    fixtures, fleet, new_id, topology,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{RUNNER_REPORTS_PATH, routes};

fn key() -> RunnerKey {
    RunnerKey::new("runner-key-for-tests-0123456789abcdef").expect("a long key")
}

/// A fresh credential of runner `name` (added to local/local-a if new).
async fn credential(db: &DatabaseConnection, name: &str) -> Result<String> {
    let (_, secret) = fleet::rotate_credential(db, "local", "local-a", name).await?;
    Ok(secret.expose().to_owned())
}

/// Serves the runners' routes alone, on a fresh port, and returns the report URL; the
/// server ends with the test's runtime.
async fn serve(db: DatabaseConnection, key: Option<RunnerKey>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}{RUNNER_REPORTS_PATH}", listener.local_addr()?);
    let app: axum::Router = routes(db, key, FleetTimings::default());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn at(report_url: &str, path: &str) -> String {
    report_url.replace(RUNNER_REPORTS_PATH, path)
}

/// The DB with an allocation on runner `r1` (subnet 10.213.250.0/24) and r1's credential.
async fn db_with_allocation() -> Result<(DatabaseConnection, allocation::Model, String)> {
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
    let token = credential(&db, "r1").await?;
    Ok((db, row, token))
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
    let (db, row, token) = db_with_allocation().await?;
    let url = serve(db, None).await?;
    let (status, body) = post(&url, Some(&token), &report(row.id, 1, "pulling")).await?;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("disabled"),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn refuses_bad_tokens_and_bodies() -> Result<()> {
    let (db, row, token) = db_with_allocation().await?;
    let url = serve(db.clone(), Some(key())).await?;
    let good = report(row.id, 1, "pulling");
    let other_runners = credential(&db, "r2").await?;
    let call_token = key().call_token("r1").expose().to_owned();
    for bad in [
        None,
        Some("wrong"),
        Some(other_runners.as_str()),
        Some(call_token.as_str()),
    ] {
        let (status, body) = post(&url, bad, &good).await?;
        assert_eq!(status, 401, "token {bad:?}: {body}");
        assert_eq!(body["code"], "UNAUTHENTICATED");
    }
    let refused = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("runner.refused"))
        .filter(audit_log::Column::TargetId.eq("r1"))
        .all(&db)
        .await?;
    assert_eq!(
        refused.len(),
        3,
        "every refused credential is audited: {refused:?}"
    );
    let (status, body) = post_as(&url, "", Some(&token), &good).await?;
    assert_eq!(status, 401, "no runner named: {body}");
    let (status, body) = post(&url, Some(&token), &report(row.id, 1, "sleeping")).await?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("stage"),
        "{body}"
    );
    let (status, body) = post(&url, Some(&token), &report(new_id(), 1, "pulling")).await?;
    assert_eq!(status, 404, "{body}");
    // Nothing was written by any of them.
    let now = allocation::Entity::find_by_id(row.id).one(&db).await?;
    assert_eq!(now.as_ref(), Some(&row));
    Ok(())
}

#[tokio::test]
async fn applies_reports_fenced_by_generation() -> Result<()> {
    let (db, row, token) = db_with_allocation().await?;
    let url = serve(db.clone(), Some(key())).await?;
    for stage in ["pulling", "starting"] {
        let (status, body) = post(&url, Some(&token), &report(row.id, 1, stage)).await?;
        assert_eq!(
            (status, body["applied"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
    }
    let mut ready = report(row.id, 1, "ready");
    ready["address"] = json!("http://10.213.250.2:4100");
    let (status, body) = post(&url, Some(&token), &ready).await?;
    assert_eq!(
        (status, body["stage"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    let (status, body) = post(&url, Some(&token), &ready).await?;
    assert_eq!(
        (status, body["applied"].as_bool()),
        (200, Some(false)),
        "a repeat: {body}"
    );

    let (status, body) = post(&url, Some(&token), &report(row.id, 1, "pulling")).await?;
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
    let (status, body) = post(&url, Some(&token), &report(row.id, 1, "draining")).await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"],
        "stale report from generation 1, current is 2"
    );
    let (status, body) = post(&url, Some(&token), &report(row.id, 2, "draining")).await?;
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
    let (db, row, token) = db_with_allocation().await?;
    topology::ensure_runner(&db, "local", "local-a", "r2", "http://127.0.0.1:2").await?;
    let url = serve(db.clone(), Some(key())).await?;
    let r2 = credential(&db, "r2").await?;
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
    let (status, body) = post_as(&url, "r9", Some(&r2), &report(row.id, 1, "pulling")).await?;
    assert_eq!(status, 401, "an unknown runner: {body}");

    for stage in ["pulling", "starting"] {
        assert_eq!(
            post(&url, Some(&token), &report(row.id, 1, stage)).await?.0,
            200
        );
    }
    let mut ready = report(row.id, 1, "ready");
    ready["address"] = json!("http://127.0.0.1:5432");
    let (status, body) = post(&url, Some(&token), &ready).await?;
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

fn registration(subnet: &str) -> Value {
    json!({
        "region": "local",
        "cell": "local-a",
        "address": "http://127.0.0.1:8082",
        "subnet": subnet,
        "capacity": { "memory_mb": 4096, "cpu_millis": 2000, "slots": 50 },
        "agent_version": "0.1.0-test",
    })
}

#[tokio::test]
async fn a_runner_registers_heartbeats_and_is_declared_lost() -> Result<()> {
    let (db, _, r1_token) = db_with_allocation().await?;
    let url = serve(db.clone(), Some(key())).await?;
    let (register, heartbeat) = (at(&url, REGISTER_PATH), at(&url, HEARTBEAT_PATH));
    let (_, secret) = rhone_schema::fleet::add_runner(&db, "eu", "eu-a", "h1").await?;
    let token = secret.expose().to_owned();
    let runner_row = || async {
        runner::Entity::find()
            .filter(runner::Column::Name.eq("h1"))
            .one(&db)
            .await
    };
    assert_eq!(runner_row().await?.context("h1")?.status, "registered");

    // Its own region and cell only.
    let (status, body) = post_as(
        &register,
        "h1",
        Some(&token),
        &registration("10.213.251.0/24"),
    )
    .await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("was added to region eu cell eu-a"),
        "{body}"
    );
    let mut own = registration("10.213.251.0/24");
    own["region"] = json!("eu");
    own["cell"] = json!("eu-a");
    // A subnet another runner holds is refused.
    let mut taken = own.clone();
    taken["subnet"] = json!("10.213.250.128/25");
    let (status, body) = post_as(&register, "h1", Some(&token), &taken).await?;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("overlaps runner r1"),
        "{body}"
    );

    // A malformed registration is refused, every problem named, before anything is read.
    let mut malformed = own.clone();
    malformed["subnet"] = json!("10.213.251.7/24");
    malformed["address"] = json!("ftp://runner");
    let (status, body) = post_as(&register, "h1", Some(&token), &malformed).await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("INVALID_ARGUMENT")),
        "{body}"
    );
    let error = body["error"].as_str().unwrap_or("");
    assert!(
        error.contains("subnet: \"10.213.251.7/24\": host bits are set")
            && error.contains("address: \"ftp://runner\""),
        "{body}"
    );

    let (status, body) = post_as(&register, "h1", Some(&token), &own).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["call_token_sha256"],
        token_hash(key().call_token("h1").expose()),
        "the hash of the call token the worker will present"
    );
    assert_eq!(body["lost_after_ms"], FleetTimings::default().lost_after_ms);
    let row = runner_row().await?.context("h1")?;
    assert_eq!(
        (
            row.status.as_str(),
            row.memory_mb,
            row.cpu_millis,
            row.slots,
            row.subnet.as_deref(),
            row.agent_version.as_deref()
        ),
        (
            "ready",
            4096,
            2000,
            50,
            Some("10.213.251.0/24"),
            Some("0.1.0-test")
        )
    );
    let (status, body) = post_as(&heartbeat, "h1", Some(&token), &json!({})).await?;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );

    // All runners silent at once: the control plane's outage, and nobody is declared lost.
    // A runner without a credential (a fixture's) never heartbeats and is never judged.
    topology::ensure_runner(&db, "local", "local-a", "fixture", "http://127.0.0.1:3").await?;
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert!(fleet::mark_lost(&db, later, "test").await?.is_empty());
    // r1 is heard after h1: unseen since before that, h1 alone is lost, and told so.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        post_as(&heartbeat, "r1", Some(&r1_token), &json!({}))
            .await?
            .0,
        200
    );
    let r1_seen = runner::Entity::find()
        .filter(runner::Column::Name.eq("r1"))
        .one(&db)
        .await?
        .and_then(|r| r.last_seen_at)
        .context("r1 seen")?;
    let lost = fleet::mark_lost(&db, r1_seen, "test").await?;
    let names: Vec<&str> = lost.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["h1"]);
    let (status, body) = post_as(&heartbeat, "h1", Some(&token), &json!({})).await?;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("lost")),
        "{body}"
    );
    let audited = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("runner.lost"))
        .all(&db)
        .await?;
    assert_eq!(audited.len(), 1);
    // It registers again and is ready.
    assert_eq!(post_as(&register, "h1", Some(&token), &own).await?.0, 200);
    assert_eq!(runner_row().await?.context("h1")?.status, "ready");
    Ok(())
}

#[tokio::test]
async fn a_lost_or_revoked_runner_is_refused() -> Result<()> {
    let (db, row, token) = db_with_allocation().await?;
    let url = serve(db.clone(), Some(key())).await?;
    let register = at(&url, REGISTER_PATH);
    // r1 registers (it has a credential now) running its allocation, so the sweep may
    // judge it; lost, its allocation is fenced.
    let mut running = registration("10.213.250.0/24");
    running["allocations"] = json!([row.id]);
    let (status, body) = post_as(&register, "r1", Some(&token), &running).await?;
    assert_eq!((status, &body["drain"]), (200, &json!([])), "{body}");
    fleet::mark_lost(
        &db,
        chrono::Utc::now() + chrono::Duration::seconds(1),
        "test",
    )
    .await?;
    let fenced = allocation::Entity::find_by_id(row.id)
        .one(&db)
        .await?
        .context("row")?;
    assert_eq!((fenced.stage.as_str(), fenced.generation), ("failed", 2));
    let (status, body) = post(&url, Some(&token), &report(row.id, 1, "pulling")).await?;
    assert_eq!(status, 403, "a lost runner's late report: {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("is lost"),
        "{body}"
    );
    let stored = allocation::Entity::find_by_id(row.id).one(&db).await?;
    assert_eq!(stored.as_ref(), Some(&fenced), "nothing written");
    // Back, it is told to drain what it still runs.
    let (status, body) = post_as(&register, "r1", Some(&token), &running).await?;
    assert_eq!((status, &body["drain"]), (200, &json!([row.id])), "{body}");

    fleet::revoke_runner(&db, "r1").await?;
    for path in [REGISTER_PATH, HEARTBEAT_PATH, RUNNER_REPORTS_PATH] {
        let (status, body) = post(
            &at(&url, path),
            Some(&token),
            &registration("10.213.250.0/24"),
        )
        .await?;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let refused = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("runner.refused"))
        .all(&db)
        .await?;
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|a| a.detail["reason"] == "revoked credential"),
        "{refused:?}"
    );
    Ok(())
}
