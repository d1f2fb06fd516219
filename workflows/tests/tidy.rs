//! The dependency graph carries the big invariants (rust-analyzer's tidy tests): workflows,
//! core and the runner protocol do no I/O because they cannot reach the crates that do it,
//! workflow and core sources do not reach for clocks, randomness, threads or the
//! filesystem, and the runner's callers share its protocol, not the runner.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use serde_json::Value;

/// `package name → (direct dependency names, every transitive dependency name)` of the
/// workspace, normal dependencies only.
fn graph() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            env!("TARGET_TRIPLE"),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let nodes = meta["resolve"]["nodes"].as_array().expect("resolve graph");
    let edges: BTreeMap<&str, Vec<&str>> = nodes
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .expect("kinds")
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().expect("pkg"))
                .collect();
            (n["id"].as_str().expect("id"), deps)
        })
        .collect();
    edges
        .keys()
        .map(|id| {
            let direct = edges[id].iter().map(|d| name_of[d].to_owned()).collect();
            let mut seen = BTreeSet::new();
            let mut todo = edges[id].clone();
            while let Some(d) = todo.pop() {
                if seen.insert(d) {
                    todo.extend(edges[d].iter().copied());
                }
            }
            let all = seen.iter().map(|d| name_of[d].to_owned()).collect();
            (name_of[id].to_owned(), (direct, all))
        })
        .collect()
}

fn check_direct(
    graph: &BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    krate: &str,
    allowed: &[&str],
) {
    let (direct, _) = &graph[krate];
    let extra: Vec<_> = direct
        .iter()
        .filter(|d| !allowed.contains(&d.as_str()))
        .collect();
    assert!(extra.is_empty(), "{krate} must not depend on {extra:?}");
}

#[test]
fn workflows_and_core_reach_no_io_crate() {
    let g = graph();
    check_direct(
        &g,
        "rhone-core",
        &["hex", "serde", "serde_json", "sha2", "thiserror", "uuid"],
    );
    check_direct(
        &g,
        "rhone-runner-protocol",
        &[
            "hex",
            "hmac",
            "rhone-core",
            "serde",
            "serde_json",
            "sha2",
            "thiserror",
            "uuid",
        ],
    );
    check_direct(
        &g,
        "rhone-workflows",
        &[
            "rhone-core",
            "temporalio-common",
            "temporalio-macros",
            "temporalio-workflow",
            "futures",
            "serde",
            "serde_json",
            "uuid",
        ],
    );
    let forbidden = [
        "rhone-schema",
        "rhone-activities",
        "rhone-api",
        "sea-orm",
        "sqlx",
        "reqwest",
        "axum",
        "aws-sdk-s3",
        "oci-client",
    ];
    for krate in ["rhone-core", "rhone-runner-protocol", "rhone-workflows"] {
        let (_, all) = &g[krate];
        let bad: Vec<_> = forbidden.iter().filter(|f| all.contains(**f)).collect();
        assert!(bad.is_empty(), "{krate} reaches {bad:?}");
    }
    // The API starts workflows; it never runs activities itself.
    assert!(
        !g["rhone-api"].1.contains("rhone-activities"),
        "rhone-api must not depend on rhone-activities"
    );
    // Activities speak the runner protocol; only their tests start a runner.
    for krate in ["rhone-activities", "rhone-schema"] {
        assert!(
            !g[krate].1.contains("rhone-runner"),
            "{krate} must not depend on rhone-runner (use rhone-runner-protocol)"
        );
    }
}

#[test]
fn workflow_sources_use_no_clock_randomness_or_io() {
    let forbidden = [
        "std::fs",
        "std::net",
        "std::thread",
        "std::time::Instant",
        "SystemTime",
        "tokio::",
        "rand::",
        "Uuid::new_v4",
        "Uuid::now_v7",
        "reqwest",
        "sea_orm",
    ];
    let mut hits = Vec::new();
    for dir in ["src", "../core/src"] {
        for (p, text) in rust_sources(dir) {
            for f in forbidden {
                if text.contains(f) {
                    hits.push(format!("{}: {f}", p.display()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "workflow code must be deterministic and do no I/O:\n{}",
        hits.join("\n")
    );
}

/// Temporal keeps every workflow input, activity input and activity result in the
/// workflow's history, which anyone with the Temporal UI reads. Every one of those types is
/// defined in `rhone-workflows`: none may hold a secret (a `Secret`, a token, a credential,
/// a password, a key). Activities look secrets up themselves and return none.
#[test]
fn workflow_histories_carry_no_secret() {
    let words = [
        "secret",
        "token",
        "credential",
        "password",
        "private_key",
        "api_key",
    ];
    let mut hits = Vec::new();
    for (p, text) in rust_sources("src") {
        // Code only: comments may say what is checked (`secrets_bound`).
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            let lower = line.to_lowercase();
            for w in words {
                if lower.contains(w) {
                    hits.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "a workflow or activity type names a secret; Temporal histories are readable:\n{}",
        hits.join("\n")
    );
}

/// A step that may run long runs under a heartbeat timeout (`stages::watched`), so a worker
/// lost mid-way is seen within seconds, not after the step's whole start-to-close timeout:
/// no activity option without one allows more than 30 s.
#[test]
fn long_steps_run_under_a_heartbeat_timeout() {
    const LONGEST_UNWATCHED_SECS: u64 = 30;
    let mut hits = Vec::new();
    for (p, text) in rust_sources("src") {
        let code: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        for call in ["step_options(", "with_start_to_close_timeout("] {
            let opening = format!("{call}Duration::from_secs(");
            for (at, _) in code.match_indices(&opening) {
                let digits: String = code[at + opening.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if digits
                    .parse::<u64>()
                    .is_ok_and(|secs| secs > LONGEST_UNWATCHED_SECS)
                {
                    hits.push(format!("{}: {call}{digits} s…)", p.display()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "steps allowed more than {LONGEST_UNWATCHED_SECS} s without a heartbeat timeout (use stages::watched or watched_attempts):\n{}",
        hits.join("\n")
    );
}

/// Every `.rs` file below `dir` (relative to this crate) with its text.
fn rust_sources(dir: &str) -> Vec<(std::path::PathBuf, String)> {
    let mut todo = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)];
    let mut sources = Vec::new();
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(
                std::fs::read_dir(&p)
                    .expect("readable dir")
                    .map(|e| e.expect("entry").path()),
            );
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).expect("readable source");
            sources.push((p, text));
        }
    }
    sources
}
