//! `rhone dev` as a new user runs it: the real binary starts Temporal, the API, the worker,
//! the edge and the runner; the client commands create a workspace down to an environment
//! through them (a deploy to staging refused, tokens made and revoked); GraphiQL, the
//! Temporal UI and the edge answer; Ctrl-C stops everything.
//! And the two prerequisite errors a user meets first are one clear line each.

mod support;

use std::{
    io::Write,
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use support::{RHONE, example_repo, free_port, http_get, http_status, start_dev};

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

    // Its runner registered itself like any runner: ready, with what this host has, and
    // the bootstrap admin (a platform operator) sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let runner = loop {
        let list: serde_json::Value =
            serde_json::from_str(&dev.ok(&["--json", "runners", "list"])?)?;
        let runner = list
            .as_array()
            .and_then(|l| l.iter().find(|r| r["name"] == "dev-runner-1"))
            .cloned()
            .context("dev-runner-1 is listed")?;
        if runner["status"] == "ready" || Instant::now() > deadline {
            break runner;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(runner["status"], "ready", "{runner}");
    assert_eq!(
        runner["address"],
        format!("http://127.0.0.1:{}", ports[2]),
        "{runner}"
    );
    assert!(
        runner["memoryMb"].as_i64().is_some_and(|m| m > 0)
            && runner["cpuMillis"].as_i64().is_some_and(|c| c >= 1000)
            && runner["subnet"]
                .as_str()
                .is_some_and(|s| s.starts_with("10.213.")),
        "{runner}"
    );
    let table = dev.ok(&["runners", "list"])?;
    assert!(
        table.contains("dev-runner-1") && table.contains("ready"),
        "{table}"
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

    // A deploy to staging is refused before anything is recorded, naming the way there.
    let repo = example_repo(dir.path())?;
    let refused = dev.rhone(&[
        "deploy",
        &repo.display().to_string(),
        "-w",
        "acme",
        "-p",
        "shop",
        "-a",
        "web",
        "--env",
        "staging",
    ])?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("rhone promote"),
        "{stderr}"
    );

    // Tokens: created (shown once, with its expiry), listed, revoked by prefix, refused.
    let created: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "--json",
        "tokens",
        "create",
        "laptop",
        "--expires-in-days",
        "7",
    ])?)?;
    let token = created["token"].as_str().context("token")?;
    let prefix = created["prefix"].as_str().context("prefix")?;
    let graphql = format!("http://127.0.0.1:{}/graphql", ports[0]);
    let me = |token: &str| -> Result<String> {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "Content-Type: application/json"])
            .args(["-d", r#"{"query":"{ me { actor } }"}"#, &graphql])
            .output()?;
        Ok(String::from_utf8(out.stdout)?)
    };
    assert_eq!(me(token)?, "200");
    let listed = dev.ok(&["tokens", "list"])?;
    assert!(
        listed.contains("laptop") && listed.contains(prefix),
        "{listed}"
    );
    let revoked = dev.ok(&["tokens", "revoke", prefix])?;
    assert!(
        revoked.contains("token laptop") && revoked.contains("revoked"),
        "{revoked}"
    );
    assert_eq!(me(token)?, "401");

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
        .args(["--edge-admin-port", "0"])
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

/// A deploy of an app that requires a secret waits at `blocked` naming it; `rhone secrets
/// set` (the value on stdin) clears the gate once `rhone ops retry` validates again, and the
/// deploy reaches `preview_ready`. `secrets list` shows the name and version, never the
/// value, and neither does any answer of the CLI.
#[test]
fn a_secret_set_from_stdin_unblocks_the_deploy_that_needs_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = support::free_ports()?;
    let dev = start_dev(dir.path(), &ports)?;
    let app = ["-w", "acme", "-p", "shop", "-a", "web"];
    dev.ok(&["workspaces", "create", "acme"])?;
    dev.ok(&["projects", "create", "-w", "acme", "shop"])?;
    dev.ok(&["apps", "create", "-w", "acme", "-p", "shop", "web"])?;
    dev.ok(&[
        &["envs", "create"][..],
        &app,
        &["preview", "--kind", "preview"],
    ]
    .concat())?;
    let repo = example_repo(dir.path())?;
    let manifest = repo.join("rhone.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(
        &manifest,
        text.replacen(
            "[wake]",
            "[secrets]\nrequired = [\"STRIPE_KEY\"]\n\n[wake]",
            1,
        ),
    )?;
    support::commit_all(&repo, "needs STRIPE_KEY")?;

    let repo_arg = repo.display().to_string();
    let out = dev.rhone(
        &[
            &["deploy", repo_arg.as_str()][..],
            &app,
            &["--env", "preview"],
        ]
        .concat(),
    )?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("missing secret STRIPE_KEY on environment preview: set it, then retry"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops: serde_json::Value =
        serde_json::from_str(&dev.ok(&["--json", "ops", "list", "--kind", "deploy"])?)?;
    let id = ops[0]["id"].as_str().context("the deploy")?.to_owned();

    const VALUE: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";
    let mut set = Command::new(RHONE)
        .args([&["secrets", "set"][..], &app, &["preview", "STRIPE_KEY"]].concat())
        .env("RHONE_CONFIG", &dev.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    set.stdin
        .take()
        .context("stdin")?
        .write_all(format!("{VALUE}\n").as_bytes())?;
    let set = set.wait_with_output()?;
    let said = String::from_utf8_lossy(&set.stdout);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(
        said.starts_with("set STRIPE_KEY on preview: version 1"),
        "{said}"
    );
    let listed = dev.ok(&[&["secrets", "list"][..], &app, &["preview"]].concat())?;
    assert!(
        listed.contains("STRIPE_KEY") && listed.contains('1'),
        "{listed}"
    );

    let retried = dev.ok(&["ops", "retry", &id, "--reason", "key set"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let op = loop {
        let op: serde_json::Value =
            serde_json::from_str(&dev.ok(&["--json", "ops", "show", &id])?)?;
        if op["status"] == "SUCCEEDED" || op["status"] == "FAILED" {
            break op;
        }
        anyhow::ensure!(Instant::now() < deadline, "{op}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(op["currentStage"], "preview_ready", "{op}");
    // The app got it as $STRIPE_KEY, inside its sandbox.
    let host = op["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| s["evidence"]["route_key"].as_str())
        .context("the preview's host")?;
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(ports[1], host, "/_rhone/stats")?)?;
    use sha2::Digest;
    assert_eq!(
        stats["stripe_key_sha256"],
        hex::encode(sha2::Sha256::digest(VALUE.as_bytes())),
        "{stats}"
    );
    for text in [&said.to_string(), &listed, &retried, &op.to_string()] {
        assert!(!text.contains(VALUE), "the value was shown: {text}");
    }
    Ok(())
}
