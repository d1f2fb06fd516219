//! `rhone serve edge` started before Temporal: it serves meanwhile (every awake app needs no
//! Temporal), keeps trying to connect, and connects once a Temporal server answers at the
//! configured address.

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

#[test]
fn the_edge_keeps_trying_temporal_until_it_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (temporal_port, ui_port, edge_port) = (free_port()?, free_port()?, free_port()?);
    let log_path = dir.path().join("edge.log");
    let _edge = Killed(
        Command::new(RHONE)
            .args(["serve", "edge"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RHONE_DATABASE_URL",
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("control.db").display()
                ),
            )
            .env(
                "RHONE_TEMPORAL_ADDRESS",
                format!("127.0.0.1:{temporal_port}"),
            )
            .env("RHONE_LISTEN", format!("127.0.0.1:{edge_port}"))
            .env("RHONE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()?,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait = |what: &str, done: &dyn Fn() -> bool| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            ensure!(Instant::now() < deadline, "{what}:\n{}", log());
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
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
