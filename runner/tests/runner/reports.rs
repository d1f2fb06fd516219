//! Reports to the control plane: a tiny server records what the runner POSTs, and the
//! stages arrive in order, each with the generation it belongs to, despite a failed first
//! delivery.

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

async fn control_plane(recorder: Recorder) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/internal/runner/reports", listener.local_addr()?);
    let app = Router::new()
        .route("/internal/runner/reports", post(record))
        .with_state(recorder);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_are_reported_in_order_with_their_generation() -> Result<()> {
    let recorder = Recorder::default();
    let report_url = control_plane(recorder.clone()).await?;
    let h = Harness::start_with(|c| {
        c.report_url = Some(report_url);
        c.report_token = Some(Secret::new("runner-token"));
    })
    .await?;
    let id = Uuid::now_v7();
    let spec = h.spec(id, 1, "serve")?;
    h.put(id, &spec).await?;
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
