//! Scale to zero through a real edge: the request lifecycle traces on a real Temporal dev
//! server, a real worker, real builds of `examples/counter`, an in-test runner and edges
//! reading the control DB. An idle production environment sleeps (its allocation drained),
//! then every request class meets it cold: held reads and a stampede (one Wake operation),
//! preview and production sleeping and waking apart, writes applied exactly once across
//! sleeps (idempotency keys) and never when they cannot be replayed safely, a payment
//! webhook recorded on the Wake operation and never replayed, a readiness timeout answered
//! 503 within the wake budget, and a wake overtaken by a promotion (old route epoch).
//! The Wake workflow on its own is `wake_workflow.rs`.

#[allow(dead_code)]
mod deploy_support;
#[allow(dead_code)]
#[path = "deploy_workflow/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "promotion_workflow/prod.rs"]
mod prod;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use deploy_support::{Repo, commit, replace_in};
use prod::Prod;
use rhone_schema::{
    entity::{
        allocation, artifact, audit_log, environment, operation, operation_stage, route_owner,
        runtime_service_binding,
    },
    new_id,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// Logs of the worker and the edges, when `RUST_LOG` asks for them.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// How long an idle environment stays awake in these tests.
const SLEEP_AFTER_MS: i64 = 1_000;

/// Turns scale to zero on for `env` with a short idle period and `budget_ms` of wake budget.
async fn scale_to_zero(p: &Prod, env: Uuid, budget_ms: i64) -> Result<()> {
    let row = environment::Entity::find_by_id(env)
        .one(&p.h.fx.db)
        .await?
        .context("environment")?;
    let mut row = row.into_active_model();
    row.scale_to_zero = Set(true);
    row.sleep_after_ms = Set(SLEEP_AFTER_MS);
    row.wake_budget_ms = Set(budget_ms);
    row.update(&p.h.fx.db).await?;
    Ok(())
}

async fn wake_state(p: &Prod, env: Uuid) -> Result<String> {
    Ok(environment::Entity::find_by_id(env)
        .one(&p.h.fx.db)
        .await?
        .context("environment")?
        .wake_state)
}

/// Waits until `env` sleeps: its wake state is `sleeping`, no allocation of its route's
/// owner is meant to run, and the Wake run that put it to sleep has recorded `sleeping`
/// (after its drain grace, so every edge has stopped routing to the drained allocation).
async fn wait_sleeping(p: &Prod, env: Uuid) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = wake_state(p, env).await?;
        let owner = owner_of(p, env).await?;
        let running = allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(owner.deployment_id))
            .filter(allocation::Column::Desired.eq("run"))
            .all(&p.h.fx.db)
            .await?;
        let last = wake_ops(p, &owner.route_key).await?.pop();
        let recorded = last.as_ref().is_some_and(|w| w.current_stage == "sleeping");
        if state == "sleeping" && running.is_empty() && recorded {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "environment is {state} with {} allocation(s) running, last wake {:?}",
                running.len(),
                last.map(|w| (w.status, w.current_stage))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn owner_of(p: &Prod, env: Uuid) -> Result<route_owner::Model> {
    route_owner::Entity::find()
        .filter(route_owner::Column::EnvironmentId.eq(env))
        .one(&p.h.fx.db)
        .await?
        .context("route owner")
}

/// Wake operations of a route key, oldest first.
async fn wake_ops(p: &Prod, route_key: &str) -> Result<Vec<operation::Model>> {
    Ok(operation::Entity::find()
        .filter(operation::Column::Kind.eq("wake"))
        .filter(operation::Column::TargetId.eq(route_key))
        .order_by_asc(operation::Column::CreatedAt)
        .all(&p.h.fx.db)
        .await?)
}

/// Deploys `repo` to preview and promotes it to production, healthy; the artifact digest.
async fn preview_and_promote(p: &Prod, repo: &Repo) -> Result<String> {
    let (preview, digest) = p.preview(repo).await?;
    let promo = p.promote(preview, 1).await?;
    assert_eq!(p.ended(promo).await?.op.current_stage, "healthy");
    Ok(digest)
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()?)
}

fn url(p: &Prod, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", p.edges[0].port)
}

/// The first edge's `/_rhone/status`, on its admin listener.
fn status_url(p: &Prod) -> String {
    format!("http://127.0.0.1:{}/_rhone/status", p.edges[0].admin_port)
}

/// Output lines of every allocation the runner started, in no particular order.
fn app_output(p: &Prod) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let dir = p.h.fx.tmp.path().join("runner");
    visit(&dir, &mut |path| {
        if path.file_name().is_some_and(|n| n == "output.log") {
            lines.extend(std::fs::read_to_string(path)?.lines().map(str::to_owned));
        }
        Ok(())
    })?;
    Ok(lines)
}

fn visit(dir: &Path, f: &mut impl FnMut(&Path) -> Result<()>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            visit(&path, f)?;
        } else {
            f(&path)?;
        }
    }
    Ok(())
}

/// deploy → preview (scale to zero) → promote (scale to zero) → both sleep. A stampede of
/// cold GETs on production makes one Wake operation and one allocation, every request
/// answered 200; the preview host keeps its own owner and sleeps on, then wakes alone while
/// production is untouched.
#[tokio::test]
async fn sleeping_apps_wake_once_for_a_stampede_and_apart_from_each_other() -> Result<()> {
    logs();
    let p = Prod::start("stz_stampede", false, |_| {}).await?;
    let preview_env = p.h.fx.env.id;
    scale_to_zero(&p, preview_env, 10_000).await?;
    scale_to_zero(&p, p.env.id, 10_000).await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let digest = preview_and_promote(&p, &repo).await?;
    wait_sleeping(&p, p.env.id).await?;
    wait_sleeping(&p, preview_env).await?;
    let prod_key = owner_of(&p, p.env.id).await?.route_key;
    let preview_key = owner_of(&p, preview_env).await?.route_key;
    let prod_wakes = wake_ops(&p, &prod_key).await?.len();
    let preview_wakes = wake_ops(&p, &preview_key).await?.len();
    let prod_deployment = owner_of(&p, p.env.id).await?.deployment_id;
    let before = p.allocations(prod_deployment).await?.len();
    let http = client()?;

    // An immutable asset of the sleeping app: served from the artifact store, and the app
    // sleeps on.
    let manifest = artifact::Entity::find_by_id(digest.clone())
        .one(&p.h.fx.db)
        .await?
        .context("artifact")?
        .manifest;
    let entry = manifest["assets"]["entries"]
        .as_array()
        .context("asset entries")?
        .iter()
        .find(|e| {
            e["immutable"] == true && e["source"].as_str().is_some_and(|s| s.ends_with(".css"))
        })
        .context("a fingerprinted stylesheet")?
        .clone();
    let path = format!(
        "/public/{}",
        entry["fingerprinted"].as_str().context("name")?
    );
    let resp = http
        .get(url(&p, &path))
        .header("host", &prod_key)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = resp.headers()["etag"].to_str()?.to_owned();
    assert_eq!(
        etag,
        format!("\"sha256-{}\"", entry["sha256"].as_str().context("sha")?)
    );
    assert_eq!(resp.headers()["content-type"], "text/css; charset=utf-8");
    let bytes = resp.bytes().await?;
    assert_eq!(bytes.len() as u64, entry["size"].as_u64().context("size")?);
    let resp = http
        .get(url(&p, &path))
        .header("host", &prod_key)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(resp.status(), 304);
    assert_eq!(
        wake_ops(&p, &prod_key).await?.len(),
        prod_wakes,
        "no wake for an asset"
    );
    assert_eq!(wake_state(&p, p.env.id).await?, "sleeping");

    // 200 concurrent cold GETs: all answered 200 by the one woken allocation.
    let started = Instant::now();
    let mut gets = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (http, url, host) = (http.clone(), url(&p, "/_rhone/stats"), prod_key.clone());
        gets.spawn(async move {
            let resp = http.get(url).header("host", host).send().await?;
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            anyhow::Ok((status, body))
        });
    }
    let mut allocations = std::collections::HashSet::new();
    while let Some(got) = gets.join_next().await {
        let (status, body) = got??;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["artifact_digest"], json!(digest));
        allocations.insert(body["allocation_id"].as_str().unwrap_or("").to_owned());
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(11), "the stampede took {took:?}");
    assert_eq!(
        allocations.len(),
        1,
        "one allocation answered: {allocations:?}"
    );
    // The requests are served once the edge sees the allocation ready; the Wake records
    // `hot` right after, so it may still be finishing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let wakes = loop {
        let wakes = wake_ops(&p, &prod_key).await?;
        let hot = wakes.last().is_some_and(|w| w.current_stage == "hot");
        if hot || std::time::Instant::now() > deadline {
            break wakes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        wakes.len(),
        prod_wakes + 1,
        "one Wake operation for the stampede"
    );
    let wake = wakes.last().context("the wake")?;
    assert_eq!(wake.current_stage, "hot", "{wake:?}");
    let stages: Vec<String> = operation_stage::Entity::find()
        .filter(operation_stage::Column::OperationId.eq(wake.id))
        .order_by_asc(operation_stage::Column::Seq)
        .all(&p.h.fx.db)
        .await?
        .into_iter()
        .map(|s| s.stage)
        .collect();
    assert_eq!(
        stages,
        [
            "cold",
            "wake_requested",
            "starting",
            "readiness_wait",
            "hot"
        ]
    );
    assert_eq!(p.allocations(prod_deployment).await?.len(), before + 1);
    // The edge's own account: the held requests were routed, on a handful of wake calls.
    let status: Value = http.get(status_url(&p)).send().await?.json().await?;
    let cold = &status["cold"];
    assert_eq!(cold["held_now"], 0, "{cold}");
    assert!(cold["held_routed"].as_u64() >= Some(200), "{cold}");
    assert_eq!(cold["held_timed_out"], 0, "{cold}");
    assert!(cold["wake_calls"].as_u64() <= Some(10), "{cold}");
    assert_eq!(cold["assets_served"], 2, "{cold}");
    // The preview sleeps on: its owner is its own, and nothing woke it.
    assert_eq!(wake_state(&p, preview_env).await?, "sleeping");
    assert_eq!(wake_ops(&p, &preview_key).await?.len(), preview_wakes);

    // The reverse: production awake, the preview wakes alone and serves its own owner.
    // (It stays awake for the rest of the test: its app dies while hot below.)
    let mut env = environment::Entity::find_by_id(preview_env)
        .one(&p.h.fx.db)
        .await?
        .context("preview env")?
        .into_active_model();
    env.sleep_after_ms = Set(600_000);
    env.update(&p.h.fx.db).await?;
    let prod_now = wake_ops(&p, &prod_key).await?.len();
    let resp = http
        .get(url(&p, "/_rhone/stats"))
        .header("host", &preview_key)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    let preview_owner = owner_of(&p, preview_env).await?;
    assert_eq!(
        body["artifact_digest"],
        json!(preview_owner.artifact_digest)
    );
    let preview_alloc: Uuid = body["allocation_id"].as_str().context("id")?.parse()?;
    let row = allocation::Entity::find_by_id(preview_alloc)
        .one(&p.h.fx.db)
        .await?
        .context("allocation")?;
    assert_eq!(
        row.deployment_id, preview_owner.deployment_id,
        "the preview owner's allocation"
    );
    assert_eq!(wake_ops(&p, &preview_key).await?.len(), preview_wakes + 1);
    assert_eq!(
        wake_ops(&p, &prod_key).await?.len(),
        prod_now,
        "production untouched"
    );

    // The preview's app dies while hot (its runner reports it failed, as the runner does when
    // a process exits): its Wake run records `sleeping` for lack of any allocation, and the
    // next request wakes it again instead of waiting on a route that nothing serves.
    let dead = allocation::Entity::find_by_id(preview_alloc)
        .one(&p.h.fx.db)
        .await?
        .context("the preview allocation")?;
    let runner = rhone_schema::entity::runner::Entity::find_by_id(
        dead.runner_id.context("the allocation's runner")?,
    )
    .one(&p.h.fx.db)
    .await?
    .context("the runner")?;
    rhone_schema::allocations::apply_report(
        &p.h.fx.db,
        &rhone_schema::allocations::ReportSource::of(&runner),
        &rhone_schema::allocations::RunnerReport {
            allocation_id: dead.id,
            generation: dead.generation,
            stage: rhone_core::stage::AllocationStage::Failed,
            address: None,
            exit_status: Some("exit status 1".into()),
            message: Some("the process exited".into()),
            last_log_lines: Vec::new(),
        },
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let died = loop {
        let last = wake_ops(&p, &preview_key).await?.pop().context("a wake")?;
        if last.current_stage == "sleeping" {
            break last;
        }
        if Instant::now() > deadline {
            bail!("the preview's wake is still {}", last.current_stage);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let evidence = operation_stage::Entity::find()
        .filter(operation_stage::Column::OperationId.eq(died.id))
        .order_by_desc(operation_stage::Column::Seq)
        .one(&p.h.fx.db)
        .await?
        .context("the sleeping record")?
        .evidence;
    assert!(
        evidence["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no ready allocation"),
        "{evidence}"
    );
    let resp = http
        .get(url(&p, "/_rhone/stats"))
        .header("host", &preview_key)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    assert_ne!(
        body["allocation_id"],
        json!(preview_alloc.to_string()),
        "a new allocation"
    );
    assert_eq!(wake_ops(&p, &preview_key).await?.len(), preview_wakes + 2);
    p.stop().await
}

/// Writes meet a sleeping app: a POST without an Idempotency-Key is refused (and applied
/// zero times); a keyed POST wakes the app and is applied once; its repeats, awake or after
/// the next sleep, are answered from the record (the second without waking anything); a
/// payment webhook is answered 503 with its evidence on the Wake operation and is processed
/// only when the provider delivers it again; a webhook without its signature header is
/// blocked and recorded.
#[tokio::test]
async fn writes_while_cold_are_applied_once_or_never() -> Result<()> {
    logs();
    let p = Prod::start("stz_writes", false, |_| {}).await?;
    scale_to_zero(&p, p.env.id, 10_000).await?;
    runtime_service_binding::ActiveModel {
        id: Set(new_id()),
        environment_id: Set(p.env.id),
        service: Set("idempotency".into()),
        status: Set("ready".into()),
        config: Set(json!({ "store": "rhone" })),
        created_at: Set(Utc::now()),
        // Not probed: written as a provisioner would.
        ..Default::default()
    }
    .insert(&p.h.fx.db)
    .await?;
    let repo = p.h.repo("repo", |_| Ok(()))?;
    preview_and_promote(&p, &repo).await?;
    wait_sleeping(&p, p.env.id).await?;
    let key = owner_of(&p, p.env.id).await?.route_key;
    let http = client()?;
    let post = |path: &str, idem: Option<&str>| {
        let mut r = http
            .post(url(&p, path))
            .header("host", &key)
            .header("content-type", "application/json")
            .body("{\"by\":1}");
        if let Some(k) = idem {
            r = r.header("idempotency-key", k);
        }
        r.send()
    };

    // A key-less POST while cold: 503, a body that says why, never applied.
    let resp = post("/actions/increment", None).await?;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let text = resp.text().await?;
    assert!(text.contains("Idempotency-Key"), "{text}");
    assert!(text.contains("Nothing was applied"), "{text}");
    // It woke the app (a wake is harmless); let it sleep again.
    wait_sleeping(&p, p.env.id).await?;

    // Keyed while cold: held through the wake, forwarded once.
    let resp = post("/actions/increment", Some("k-1")).await?;
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("idempotent-replayed"));
    let first: Value = resp.json().await?;
    // Repeated while hot: the edge's record answers.
    let resp = post("/actions/increment", Some("k-1")).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(resp.json::<Value>().await?, first);
    // The same key with another body is refused.
    let resp = http
        .post(url(&p, "/actions/increment"))
        .header("host", &key)
        .header("idempotency-key", "k-1")
        .body("{\"by\":2}")
        .send()
        .await?;
    assert_eq!(resp.status(), 422);

    // After the next sleep: the repeat is answered without waking; a new key wakes the app.
    wait_sleeping(&p, p.env.id).await?;
    let wakes = wake_ops(&p, &key).await?.len();
    let resp = post("/actions/increment", Some("k-1")).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(
        wake_ops(&p, &key).await?.len(),
        wakes,
        "a replay wakes nothing"
    );
    assert_eq!(wake_state(&p, p.env.id).await?, "sleeping");
    let resp = post("/actions/increment", Some("k-2")).await?;
    let status = resp.status();
    let text = resp.text().await?;
    assert_eq!(status, 200, "{text} {:#?}", wake_ops(&p, &key).await?);

    // A payment webhook while cold: 503 with Retry-After, evidence on the Wake operation,
    // and the app never sees it until the provider delivers it again.
    wait_sleeping(&p, p.env.id).await?;
    let signed = format!("t={},v1={}", Utc::now().timestamp(), "ab".repeat(32));
    let webhook = |sig: Option<String>| {
        let mut r = http
            .post(url(&p, "/webhooks/stripe"))
            .header("host", &key)
            .body("{\"id\":\"evt_1\",\"type\":\"payment_intent.succeeded\"}");
        if let Some(sig) = sig {
            r = r.header("stripe-signature", sig);
        }
        r.send()
    };
    let since = Utc::now();
    let resp = webhook(Some(signed.clone())).await?;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // The run that the delivery started records it (as its trigger) right after it opens.
    let deadline = Instant::now() + Duration::from_secs(10);
    let hook = loop {
        let evidence = audit_log::Entity::find()
            .filter(audit_log::Column::Action.eq("wake.request"))
            .filter(audit_log::Column::TargetId.eq(key.as_str()))
            .filter(audit_log::Column::CreatedAt.gte(since))
            .all(&p.h.fx.db)
            .await?;
        if let Some(hook) = evidence
            .into_iter()
            .find(|e| e.detail["class"] == "webhook")
        {
            break hook;
        }
        if Instant::now() > deadline {
            bail!("no evidence of the webhook on a wake operation");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(hook.detail["path"], "/webhooks/stripe");
    assert_eq!(hook.detail["detail"]["provider"], "stripe");
    let op = operation::Entity::find_by_id(hook.operation_id.context("on an operation")?)
        .one(&p.h.fx.db)
        .await?
        .context("the wake operation")?;
    assert_eq!(op.kind, "wake");
    // The app wakes; the delivery was not replayed to it.
    p.serves(0, &owner_of(&p, p.env.id).await?.artifact_digest)
        .await?;
    let resp = http
        .get(url(&p, "/_rhone/stats"))
        .header("host", &key)
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert_eq!(resp["handled_webhooks"], 0, "never replayed: {resp}");
    // The provider's retry is delivered.
    let resp = webhook(Some(signed)).await?;
    assert_eq!(resp.status(), 200);

    // Unsigned while cold: blocked, recorded, nothing woken.
    wait_sleeping(&p, p.env.id).await?;
    let wakes = wake_ops(&p, &key).await?.len();
    let resp = webhook(None).await?;
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await?.contains("stripe-signature"));
    let blocked = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("webhook.blocked"))
        .filter(audit_log::Column::TargetId.eq(key.as_str()))
        .all(&p.h.fx.db)
        .await?;
    assert_eq!(blocked.len(), 1);
    assert_eq!(
        wake_ops(&p, &key).await?.len(),
        wakes,
        "a blocked delivery wakes nothing"
    );

    // Across every process that ran: k-1 and k-2 applied once each, nothing key-less, and
    // the webhook once (the provider's retry).
    let output = app_output(&p)?;
    let count = |needle: &str| output.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("applied increment key=k-1 "), 1, "{output:#?}");
    assert_eq!(count("applied increment key=k-2 "), 1, "{output:#?}");
    assert_eq!(count("applied increment key=None "), 0, "{output:#?}");
    assert_eq!(count("applied webhook /webhooks/stripe"), 1, "{output:#?}");
    let status: Value = http.get(status_url(&p)).send().await?.json().await?;
    let cold = &status["cold"];
    assert_eq!(cold["writes_refused"], 1, "{cold}");
    assert_eq!(cold["writes_replayed"], 2, "{cold}");
    assert_eq!(cold["webhooks_deferred"], 1, "{cold}");
    assert_eq!(cold["webhooks_blocked"], 1, "{cold}");
    p.stop().await
}

/// A version that turns unhealthy once a marker file exists (so its promotion passes):
/// asleep, with a 1 s budget, a GET is answered 503 within the budget, and the Wake
/// operation fails at its readiness timeout with the app's last output in its reason.
#[tokio::test]
async fn a_wake_that_misses_readiness_answers_within_the_budget() -> Result<()> {
    logs();
    let p = Prod::start("stz_readiness", false, |_| {}).await?;
    scale_to_zero(&p, p.env.id, 1_000).await?;
    let (marker, seen) = p.h.marker("unhealthy");
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let repo = turn_unhealthy_on(&repo, &seen)?;
    preview_and_promote(&p, &repo).await?;
    wait_sleeping(&p, p.env.id).await?;
    std::fs::write(&marker, "")?;
    let key = owner_of(&p, p.env.id).await?.route_key;

    let started = Instant::now();
    let resp = client()?
        .get(url(&p, "/"))
        .header("host", &key)
        .send()
        .await?;
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert!(
        took < Duration::from_millis(2_000),
        "answered after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert!(resp.text().await?.contains("not ready within 1000 ms"));

    let deadline = Instant::now() + Duration::from_secs(60);
    let wake = loop {
        let wake = wake_ops(&p, &key).await?.pop().context("a wake")?;
        if wake.status == "failed" {
            break wake;
        }
        if Instant::now() > deadline {
            bail!("the wake is {} at {}", wake.status, wake.current_stage);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let error = wake.error.unwrap_or_default();
    assert!(error.contains("readiness"), "{error}");
    assert!(error.contains("unhealthy: marker present"), "{error}");
    p.stop().await
}

/// A held request whose wake (of a slow-starting version, epoch N) is overtaken by a
/// promotion: the wake fails as superseded and the request is routed to the new owner.
#[tokio::test]
async fn a_wake_for_an_old_epoch_aborts_and_the_request_follows_the_route() -> Result<()> {
    logs();
    let p = Prod::start("stz_epoch", false, |_| {}).await?;
    scale_to_zero(&p, p.env.id, 10_000).await?;
    let (marker, seen) = p.h.marker("slow");
    let repo = p.h.repo("repo", |_| Ok(()))?;
    let original = std::fs::read_to_string(repo.path.join("server.py"))?;
    let slow = start_slowly_on(&repo, &seen)?;
    preview_and_promote(&p, &slow).await?;
    // The next version is ready to promote before the route sleeps.
    std::fs::write(slow.path.join("server.py"), format!("{original}# fast\n"))?;
    let fast = commit(&slow.path, "fast again")?;
    let (d2, digest2) = p.preview(&fast).await?;
    wait_sleeping(&p, p.env.id).await?;
    let old = owner_of(&p, p.env.id).await?;
    std::fs::write(&marker, "")?;

    let http = client()?;
    let held = tokio::spawn({
        let (http, url, key) = (
            http.clone(),
            url(&p, "/_rhone/stats"),
            old.route_key.clone(),
        );
        async move {
            let resp = http.get(url).header("host", key).send().await?;
            let status = resp.status().as_u16();
            anyhow::Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
        }
    });
    // The wake of epoch N is starting its slow allocation; promote the fast version.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wake_ops(&p, &old.route_key)
        .await?
        .last()
        .is_some_and(|w| w.current_stage == "readiness_wait" || w.current_stage == "starting")
    {
        if Instant::now() > deadline {
            bail!("the wake did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promo = p.promote(d2, 1).await?;
    let (status, body) = held.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["artifact_digest"],
        json!(digest2),
        "routed to the new owner: {:#?}",
        wake_ops(&p, &old.route_key).await?
    );
    assert_eq!(p.ended(promo).await?.op.current_stage, "healthy");
    let deadline = Instant::now() + Duration::from_secs(60);
    let wake = loop {
        let wake = wake_ops(&p, &old.route_key)
            .await?
            .into_iter()
            .rev()
            .find(|w| w.workflow_id.contains(&format!("-e{}/", old.epoch)))
            .context("the old epoch's wake")?;
        if wake.status == "failed" {
            break wake;
        }
        if Instant::now() > deadline {
            bail!("the old wake is {} at {}", wake.status, wake.current_stage);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        wake.error
            .as_deref()
            .unwrap_or("")
            .contains("route epoch superseded"),
        "{wake:?}"
    );
    p.stop().await
}

/// `repo` whose health check fails once `marker` (a path the app sees) exists.
fn turn_unhealthy_on(repo: &Repo, marker: &str) -> Result<Repo> {
    let server = repo.path.join("server.py");
    let text = std::fs::read_to_string(&server)?;
    let health = "    def do_GET(self):\n";
    anyhow::ensure!(text.contains(health), "server.py has no do_GET");
    let check = format!(
        "    def do_GET(self):\n        if self.path == \"/healthz\" and os.path.exists({marker:?}):\n            log(\"unhealthy: marker present\")\n            return self.respond(503, \"unhealthy\\n\")\n",
        marker = marker
    );
    std::fs::write(&server, text.replacen(health, &check, 1))?;
    ensure_import_os(&server)?;
    replace_in(
        &repo.path.join("rhone.toml"),
        "readiness_timeout_secs = 20",
        "readiness_timeout_secs = 3",
    )?;
    commit(&repo.path, "unhealthy once the marker exists")
}

/// `repo` whose process waits 8 s before listening once `marker` (a path the app sees)
/// exists.
fn start_slowly_on(repo: &Repo, marker: &str) -> Result<Repo> {
    let server = repo.path.join("server.py");
    let text = std::fs::read_to_string(&server)?;
    let main = "def main():\n";
    anyhow::ensure!(text.contains(main), "server.py has no main()");
    let slow = format!(
        "def main():\n    if os.path.exists({marker:?}):\n        time.sleep(8)\n",
        marker = marker
    );
    std::fs::write(&server, text.replacen(main, &slow, 1))?;
    ensure_import_os(&server)?;
    commit(&repo.path, "slow start once the marker exists")
}

fn ensure_import_os(server: &Path) -> Result<()> {
    let text = std::fs::read_to_string(server)?;
    if !text.lines().any(|l| l == "import os") {
        std::fs::write(server, format!("import os\n{text}"))?;
    }
    Ok(())
}
