//! `rhone dev` as a new user runs it: the real binary starts Temporal, the API, the worker,
//! the edge and the runner; the client commands create a workspace down to an environment
//! through them; GraphiQL, the Temporal UI and the edge answer; Ctrl-C stops everything.
//! And the two prerequisite errors a user meets first are one clear line each.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const RHONE: &str = env!("CARGO_BIN_EXE_rhone");

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Dev {
    child: Child,
    config: std::path::PathBuf,
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
    fn rhone(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(RHONE)
            .args(args)
            .env("RHONE_CONFIG", &self.config)
            .output()?)
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.rhone(args)?;
        if !out.status.success() {
            bail!(
                "rhone {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

fn start_dev(dir: &Path, ports: &[u16; 5]) -> Result<Dev> {
    let config = dir.join("credentials.json");
    let mut child = Command::new(RHONE)
        .args(["dev", "--data-dir"])
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
        .env("RHONE_CONFIG", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut dev = Dev { child, config };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("Press Ctrl-C") => return Ok(dev),
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() > deadline => bail!("rhone dev did not start: {seen:?}"),
            Err(_) => {
                if let Some(status) = dev.child.try_wait()? {
                    bail!("rhone dev exited with {status}: {seen:?}");
                }
            }
        }
    }
}

fn http_status(url: &str, host: Option<&str>) -> Result<u16> {
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

#[test]
fn rhone_dev_runs_the_platform_for_the_cli() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = [
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    ];
    let mut dev = start_dev(dir.path(), &ports)?;

    assert!(
        dir.path().join("data/admin-token").exists(),
        "the bootstrap token is kept"
    );
    dev.ok(&["workspaces", "create", "acme"])?;
    dev.ok(&["projects", "create", "-w", "acme", "shop"])?;
    dev.ok(&["apps", "create", "-w", "acme", "-p", "shop", "web"])?;
    let env = dev.ok(&[
        "envs", "create", "-w", "acme", "-p", "shop", "-a", "web", "staging", "--kind", "staging",
    ])?;
    assert!(
        env.contains("requested") && env.contains("applied") && env.contains("succeeded"),
        "{env}"
    );

    let ops: serde_json::Value = serde_json::from_str(&dev.ok(&["--json", "ops", "list"])?)?;
    let kinds: Vec<&str> = ops
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "ENVIRONMENT_CREATE",
            "APP_CREATE",
            "PROJECT_CREATE",
            "WORKSPACE_CREATE"
        ]
    );

    // A duplicate is refused with the API's code, and the CLI exits non-zero.
    let dup = dev.rhone(&[
        "envs", "create", "-w", "acme", "-p", "shop", "-a", "web", "staging", "--kind", "staging",
    ])?;
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("CONFLICT"),
        "{dup:?}"
    );

    assert_eq!(
        http_status(&format!("http://127.0.0.1:{}/graphql", ports[0]), None)?,
        200,
        "GraphiQL"
    );
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{}/", ports[4]), None)?,
        200,
        "Temporal UI"
    );
    assert_eq!(
        http_status(
            &format!("http://127.0.0.1:{}/", ports[1]),
            Some("nobody.example")
        )?,
        404,
        "edge"
    );
    assert_eq!(
        http_status(&format!("http://127.0.0.1:{}/healthz", ports[2]), None)?,
        200,
        "runner"
    );

    // Ctrl-C stops the whole tree, Temporal included.
    Command::new("kill")
        .args(["-INT", &dev.child.id().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dev.child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            bail!("rhone dev did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    assert!(
        TcpListener::bind(("127.0.0.1", ports[3])).is_ok(),
        "Temporal stopped with it"
    );
    Ok(())
}

/// A fresh git repository holding the example app, committed.
fn example_repo(dir: &Path) -> Result<std::path::PathBuf> {
    let repo = dir.join("counter");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/counter");
    let ok = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&repo)
        .status()?
        .success();
    anyhow::ensure!(ok, "copying the example app");
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.email=dev@rhone.local",
            "-c",
            "user.name=dev",
            "commit",
            "-qm",
            "counter",
        ],
    ] {
        let ok = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .status()?
            .success();
        anyhow::ensure!(ok, "git {args:?}");
    }
    Ok(repo)
}

/// One WebSocket text round trip by hand (RFC 6455: masked client frame, plain server frame).
fn websocket_echo(edge_port: u16, host: &str, path: &str, text: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", edge_port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
    // The app greets first with its session id, then echoes.
    let hello = read_text_frame(&mut s)?;
    anyhow::ensure!(hello.contains("\"session\""), "greeting: {hello}");
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len())?];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame)?;
    read_text_frame(&mut s)
}

fn read_text_frame(s: &mut std::net::TcpStream) -> Result<String> {
    use std::io::Read;
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr)?;
    let len = match hdr[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l)?;
            usize::from(u16::from_be_bytes(l))
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok(String::from_utf8(payload)?)
}

fn http_get(edge_port: u16, host: &str, path: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", "-H", &format!("Host: {host}")])
        .arg(format!("http://127.0.0.1:{edge_port}{path}"))
        .output()?;
    anyhow::ensure!(out.status.success(), "GET {host}{path} failed");
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn deploy_serves_the_validated_artifact_at_the_preview_host() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = [
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    ];
    let dev = start_dev(dir.path(), &ports)?;
    let repo = example_repo(dir.path())?;
    dev.ok(&["workspaces", "create", "acme"])?;
    dev.ok(&["projects", "create", "-w", "acme", "shop"])?;
    dev.ok(&["apps", "create", "-w", "acme", "-p", "shop", "web"])?;
    dev.ok(&[
        "envs", "create", "-w", "acme", "-p", "shop", "-a", "web", "preview", "--kind", "preview",
    ])?;

    let repo_arg = repo.display().to_string();
    let out = dev.ok(&[
        "deploy", &repo_arg, "-w", "acme", "-p", "shop", "-a", "web", "--env", "preview",
    ])?;
    for stage in [
        "queued",
        "cloning",
        "building",
        "validating",
        "preview_ready",
    ] {
        assert!(out.contains(stage), "{stage} missing in:\n{out}");
    }
    let host = "preview.web.shop.acme.rhone.localhost";
    assert!(
        out.contains(&format!("preview ready: http://{host}:{}/", ports[1])),
        "{out}"
    );

    let ops: serde_json::Value =
        serde_json::from_str(&dev.ok(&["--json", "ops", "list", "--kind", "deploy"])?)?;
    let id = ops[0]["id"].as_str().context("a deploy operation")?;
    let op: serde_json::Value = serde_json::from_str(&dev.ok(&["--json", "ops", "show", id])?)?;
    let recorded = op["stages"]
        .as_array()
        .and_then(|s| s.last())
        .map(|s| s["evidence"]["digest"].clone());
    let recorded = recorded
        .and_then(|d| d.as_str().map(str::to_owned))
        .context("preview_ready records the digest")?;
    assert!(recorded.starts_with("sha256:"), "{recorded}");

    let page = http_get(ports[1], host, "/")?;
    assert!(page.contains("<h1>Counter</h1>"), "{page}");
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(ports[1], host, "/_rhone/stats")?)?;
    assert_eq!(
        stats["artifact_digest"],
        recorded.as_str(),
        "the edge serves exactly the validated artifact"
    );

    let echo: serde_json::Value = serde_json::from_str(&websocket_echo(
        ports[1],
        host,
        "/_vango/live?path=/",
        "hello",
    )?)?;
    assert_eq!(echo["echo"], "hello", "{echo}");
    assert!(
        echo["session"].as_str().is_some_and(|s| !s.is_empty()),
        "{echo}"
    );
    Ok(())
}

#[test]
fn missing_temporal_is_one_clear_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(RHONE)
        .args(["dev", "--data-dir"])
        .arg(dir.path())
        .args(["--api-port", "0", "--edge-port", "0", "--runner-port", "0"])
        .env("PATH", "/nonexistent")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("`temporal` CLI is not on PATH") && err.contains("install-deps.sh"),
        "{err}"
    );
    Ok(())
}

#[test]
fn taken_port_is_one_clear_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port().to_string();
    let out = Command::new(RHONE)
        .args(["dev", "--data-dir"])
        .arg(dir.path())
        .args(["--api-port", &port])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("port {port} (API)")) && err.contains("--api-port"),
        "{err}"
    );
    Ok(())
}
