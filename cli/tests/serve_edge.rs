//! `rhone serve edge` started before Temporal: it serves meanwhile (every awake app needs no
//! Temporal), keeps trying to connect, and connects once a Temporal server answers at the
//! configured address. Its status for on-call is on the admin listener only.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use support::{RHONE, free_port};

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rhone serve edge` on `edge_port` (admin listener on `admin_port`) over a fresh SQLite
/// DB, with Temporal expected on `temporal_port`; its stderr goes to `log_path`.
fn start_edge(
    dir: &std::path::Path,
    temporal_port: u16,
    edge_port: u16,
    admin_port: u16,
    log_path: &std::path::Path,
) -> Result<Killed> {
    Ok(Killed(
        Command::new(RHONE)
            .args(["serve", "edge"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RHONE_DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.join("control.db").display()),
            )
            .env(
                "RHONE_TEMPORAL_ADDRESS",
                format!("127.0.0.1:{temporal_port}"),
            )
            .env("RHONE_LISTEN", format!("127.0.0.1:{edge_port}"))
            .env("RHONE_EDGE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("RHONE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log_path)?)
            .spawn()?,
    ))
}

/// Waits up to a minute for `done`; fails with the edge's log.
fn wait(log_path: &std::path::Path, what: &str, done: &dyn Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        ensure!(
            Instant::now() < deadline,
            "{what}:\n{}",
            std::fs::read_to_string(log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The route table (every route key, allocation address and held request) is on-call's:
/// `/_rhone/status` answers on the admin listener and is no edge path on the public one, on
/// any host.
#[test]
fn the_status_is_served_on_the_admin_listener_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (edge_port, admin_port) = (free_port()?, free_port()?);
    let log_path = dir.path().join("edge.log");
    let _edge = start_edge(dir.path(), free_port()?, edge_port, admin_port, &log_path)?;
    let admin = format!("http://127.0.0.1:{admin_port}/_rhone/status");
    wait(&log_path, "the admin listener serves the status", &|| {
        support::http_status(&admin, None).ok() == Some(200)
    })?;
    let body = support::http_get(admin_port, "127.0.0.1", "/_rhone/status")?;
    let status: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(
        status["loaded"] == true && status.get("cold").is_some(),
        "{body}"
    );
    let public = format!("http://127.0.0.1:{edge_port}/_rhone/status");
    for host in [None, Some("localhost"), Some("app.example.com")] {
        let code = support::http_status(&public, host)?;
        ensure!(
            code == 404,
            "public /_rhone/status with Host {host:?}: {code}"
        );
    }
    ensure!(
        support::http_status(
            &format!("http://127.0.0.1:{edge_port}/_rhone/healthz"),
            None
        )? == 200
    );
    Ok(())
}

#[test]
fn the_edge_keeps_trying_temporal_until_it_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (temporal_port, ui_port, edge_port) = (free_port()?, free_port()?, free_port()?);
    let log_path = dir.path().join("edge.log");
    let _edge = start_edge(
        dir.path(),
        temporal_port,
        edge_port,
        free_port()?,
        &log_path,
    )?;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait = |what: &str, done: &dyn Fn() -> bool| wait(&log_path, what, done);
    let healthz = format!("http://127.0.0.1:{edge_port}/_rhone/healthz");
    wait("the edge serves without Temporal", &|| {
        support::http_status(&healthz, None).ok() == Some(200)
    })?;
    wait("the edge tries again", &|| {
        log().matches("no Temporal yet").count() >= 2
    })?;
    ensure!(!log().contains("connected to Temporal"), "{}", log());

    let _temporal = Killed(
        Command::new("temporal")
            .args(["server", "start-dev", "--ip", "127.0.0.1", "--headless"])
            .args(["--port", &temporal_port.to_string()])
            .args(["--ui-port", &ui_port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait("the edge connects once Temporal answers", &|| {
        log().contains("connected to Temporal")
    })?;
    ensure!(support::http_status(&healthz, None)? == 200);
    Ok(())
}
