//! Following an operation live: every command that starts a workflow-run operation (envs
//! create, deploy, promote, rollback) polls it here, prints each new stage with a summary of
//! its evidence, and says what to run when it waits for a decision, or when a Migration it
//! started does.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{OP_FIELDS, status_of};
use crate::client::Api;

/// What [`follow`] does when the operation waits for a decision or needs attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnWait {
    /// Return the operation: the command ends and says what to run (a blocked deploy).
    Return,
    /// Say what to run and keep following until the operation is final (a promotion
    /// waiting for its approval, or a step retried from another terminal).
    Keep,
}

impl OnWait {
    /// How long following may take before the command gives up (the operation goes on).
    fn limit(self) -> Duration {
        match self {
            OnWait::Return => Duration::from_secs(10 * 60),
            // An approval, a health window and a drain grace can take a while.
            OnWait::Keep => Duration::from_secs(60 * 60),
        }
    }
}

/// Polls an operation until it is final (or, with [`OnWait::Return`], waits for someone),
/// printing each new stage as it is recorded. Returns the operation as last read.
pub async fn follow(api: &Api, op: &Value, json_out: bool, on_wait: OnWait) -> Result<Value> {
    let id = op["id"]
        .as_str()
        .context("the API returned an operation without id")?
        .to_owned();
    if !json_out {
        let kind = op["kind"].as_str().unwrap_or("?").to_lowercase();
        match (op["targetType"].as_str(), op["targetId"].as_str()) {
            (Some(t), Some(target)) => println!("operation {id} ({kind}, {t} {target})"),
            _ => println!("operation {id} ({kind})"),
        }
    }
    let mut shown = 0usize;
    // The (status, stage records) a waiting line was printed for, so it is printed once.
    let mut told: Option<(String, usize)> = None;
    // The (Migration, its stage records) a waiting line was printed for.
    let mut told_child: Option<(String, usize)> = None;
    let limit = on_wait.limit();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let d = api
            .call(
                &format!(
                    "query($id: UUID!) {{ operation(id: $id) {{ workspaceId {OP_FIELDS} }} }}"
                ),
                json!({ "id": id }),
            )
            .await?;
        let op = d["operation"].clone();
        let stages = op["stages"].as_array().cloned().unwrap_or_default();
        if !json_out {
            for s in stages.iter().skip(shown) {
                print_stage(s);
            }
        }
        shown = stages.len();
        let status = status_of(&op);
        let status = status.as_str();
        let waiting = matches!(status, "waiting" | "needs_attention");
        if waiting && told.as_ref() != Some(&(status.to_owned(), shown)) {
            if !json_out {
                print_waiting(&id, &op, status);
            }
            told = Some((status.to_owned(), shown));
        }
        // A deploy or promotion runs on while a Migration it started waits for a decision:
        // that one is where to send it.
        let child = if status == "running" {
            waiting_migration(api, &op, &id).await?
        } else {
            None
        };
        if let Some(child) = &child {
            let records = child["stages"].as_array().map_or(0, Vec::len);
            let child_id = child["id"].as_str().unwrap_or("?").to_owned();
            if told_child.as_ref() != Some(&(child_id.clone(), records)) {
                if !json_out {
                    println!("the migration it started waits:");
                    print_waiting(&child_id, child, "waiting");
                }
                told_child = Some((child_id, records));
            }
        }
        let done = matches!(status, "succeeded" | "failed" | "aborted")
            || ((waiting || child.is_some()) && on_wait == OnWait::Return);
        if done {
            if !json_out && !waiting {
                match status {
                    "failed" | "aborted" => println!(
                        "{status} at {}: {}",
                        stopped_at(&op),
                        op["error"].as_str().unwrap_or("no reason recorded")
                    ),
                    _ => println!("{status}"),
                }
            }
            return Ok(op);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "operation {id} is still {status} after {} minutes: follow it with `rhone ops show {id}`",
                limit.as_secs() / 60
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Migration operation `id` (a deploy or a promotion) started that now waits for a
/// decision, if one does.
async fn waiting_migration(api: &Api, op: &Value, id: &str) -> Result<Option<Value>> {
    if !matches!(op["kind"].as_str(), Some("DEPLOY" | "PROMOTION")) {
        return Ok(None);
    }
    let Some(workspace) = op["workspaceId"].as_str() else {
        return Ok(None);
    };
    let d = api
        .call(
            &format!(
                "query($w: UUID!) {{ operations(workspaceId: $w, kind: MIGRATION, status: WAITING, first: 20) {{ nodes {{ {OP_FIELDS} }} }} }}"
            ),
            json!({ "w": workspace }),
        )
        .await?;
    Ok(d["operations"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            m["stages"]
                .as_array()
                .and_then(|s| s.first())
                .is_some_and(|first| first["evidence"]["started_by"] == id)
        })
        .cloned())
}

fn print_waiting(id: &str, op: &Value, status: &str) {
    let stage = op["currentStage"].as_str().unwrap_or("?");
    let why = op["error"]
        .as_str()
        .or_else(|| last_error(op))
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    match status {
        "waiting" => println!(
            "waiting for a decision at {stage}{why}\n  rhone ops approve {id}  |  rhone ops abort {id}"
        ),
        _ => println!(
            "needs attention at {stage}{why}\n  rhone ops retry {id}  |  rhone ops abort {id}"
        ),
    }
}

/// Where an operation stopped: its current stage, or for an ending stage (`failed`,
/// `rolled_back`) the stage it left for it.
pub fn stopped_at(op: &Value) -> &str {
    let current = op["currentStage"].as_str().unwrap_or("?");
    if !matches!(current, "failed" | "rolled_back") {
        return current;
    }
    op["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .filter_map(|s| s["stage"].as_str())
        .find(|s| *s != current)
        .unwrap_or(current)
}

/// The error of the last stage record, which says why an operation waits.
fn last_error(op: &Value) -> Option<&str> {
    op["stages"].as_array()?.last()?["error"].as_str()
}

/// One line per stage record: seq, stage, time, attempt, the evidence worth reading at a
/// glance, and the error.
pub fn print_stage(s: &Value) {
    let attempt = s["attempt"].as_i64().unwrap_or(1);
    let retry = if attempt > 1 {
        format!(" (attempt {attempt})")
    } else {
        String::new()
    };
    let summary = evidence_summary(&s["evidence"]);
    let summary = if summary.is_empty() {
        String::new()
    } else {
        format!("  {summary}")
    };
    let err = s["error"]
        .as_str()
        .map(|e| format!("  error: {e}"))
        .unwrap_or_default();
    println!(
        "  {:<3} {:<16} {}{retry}{summary}{err}",
        s["seq"],
        s["stage"].as_str().unwrap_or("?"),
        s["enteredAt"].as_str().unwrap_or("")
    );
}

/// The evidence a person wants in a stage line (`route_key=… epoch=3 edges=2`), leaving the
/// rest to `rhone ops show`.
pub fn evidence_summary(evidence: &Value) -> String {
    let mut parts = Vec::new();
    for key in [
        "route_key",
        "from_epoch",
        "epoch",
        "unhealthy_epoch",
        "instances",
        "digest",
        "commit_sha",
        "awaiting",
        "approved_by",
        "propagation_ms",
        "url",
    ] {
        let text = match &evidence[key] {
            Value::Null => continue,
            Value::String(s) if key == "digest" => short_digest(s),
            Value::String(s) if key == "commit_sha" => s.chars().take(12).collect(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        parts.push(format!("{key}={text}"));
    }
    if let Some(edges) = evidence["edges"].as_array() {
        let names: Vec<&str> = edges.iter().filter_map(Value::as_str).collect();
        parts.push(format!("edges={}", names.len()));
        if !names.is_empty() && names.len() <= 3 {
            parts.push(format!("({})", names.join(", ")));
        }
    }
    if let Some(gates) = evidence["gates"].as_array() {
        let failed: Vec<&str> = gates
            .iter()
            .filter(|g| g["passed"] == false)
            .filter_map(|g| g["gate"].as_str())
            .collect();
        let passed = gates.len() - failed.len();
        let mut text = format!("gates={passed}/{}", gates.len());
        if !failed.is_empty() {
            text.push_str(&format!(" (failed: {})", failed.join(", ")));
        }
        parts.push(text);
    }
    parts.join(" ")
}

/// `sha256:` and the first 12 hex digits.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 => format!("{algo}:{}…", &hex[..12]),
        _ => digest.to_owned(),
    }
}

/// The last value of `key` in the operation's stage evidence, newest first.
pub fn last_evidence<'a>(op: &'a Value, key: &str) -> Option<&'a Value> {
    op["stages"]
        .as_array()?
        .iter()
        .rev()
        .map(|s| &s["evidence"][key])
        .find(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(evidence: Value, expected: &str) {
        assert_eq!(evidence_summary(&evidence), expected, "{evidence}");
    }

    #[test]
    fn summaries() {
        check(json!({}), "");
        check(
            json!({ "route_key": "web.shop.acme.rhone.localhost", "epoch": 3, "seq": 9, "allocation_ids": ["a"] }),
            "route_key=web.shop.acme.rhone.localhost epoch=3",
        );
        check(
            json!({ "epoch": 4, "edges": ["edge-1", "edge-2"], "propagation_ms": 120 }),
            "epoch=4 propagation_ms=120 edges=2 (edge-1, edge-2)",
        );
        check(
            json!({ "digest": format!("sha256:{}", "ab".repeat(32)), "size_bytes": 10 }),
            "digest=sha256:abababababab…",
        );
        check(
            json!({ "gates": [
                { "gate": "exact_artifact", "passed": true },
                { "gate": "route_epoch", "passed": false },
            ], "awaiting": "approval" }),
            "awaiting=approval gates=1/2 (failed: route_epoch)",
        );
    }

    #[test]
    fn last_evidence_is_the_newest() {
        let op = json!({ "stages": [
            { "evidence": { "epoch": 1, "route_key": "a" } },
            { "evidence": { "epoch": 2 } },
            { "evidence": {} },
        ] });
        assert_eq!(last_evidence(&op, "epoch"), Some(&json!(2)));
        assert_eq!(last_evidence(&op, "route_key"), Some(&json!("a")));
        assert_eq!(last_evidence(&op, "url"), None);
    }

    #[test]
    fn where_operations_stop() {
        let op = |current: &str, stages: &[&str]| {
            let stages: Vec<Value> = stages.iter().map(|s| json!({ "stage": s })).collect();
            json!({ "currentStage": current, "stages": stages })
        };
        let check = |op: Value, expected: &str| assert_eq!(stopped_at(&op), expected, "{op}");
        check(
            op("policy_check", &["requested", "policy_check"]),
            "policy_check",
        );
        check(
            op("failed", &["requested", "policy_check", "failed"]),
            "policy_check",
        );
        check(
            op(
                "rolled_back",
                &[
                    "requested",
                    "route_cas",
                    "edge_propagating",
                    "healthy",
                    "rolled_back",
                ],
            ),
            "healthy",
        );
        check(op("failed", &["failed"]), "failed");
    }
}
