//! The sandbox with the real runtime: what a process inside sees and cannot do, its limits,
//! and the cleanup. (The escape suite through the runner is `runner/tests/runner/escape.rs`;
//! builds are checked in `activities/tests/deploy_activities.rs`.)

use std::process::Stdio;

use rhone_sandbox::{Bind, Limits, Network, Sandbox, SandboxConfig, SandboxSpec};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn spec(id: &str, command: &str, limits: Limits) -> SandboxSpec {
    SandboxSpec {
        id: id.to_owned(),
        command: command.to_owned(),
        env: vec![],
        cwd: "/".into(),
        binds: vec![],
        limits,
        network: Network::Isolated,
        hostname: "test".into(),
        hosts: Vec::new(),
    }
}

/// Runs `command` to its end; its exit, stdout and whether the OOM killer ended it.
async fn run(sandbox: &Sandbox, spec: &SandboxSpec) -> Result<(i32, String, bool)> {
    let started = sandbox
        .start(spec, Stdio::piped(), Stdio::inherit())
        .await?;
    let out = started.child.wait_with_output().await?;
    let exit = sandbox.finish(&spec.id, Some(out.status)).await;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        exit.oom_killed,
    ))
}

#[tokio::test]
async fn a_process_runs_unprivileged_with_its_output() -> Result {
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(&SandboxConfig::new(dir.path().join("state")))?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    rhone_sandbox::chown_tree(&home, rhone_sandbox::host_uid("t-unpriv"))?;
    let mut s = spec(
        "t-unpriv",
        "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; echo hi > $HOME/f && cat $HOME/f; hostname; exit 7",
        Limits::RUN_DEFAULT,
    );
    s.binds.push(Bind::writable(&home, rhone_sandbox::HOME));
    let (code, out, oom) = run(&sandbox, &s).await?;
    assert_eq!(code, 7, "{out}");
    assert!(!oom);
    assert!(out.starts_with("1000\n"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "a filter is on: {out}");
    assert!(out.contains("hi\ntest\n"), "{out}");
    assert!(
        !dir.path().join("state/bundles/t-unpriv").exists(),
        "the bundle is removed"
    );
    Ok(())
}

#[tokio::test]
async fn the_seccomp_filter_refuses_namespaces_and_mounts() -> Result {
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(&SandboxConfig::new(dir.path()))?;
    let (_, out, _) = run(
        &sandbox,
        &spec(
            "t-seccomp",
            "unshare -U true 2>&1 | tail -n1; unshare -r true 2>&1 | tail -n1; echo done",
            Limits::RUN_DEFAULT,
        ),
    )
    .await?;
    assert_eq!(out.matches("Operation not permitted").count(), 2, "{out}");
    Ok(())
}

#[tokio::test]
async fn over_the_memory_limit_is_an_oom_kill() -> Result {
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(&SandboxConfig::new(dir.path()))?;
    let limits = Limits {
        memory_mb: 32,
        ..Limits::RUN_DEFAULT
    };
    let (code, _, oom) = run(
        &sandbox,
        &spec(
            "t-oom",
            "python3 -c 'a = [bytearray(1 << 20) for _ in range(256)]'",
            limits,
        ),
    )
    .await?;
    assert_eq!((code, oom), (137, true));
    let (code, _, oom) = run(&sandbox, &spec("t-fine", "exit 0", limits)).await?;
    assert_eq!((code, oom), (0, false));
    Ok(())
}

#[tokio::test]
async fn isolated_sandboxes_have_loopback_only() -> Result {
    let dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(&SandboxConfig::new(dir.path()))?;
    let (_, out, _) = run(
        &sandbox,
        &spec(
            "t-net",
            "ls /sys/class/net 2>/dev/null || cat /proc/net/dev | tail -n +3 | cut -d: -f1",
            Limits::RUN_DEFAULT,
        ),
    )
    .await?;
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"], "{out}");
    Ok(())
}
