//! The runner and its control plane: a tiny server stands in for the API's runner
//! endpoints and records what the runner POSTs. The runner registers (its region, cell,
//! address, subnet, capacity capped by its host, version) and heartbeats with its
//! credential, takes calls with the call token whose hash the registration answered, and
//! its stages arrive in order, each with the generation it belongs to, despite a failed
//! first delivery.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::{Json, Router, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use rhone_runner::Secret;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Harness, eventually};

const WITHIN: Duration = Duration::from_secs(4);

#[derive(Clone, Default)]
struct Recorder {
    /// Bodies of registrations, and how many heartbeats came.
    registrations: Arc<Mutex<Vec<(String, Value)>>>,
    heartbeats: Arc<Mutex<usize>>,
    /// Set: the next heartbeat answers `lost`, and the registration after it tells the
    /// runner to drain these allocations.
    lose_and_drain: Arc<Mutex<Option<Value>>>,
    /// `(Authorization|X-Rhone-Runner headers, body)` of every POST that was answered 200.
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    /// POSTs received, failed ones included.
    attempts: Arc<Mutex<usize>>,
}

impl Recorder {
    fn seen(&self) -> Vec<(String, Value)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Answers the first POST with 503 (the runner must retry it), then records each one.
async fn record(
    State(r): State<Recorder>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let first = {
        let Ok(mut attempts) = r.attempts.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR;
        };
        *attempts += 1;
        *attempts == 1
    };
    if first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    // Who reports, and with what: `<Authorization>|<X-Rhone-Runner>`.
    let auth = format!("{}|{}", header("authorization"), header("x-rhone-runner"));
    if let Ok(mut seen) = r.seen.lock() {
        seen.push((auth, body));
    }
    StatusCode::OK
}

/// The call token the stand-in control plane hands out at registration.
const CALL_TOKEN: &str = "call-token-from-registration";

async fn register(
    State(r): State<Recorder>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if let Ok(mut seen) = r.registrations.lock() {
        seen.push((auth, body));
    }
    let drain = r
        .lose_and_drain
        .lock()
        .ok()
        .and_then(|mut d| d.take())
        .unwrap_or(serde_json::json!([]));
    Json(serde_json::json!({
        "call_token_sha256": rhone_runner_protocol::credentials::token_hash(CALL_TOKEN),
        "heartbeat_interval_ms": 100,
        "lost_after_ms": 300,
        "drain": drain,
    }))
}

async fn heartbeat(State(r): State<Recorder>) -> Json<Value> {
    if let Ok(mut n) = r.heartbeats.lock() {
        *n += 1;
    }
    let lost = r
        .lose_and_drain
        .lock()
        .map(|d| d.is_some())
        .unwrap_or(false);
    Json(serde_json::json!({ "status": if lost { "lost" } else { "ready" } }))
}

/// The stand-in control plane; returns its base URL.
async fn control_plane(recorder: Recorder) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/internal/runner/reports", post(record))
        .route("/internal/runner/register", post(register))
        .route("/internal/runner/heartbeat", post(heartbeat))
        .with_state(recorder);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_registers_heartbeats_and_takes_the_registered_call_token() -> Result<()> {
    let recorder = Recorder::default();
    let api_url = control_plane(recorder.clone()).await?;
    let h = Harness::start_with(|c| {
        c.api_url = Some(api_url);
        c.credential = Some(Secret::new("runner-credential"));
        c.call_token_sha256 = None;
        c.memory_mb = Some(1 << 24);
        c.slots = Some(3);
        c.agent_version = "9.9.9-test".into();
    })
    .await?;
    eventually(WITHIN, "the runner registers and heartbeats", || {
        !recorder
            .registrations
            .lock()
            .map(|r| r.is_empty())
            .unwrap_or(true)
            && recorder.heartbeats.lock().map(|n| *n >= 2).unwrap_or(false)
    })
    .await?;
    let (auth, body) = recorder
        .registrations
        .lock()
        .map(|r| r[0].clone())
        .unwrap_or_default();
    assert_eq!(auth, "Bearer runner-credential");
    assert_eq!(
        (body["region"].as_str(), body["cell"].as_str()),
        (Some("local"), Some("local-a"))
    );
    assert_eq!(body["address"], h.url);
    assert!(
        body["subnet"]
            .as_str()
            .is_some_and(|s| s.starts_with("10.213.")),
        "{body}"
    );
    assert_eq!(body["agent_version"], "9.9.9-test");
    let host_mb = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb / 1024);
    assert_eq!(
        body["capacity"]["memory_mb"], host_mb,
        "capped by what the host has"
    );
    assert_eq!(body["capacity"]["slots"], 3);

    // Calls carry the token the registration named; the harness's own is not it.
    let id = Uuid::now_v7();
    let (code, _) = h.put(id, &h.spec(id, 1, "serve")?).await?;
    assert_eq!(
        code, 401,
        "the test key's call token is not the registered one"
    );
    let h = h.with_call_token(CALL_TOKEN)?;
    token_taken(&h).await?;
    assert_eq!(h.put(id, &h.spec(id, 1, "serve")?).await?.0, 201);
    h.wait_stage(id, "ready", WITHIN).await?;

    // Declared lost, it registers again with what it runs, and drains what the control
    // plane no longer wants there.
    if let Ok(mut d) = recorder.lose_and_drain.lock() {
        *d = Some(serde_json::json!([id]));
    }
    h.wait_stage(id, "stopped", WITHIN).await?;
    let again = recorder
        .registrations
        .lock()
        .map(|r| r.last().cloned())
        .ok()
        .flatten();
    let (_, again) = again.unwrap_or_default();
    assert_eq!(again["allocations"], serde_json::json!([id]), "{again}");
    h.shutdown().await
}

/// Waits until the runner takes the call token its registration answer named: the
/// control plane has seen the registration before the runner has read the answer, so a call
/// right after it may still meet the old token (401).
async fn token_taken(h: &Harness) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    let unknown = Uuid::now_v7();
    loop {
        let (code, body) = h.get(unknown).await?;
        if code == 404 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the runner never took the registered call token: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_are_reported_in_order_with_their_generation() -> Result<()> {
    let recorder = Recorder::default();
    let api_url = control_plane(recorder.clone()).await?;
    let h = Harness::start_with(|c| {
        c.api_url = Some(api_url);
        c.credential = Some(Secret::new("runner-token"));
        // Not pinned: the registration's answer names the call token.
        c.call_token_sha256 = None;
    })
    .await?;
    // Its calls take the registered call token from now on.
    eventually(WITHIN, "the runner registers", || {
        !recorder
            .registrations
            .lock()
            .map(|r| r.is_empty())
            .unwrap_or(true)
    })
    .await?;
    let h = h.with_call_token(CALL_TOKEN)?;
    token_taken(&h).await?;
    let id = Uuid::now_v7();
    let spec = h.spec(id, 1, "serve")?;
    assert_eq!(h.put(id, &spec).await?.0, 201);
    let ready = h.wait_stage(id, "ready", WITHIN).await?;

    // The control plane bumps the generation to stop the allocation.
    let mut stop = spec.clone();
    stop["generation"] = 2.into();
    stop["desired"] = "stop".into();
    h.put(id, &stop).await?;
    h.wait_stage(id, "stopped", WITHIN).await?;
    eventually(WITHIN, "the stopped report arrives", || {
        recorder
            .seen()
            .last()
            .is_some_and(|(_, r)| r["stage"] == "stopped")
    })
    .await?;

    let seen = recorder.seen();
    let stages: Vec<(String, i64)> = seen
        .iter()
        .map(|(_, r)| {
            let stage = r["stage"].as_str().unwrap_or("?").to_owned();
            (stage, r["generation"].as_i64().unwrap_or(-1))
        })
        .collect();
    let expected = [
        ("planned", 1),
        ("pulling", 1),
        ("starting", 1),
        ("ready", 1),
        ("ready", 2),
        ("draining", 2),
        ("stopped", 2),
    ]
    .map(|(s, g)| (s.to_owned(), g));
    assert_eq!(stages, expected);
    assert!(
        seen.iter()
            .all(|(auth, r)| auth == "Bearer runner-token|test-runner"
                && r["allocation_id"] == id.to_string()),
        "{seen:#?}"
    );
    let ready_report = &seen[3].1;
    assert_eq!(ready_report["address"], ready["address"]);
    assert!(
        ready_report["last_log_lines"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    );
    let stopped = &seen[6].1;
    assert_eq!(stopped["address"], Value::Null);
    assert_eq!(stopped["exit_status"], "signal 15 (SIGTERM)");
    h.shutdown().await
}
