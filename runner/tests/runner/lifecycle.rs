//! The Allocation lifecycle with real processes: ready and serving, drained, killed at the
//! drain deadline, crashed while starting and while ready, never ready, and stopped with
//! the runner.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Harness, eventually, log_text, process_gone, sandbox_processes};

const WITHIN: Duration = Duration::from_secs(4);

fn pid(status: &Value) -> Result<u64> {
    status["pid"].as_u64().context("status has a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_to_ready_and_serves_with_its_env() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    let (code, created) = h.put(id, &h.spec(id, 1, "serve")?).await?;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["generation"], 1);

    let ready = h.wait_stage(id, "ready", WITHIN).await?;
    let port = ready["port"].as_u64().context("port")?;
    let address = ready["address"].as_str().context("address")?;
    assert_eq!(port, 8080, "the declared port (the default)");
    assert!(
        address.starts_with("http://10.213.") && address.ends_with(":8080"),
        "its own address on the runner's bridge: {address}"
    );
    assert_eq!(ready["artifact_digest"], h.digest.as_str());

    let app: Value = h
        .http
        .get(format!("{address}/"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(app["port"], port.to_string(), "the app sees PORT");
    assert_eq!(
        app["digest"],
        h.digest.as_str(),
        "the app sees RHONE_ARTIFACT_DIGEST"
    );
    assert_eq!(
        app["allocation"],
        id.to_string(),
        "the app sees RHONE_ALLOCATION_ID"
    );
    assert!(log_text(&ready).contains(&format!("app starting on port {port}")));

    let list: Value = h
        .http
        .get(format!("{}/v1/allocations", h.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["runner"]["name"], "test-runner");
    assert_eq!(list["allocations"][0]["allocation_id"], id.to_string());
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_the_process_and_its_children() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    h.put(id, &h.spec(id, 1, "child")?).await?;
    let ready = h.wait_stage(id, "ready", WITHIN).await?;
    let address = ready["address"].as_str().context("address")?;
    let app: Value = h
        .http
        .get(format!("{address}/"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        app["child_pid"].as_u64().is_some(),
        "the app started a child"
    );
    let leader = pid(&ready)?;
    let before = sandbox_processes(id);
    assert!(before.len() >= 2, "the app and its child run: {before:?}");

    let (code, draining) = h.delete(id).await?;
    assert_eq!(code, 202, "{draining}");
    let stopped = h.wait_stage(id, "stopped", WITHIN).await?;
    assert_eq!(stopped["exit_status"], "signal 15 (SIGTERM)", "{stopped:#}");
    assert_eq!(stopped["message"], "drained (signal 15 (SIGTERM))");
    assert_eq!(stopped["address"], Value::Null);
    assert!(process_gone(leader), "the app process was reaped");
    eventually(WITHIN, "the app's child ends with it", || {
        sandbox_processes(id).is_empty()
    })
    .await?;

    let (code, again) = h.delete(id).await?;
    assert_eq!(
        (code, again["stage"].as_str()),
        (202, Some("stopped")),
        "a repeated DELETE"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_ends_in_sigkill() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    let mut spec = h.spec(id, 1, "stubborn")?;
    spec["process"]["drain_timeout_ms"] = 300.into();
    h.put(id, &spec).await?;
    let ready = h.wait_stage(id, "ready", WITHIN).await?;
    h.delete(id).await?;
    let stopped = h.wait_stage(id, "stopped", WITHIN).await?;
    assert_eq!(stopped["exit_status"], "signal 9 (SIGKILL)", "{stopped:#}");
    assert!(
        stopped["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("killed after the 300 ms drain deadline")),
        "{stopped:#}"
    );
    assert!(process_gone(pid(&ready)?));
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_starting_fails_with_exit_status_and_last_line() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    h.put(id, &h.spec(id, 1, "crash")?).await?;
    let failed = h.wait_stage(id, "failed", WITHIN).await?;
    assert_eq!(failed["exit_code"], 3, "{failed:#}");
    assert_eq!(failed["exit_status"], "exit code 3");
    assert_eq!(
        failed["message"],
        "the process exited while starting (exit code 3)"
    );
    let lines = failed["last_log_lines"].as_array().context("log lines")?;
    assert!(
        lines.iter().any(|l| l == "crashing with exit code 3"),
        "the last line is there: {failed:#}"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_ready_fails_with_exit_status_and_last_line() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    h.put(id, &h.spec(id, 1, "serve")?).await?;
    let ready = h.wait_stage(id, "ready", WITHIN).await?;
    let address = ready["address"].as_str().context("address")?;
    h.http.get(format!("{address}/crash")).send().await?;
    let failed = h.wait_stage(id, "failed", WITHIN).await?;
    assert_eq!(failed["exit_status"], "exit code 3", "{failed:#}");
    assert_eq!(
        failed["message"],
        "the process exited on its own (exit code 3)"
    );
    assert!(
        log_text(&failed).ends_with("crashing on request"),
        "{failed:#}"
    );
    assert!(process_gone(pid(&ready)?));
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_timeout_fails_with_log_lines() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    let mut spec = h.spec(id, 1, "never-ready")?;
    spec["process"]["readiness_timeout_ms"] = 1500.into();
    h.put(id, &spec).await?;
    let failed = h.wait_stage(id, "failed", WITHIN).await?;
    let message = failed["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("not ready after 1500 ms: GET http://10.213."),
        "{failed:#}"
    );
    assert!(message.contains("/healthz answered 503"), "{failed:#}");
    assert!(
        log_text(&failed).contains("\"GET /healthz HTTP/1.1\" 503"),
        "{failed:#}"
    );
    // The first line may have left the status's last lines; the allocation's log keeps it.
    let output = std::fs::read_to_string(
        h.work
            .join("allocations")
            .join(id.to_string())
            .join("output.log"),
    )?;
    assert!(output.contains("in mode never-ready"), "{output}");
    assert!(
        sandbox_processes(id).is_empty(),
        "the unready process was stopped"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_shutdown_stops_every_process() -> Result<()> {
    let h = Harness::start().await?;
    let mut pids = Vec::new();
    for _ in 0..2 {
        let id = Uuid::now_v7();
        h.put(id, &h.spec(id, 1, "serve")?).await?;
        pids.push(pid(&h.wait_stage(id, "ready", WITHIN).await?)?);
    }
    // One artifact directory for both allocations of the digest.
    let unpacked = std::fs::read_dir(h.work.join("artifacts"))?.count();
    assert_eq!(unpacked, 1);
    h.shutdown().await?;
    for pid in pids {
        assert!(process_gone(pid), "process {pid} outlived the runner");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_left_by_a_killed_runner_are_removed_at_start() -> Result<()> {
    use rhone_sandbox::{Network, Sandbox, SandboxConfig, SandboxSpec};
    let spec = |id: &str| SandboxSpec {
        id: id.to_owned(),
        command: "exec sleep 300".into(),
        env: vec![],
        cwd: "/".into(),
        binds: vec![],
        limits: rhone_sandbox::Limits::RUN_DEFAULT,
        network: Network::Isolated,
        hostname: "orphan".into(),
        hosts: Vec::new(),
    };
    // A sandbox of a runner that died in this work directory, and one of another owner.
    let dir = Harness::dir()?;
    let ours = Sandbox::new(&SandboxConfig::new(dir.path().join("work/sandbox")))?;
    let other_dir = tempfile::tempdir()?;
    let theirs = Sandbox::new(&SandboxConfig::new(other_dir.path()))?;
    let (orphan_id, decoy_id) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    let mut orphan = ours
        .start(&spec(&orphan_id), Stdio::null(), Stdio::null())
        .await?;
    let mut decoy = theirs
        .start(&spec(&decoy_id), Stdio::null(), Stdio::null())
        .await?;
    eventually(WITHIN, "both sandboxes run", || {
        !sandbox_processes(&orphan_id).is_empty() && !sandbox_processes(&decoy_id).is_empty()
    })
    .await?;

    let h = Harness::start_in(dir, |_| {}).await?;
    // `serve` reaps before it answers.
    h.get(Uuid::now_v7()).await?;
    tokio::time::timeout(WITHIN, orphan.child.wait()).await??;
    assert!(
        sandbox_processes(&orphan_id).is_empty(),
        "the orphan was killed"
    );
    assert!(
        decoy.child.try_wait()?.is_none() && !sandbox_processes(&decoy_id).is_empty(),
        "a sandbox of another owner was killed"
    );
    theirs
        .signal(&decoy_id, nix::sys::signal::Signal::SIGKILL)
        .await;
    let status = decoy.child.wait().await?;
    theirs.finish(&decoy_id, Some(status)).await;
    h.shutdown().await
}

/// The directory (record, log, home) of an allocation that ended over a day ago goes when
/// the runner starts; one that ended recently stays, for on-call.
#[tokio::test]
async fn directories_of_allocations_ended_long_ago_are_removed() -> Result<()> {
    let dir = Harness::dir()?;
    let record = |id: Uuid| {
        serde_json::json!({
            "spec": {
                "allocation_id": id,
                "generation": 1,
                "artifact_digest": format!("sha256:{}", "a".repeat(64)),
                "process": { "command": "exec true", "health_path": "/healthz" },
                "desired": "stop",
            },
            "observed": {
                "stage": "stopped", "ip": null, "port": null, "pid": null,
                "exit_status": "exit code 0", "exit_code": 0, "message": "drained",
            },
        })
    };
    let (old, recent) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [old, recent] {
        let at = dir.path().join("work/allocations").join(id.to_string());
        std::fs::create_dir_all(at.join("home"))?;
        std::fs::write(at.join("output.log"), "the app's last words\n")?;
        std::fs::write(at.join("allocation.json"), record(id).to_string())?;
    }
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(
            dir.path()
                .join("work/allocations")
                .join(old.to_string())
                .join("allocation.json"),
        )?
        .set_modified(two_days_ago)?;
    let allocations = dir.path().join("work/allocations");

    let h = Harness::start_in(dir, |_| {}).await?;
    eventually(WITHIN, "the old directory is removed", || {
        !allocations.join(old.to_string()).exists()
    })
    .await?;
    assert!(
        allocations
            .join(recent.to_string())
            .join("output.log")
            .exists(),
        "the recent one is kept"
    );
    h.shutdown().await
}
