//! What the CLI's end-to-end tests share: the real `rhone` binary, `rhone dev` started on
//! free ports in a temp dir (stopped with SIGTERM when dropped), the example app in a fresh
//! git repository, and plain HTTP through curl.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub const RHONE: &str = env!("CARGO_BIN_EXE_rhone");

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Dev {
    pub child: Child,
    pub config: std::path::PathBuf,
    /// Where `rhone dev`'s stderr (its log) goes.
    pub log: std::path::PathBuf,
    /// What `rhone dev` printed until it was ready.
    pub lines: Vec<String>,
}

impl Drop for Dev {
    /// Ctrl-C first, so `rhone dev` stops its runner's apps and Temporal; a kill only if it
    /// does not stop within 20 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    pub fn rhone(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(RHONE)
            .args(args)
            .env("RHONE_CONFIG", &self.config)
            .output()?)
    }

    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.rhone(args)?;
        if !out.status.success() {
            bail!(
                "rhone {args:?} failed: {}\nrhone dev's log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The last lines `rhone dev` logged (its stderr).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// Five free ports: API, edge, runner, Temporal, Temporal UI.
pub fn free_ports() -> Result<[u16; 5]> {
    Ok([
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    ])
}

pub fn start_dev(dir: &Path, ports: &[u16; 5]) -> Result<Dev> {
    start_dev_with(dir, ports, &[])
}

/// `rhone dev` with `extra` arguments (e.g. `--no-worker`), ready once it says so.
pub fn start_dev_with(dir: &Path, ports: &[u16; 5], extra: &[&str]) -> Result<Dev> {
    let config = dir.join("credentials.json");
    // Appended to across restarts on the same directory.
    let log = dir.join("rhone-dev.log");
    let mut child = Command::new(RHONE)
        .arg("dev")
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--api-port",
            &ports[0].to_string(),
            "--edge-port",
            &ports[1].to_string(),
        ])
        .args([
            "--runner-port",
            &ports[2].to_string(),
            "--temporal-port",
            &ports[3].to_string(),
        ])
        .args(["--temporal-ui-port", &ports[4].to_string()])
        .args(["--edge-admin-port", "0"])
        .env("RHONE_CONFIG", &config)
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?,
        )
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut dev = Dev {
        child,
        config,
        log,
        lines: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("Press Ctrl-C") => return Ok(dev),
            Ok(line) => dev.lines.push(line),
            Err(_) if Instant::now() > deadline => {
                bail!("rhone dev did not start: {:?}", dev.lines)
            }
            Err(_) => {
                if let Some(status) = dev.child.try_wait()? {
                    bail!(
                        "rhone dev exited with {status}: {:?}\nits log:\n{}",
                        dev.lines,
                        dev.log_tail()
                    );
                }
            }
        }
    }
}

pub fn http_status(url: &str, host: Option<&str>) -> Result<u16> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd.arg(url).output()?;
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

/// A fresh git repository holding the example app, committed.
pub fn example_repo(dir: &Path) -> Result<std::path::PathBuf> {
    let repo = dir.join("counter");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/counter");
    let ok = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&repo)
        .status()?
        .success();
    anyhow::ensure!(ok, "copying the example app");
    let ok = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&repo)
        .status()?
        .success();
    anyhow::ensure!(ok, "git init");
    commit_all(&repo, "counter")?;
    Ok(repo)
}

/// Commits everything in `repo` (added, changed, removed) as the test's developer.
pub fn commit_all(repo: &Path, message: &str) -> Result<()> {
    for args in [
        &["add", "-A"][..],
        &[
            "-c",
            "user.email=dev@rhone.local",
            "-c",
            "user.name=dev",
            "commit",
            "-qm",
            message,
        ],
    ] {
        let ok = Command::new("git")
            .args(args)
            .current_dir(repo)
            .status()?
            .success();
        anyhow::ensure!(ok, "git {args:?}");
    }
    Ok(())
}

pub fn http_get(edge_port: u16, host: &str, path: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", "-H", &format!("Host: {host}")])
        .arg(format!("http://127.0.0.1:{edge_port}{path}"))
        .output()?;
    anyhow::ensure!(out.status.success(), "GET {host}{path} failed");
    Ok(String::from_utf8(out.stdout)?)
}

/// Every descendant of process `pid` (children first found, then theirs), from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after its `)`.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        {
            parents.push((child, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}
