//! The escape suite for builds: a hostile `[build] command` tries to get out of its sandbox,
//! each way in a test of its own, through the real `build_artifact` (a real git repository
//! of `examples/counter` with `attack.py` committed, the real runtime). Every attempt
//! prints `ESCAPE <attempt> ok|blocked <detail>` into the build log; escapes must be
//! blocked, the positive controls ok, and where the attempt is harmless the same command is
//! also run on the host without a sandbox (`unsandboxed`) to show what it would reach there,
//! so each test fails if the sandbox is not in the way.

// This suite uses some of the shared fixtures only.
#[allow(dead_code)]
mod deploy_support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use deploy_support::{Deployment, Fixture, Repo, replace_in};
use rhone_activities::deploy::DeployError;
use rhone_store::{ArtifactStore, Digest};
use tokio::net::TcpListener;
use uuid::Uuid;

/// How long one hostile build may take, from the deployment to its log.
const WITHIN: Duration = Duration::from_secs(10);

/// The hostile build: each argument `KIND=ARG` is one attempt, reported on a line of its
/// own as `ESCAPE KIND=ARG ok DETAIL` (it worked) or `ESCAPE KIND=ARG blocked DETAIL`.
const ATTACK_PY: &str = r#"
import os, socket, sys, time

def read(path):
    with open(path, "rb") as f:
        return repr(f.read(64))

def write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return "written"

def listdir(path):
    return " ".join(sorted(os.listdir(path)))

def pids(path):
    found = sorted(int(n) for n in os.listdir(path) if n.isdigit())
    return f"{len(found)} {found}"

def envnames(path):
    # Names only: a value must never reach the log through this suite.
    with open(path, "rb") as f:
        entries = f.read().split(b"\0")
    return " ".join(sorted(e.split(b"=", 1)[0].decode() for e in entries if e))

def connect(target):
    host, port = target.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=1).close()
    return "connected"

def memory(mb):
    hog = [bytearray(1 << 20) for _ in range(int(mb))]
    return f"allocated {len(hog)} MiB"

def forkbomb(cap):
    children = 0
    try:
        while children < int(cap):
            if os.fork() == 0:
                time.sleep(20)
                os._exit(0)
            children += 1
    except OSError as e:
        raise OSError(f"forked {children}: {e}")
    return f"forked {children}"

ATTACKS = {f.__name__: f for f in (read, write, listdir, pids, envnames, connect, memory, forkbomb)}

for arg in sys.argv[1:]:
    kind, _, value = arg.partition("=")
    attack = ATTACKS[kind]
    try:
        print(f"ESCAPE {arg} ok {attack(value)}", flush=True)
    except Exception as e:
        print(f"ESCAPE {arg} blocked {type(e).__name__}: {e}", flush=True)
"#;

/// `python3 attack.py ATTEMPTS…`, then `exit 1` so the build fails once every attempt ran
/// (its status shows it was not killed half-way).
fn attack(attempts: &[String]) -> String {
    format!("python3 attack.py {}; exit 1", attempts.join(" "))
}

/// `examples/counter` with `attack.py`, `[build] command = COMMAND` and `extra` lines of
/// `[build]` (limits), committed.
fn hostile_repo(fx: &Fixture, command: &str, extra: &str) -> Result<Repo> {
    ensure!(!command.contains('\''), "a TOML literal string: {command}");
    fx.repo("hostile", |dir| {
        std::fs::write(dir.join("attack.py"), ATTACK_PY)?;
        replace_in(
            &dir.join("rhone.toml"),
            "command = \"python3 build.py\"",
            &format!("command = '{command}'{extra}"),
        )
    })
}

/// Builds the hostile repository with `build_artifact`; the build log and the error (a
/// hostile build never produces an artifact).
async fn hostile_build(fx: &Fixture, command: &str, extra: &str) -> Result<(String, DeployError)> {
    let (_, log, err) = hostile_deploy(fx, command, extra).await?;
    Ok((log, err))
}

/// [`hostile_build`] with the deployment it built.
async fn hostile_deploy(
    fx: &Fixture,
    command: &str,
    extra: &str,
) -> Result<(Deployment, String, DeployError)> {
    let repo = hostile_repo(fx, command, extra)?;
    let started = Instant::now();
    let (d, built) = fx.deploy(&repo).await?;
    let log = fx.build_log(d).await?;
    let Err(err) = built else {
        bail!("the hostile build succeeded: {built:?}\n{log}");
    };
    ensure!(
        started.elapsed() < WITHIN,
        "the build took {:?}\n{log}",
        started.elapsed()
    );
    Ok((d, log, err))
}

/// Host processes that run as the build's sandbox user, once the build ended: none may be
/// left (waits a little for the kernel to reap what the runtime killed).
async fn leftovers(d: Deployment) -> Result<Vec<u32>> {
    let uid = rhone_sandbox::host_uid(&format!("build-{}", d.id)).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next());
            if real == Some(uid.as_str()) {
                found.push(pid);
            }
        }
        if found.is_empty() || Instant::now() > deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A build that ran every attempt to its end: `exit 1` after `attack.py`.
fn ran_to_the_end(err: &DeployError, log: &str) {
    assert!(
        matches!(err, DeployError::BuildFailed { status, .. } if status == "exited with status 1"),
        "{err}\n{log}"
    );
}

/// Runs `command` as the build would run without its sandbox: on the host, from a
/// directory as deep in the work dir as a checkout (`<work_dir>/<id>/src`) holding
/// `attack.py`. Its stdout and stderr. Only for attempts that harm nothing when they work.
async fn unsandboxed(fx: &Fixture, command: &str) -> Result<String> {
    let scratch = fx.config.work_dir.join(Uuid::new_v4().to_string());
    let dir = scratch.join("src");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("attack.py"), ATTACK_PY)?;
    let out = tokio::time::timeout(
        WITHIN,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the unsandboxed command timed out")??;
    std::fs::remove_dir_all(&scratch)?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The outcome (`ok` or `blocked`) and detail of `attempt`, from its `ESCAPE` line.
fn outcome<'a>(log: &'a str, attempt: &str) -> Result<(&'a str, &'a str)> {
    let prefix = format!("ESCAPE {attempt} ");
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .with_context(|| format!("no outcome of {attempt} in:\n{log}"))?;
    Ok(line.split_once(' ').unwrap_or((line, "")))
}

/// The detail of `attempt`, which must have been blocked.
fn blocked<'a>(log: &'a str, attempt: &str) -> Result<&'a str> {
    let (verdict, detail) = outcome(log, attempt)?;
    ensure!(
        verdict == "blocked",
        "{attempt} was not blocked: {verdict} {detail}\n{log}"
    );
    Ok(detail)
}

/// The detail of `attempt`, which must have worked.
fn worked<'a>(log: &'a str, attempt: &str) -> Result<&'a str> {
    let (verdict, detail) = outcome(log, attempt)?;
    ensure!(
        verdict == "ok",
        "{attempt} did not work: {verdict} {detail}\n{log}"
    );
    Ok(detail)
}

/// `read=PATH` for each path.
fn reads(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| format!("read={p}")).collect()
}

/// `path` as text, which must have no spaces (the attempts are split on spaces).
fn plain(path: &Path) -> Result<String> {
    let s = path.display().to_string();
    ensure!(!s.contains(char::is_whitespace), "{s}");
    Ok(s)
}

#[tokio::test]
async fn a_build_cannot_read_the_admin_token() -> Result<()> {
    let fx = Fixture::new().await?;
    let token = format!("rhone_admin_{}", Uuid::new_v4().simple());
    // In the worker's data dir: the checkout is `<data>/work/<id>/src`, three levels down.
    let path = plain(&fx.tmp.path().join("admin-token"))?;
    std::fs::write(&path, &token)?;
    let attempts = reads(&[
        &path,
        "../../../admin-token",
        "../../admin-token",
        "../admin-token",
        &format!("/proc/self/root{path}"),
        &format!("/proc/1/root{path}"),
    ]);
    // The original report, then the same reads from Python.
    let command = format!(
        "cat ../../../admin-token; echo; cat {path}; echo; {}",
        attack(&attempts)
    );
    let host = unsandboxed(&fx, &command).await?;
    assert!(
        host.contains(&token),
        "without the sandbox the token is readable: {host}"
    );

    let (log, err) = hostile_build(&fx, &command, "").await?;
    assert!(
        !log.contains(&token),
        "the token is in the build log:\n{log}"
    );
    let message = err.to_string();
    assert!(
        !message.contains(&token),
        "the token is in the error: {message}"
    );
    ran_to_the_end(&err, &log);
    for attempt in &attempts {
        blocked(&log, attempt)?;
    }
    assert!(
        log.contains("../../../admin-token: No such file or directory"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_build_cannot_read_the_control_db() -> Result<()> {
    let fx = Fixture::new().await?;
    let db = fx.tmp.path().join("rhone.db");
    assert!(db.is_file(), "the fixture's control DB is a file");
    let path = plain(&db)?;
    let data = plain(fx.tmp.path())?;
    let attempts = [
        format!("read={path}"),
        "read=../../../rhone.db".to_owned(),
        format!("listdir={data}"),
    ];
    let root = "listdir=../../..".to_owned();
    let mut all = attempts.to_vec();
    all.push(root.clone());
    let command = attack(&all);
    let host = unsandboxed(&fx, &command).await?;
    assert!(
        host.contains("SQLite format 3"),
        "without the sandbox the DB is readable: {host}"
    );

    let (log, err) = hostile_build(&fx, &command, "").await?;
    ran_to_the_end(&err, &log);
    for attempt in &attempts {
        blocked(&log, attempt)?;
    }
    // `../../..` of the checkout is the sandbox's own root.
    let listed = worked(&log, &root)?;
    assert!(listed.split(' ').any(|e| e == "src"), "{listed}");
    assert!(!listed.contains("rhone.db"), "{listed}");
    assert!(
        !log.contains("SQLite"),
        "the DB is in the build log:\n{log}"
    );
    assert!(!err.to_string().contains("SQLite"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_build_sees_only_its_own_processes() -> Result<()> {
    let fx = Fixture::new().await?;
    let me = std::process::id();
    let worker_env = format!("read=/proc/{me}/environ");
    let worker_cmdline = format!("read=/proc/{me}/cmdline");
    let list = "pids=/proc".to_owned();
    let init_env = "envnames=/proc/1/environ".to_owned();
    let init_cmdline = "read=/proc/1/cmdline".to_owned();
    let command = attack(&[
        worker_env.clone(),
        worker_cmdline.clone(),
        list.clone(),
        init_env.clone(),
        init_cmdline.clone(),
    ]);
    let host = unsandboxed(&fx, &command).await?;
    worked(&host, &worker_env).context("without the sandbox")?;
    let host_pids: usize = worked(&host, &list)?
        .split(' ')
        .next()
        .context("count")?
        .parse()?;
    assert!(host_pids > 4, "the host has more processes: {host}");

    let (log, err) = hostile_build(&fx, &command, "").await?;
    ran_to_the_end(&err, &log);
    blocked(&log, &worker_env)?;
    blocked(&log, &worker_cmdline)?;
    let listed = worked(&log, &list)?;
    let count: usize = listed.split(' ').next().context("count")?.parse()?;
    assert!(
        (1..=4).contains(&count),
        "only the sandbox's processes are in /proc: {listed}"
    );
    // PID 1 is the sandbox's own first process, with only what the build was given.
    let cmdline = worked(&log, &init_cmdline)?;
    assert!(cmdline.starts_with("b'sh\\x00-c\\x00"), "{cmdline}");
    // Readable or not (it runs as the same user), it holds only what the build was given.
    if let Ok(names) = worked(&log, &init_env) {
        let given: BTreeSet<&str> = [
            "PATH",
            "HOME",
            "CI",
            "RHONE_COMMIT_SHA",
            "RHONE_DEPLOYMENT_ID",
            "LANG",
            "LC_ALL",
            "LC_CTYPE",
            "TZ",
        ]
        .into();
        let seen: BTreeSet<&str> = names.split(' ').filter(|n| !n.is_empty()).collect();
        assert!(
            seen.is_subset(&given),
            "PID 1's environment is the build's own: {names}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_build_cannot_read_another_tenants_files() -> Result<()> {
    let fx = Fixture::new().await?;
    let other = Uuid::new_v4();
    let secret = format!("secret of tenant {}", Uuid::new_v4().simple());
    let theirs = fx.config.work_dir.join(other.to_string());
    std::fs::create_dir_all(theirs.join("src"))?;
    std::fs::write(theirs.join("secret"), &secret)?;
    std::fs::write(theirs.join("src/secret"), &secret)?;
    let work = plain(&fx.config.work_dir)?;
    let attempts = [
        format!("read={work}/{other}/secret"),
        format!("read={work}/{other}/src/secret"),
        format!("read=../{other}/secret"),
        format!("read=../../{other}/secret"),
        format!("listdir={work}"),
        format!("listdir={work}/{other}"),
        // The builds' sandbox state: bundles and runtime state of every build.
        format!("listdir={work}/sandbox"),
    ];
    let own = "read=/src/rhone.toml".to_owned();
    let up = "listdir=..".to_owned();
    let mut all = attempts.to_vec();
    all.extend([own.clone(), up.clone()]);
    let command = attack(&all);
    let host = unsandboxed(&fx, &command).await?;
    assert!(
        host.contains(&secret),
        "without the sandbox the other tenant's file is readable: {host}"
    );

    let (log, err) = hostile_build(&fx, &command, "").await?;
    ran_to_the_end(&err, &log);
    for attempt in &attempts {
        blocked(&log, attempt)?;
    }
    // Its own checkout is there: the reads above failed for the right reason.
    let toml = worked(&log, &own)?;
    assert!(toml.contains("Rhone app manifest"), "{toml}");
    let listed = worked(&log, &up)?;
    assert!(!listed.contains(&other.to_string()), "{listed}");
    assert!(
        !log.contains(&secret),
        "the secret is in the build log:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_build_cannot_write_outside_its_checkout_and_tmp() -> Result<()> {
    let fx = Fixture::new().await?;
    let ArtifactStore::Local(local) = &fx.config.store else {
        bail!("the fixture's store is local");
    };
    let any = local.path_of(&Digest::of(b""));
    let store = any
        .parent()
        .and_then(Path::parent)
        .context("the store's directory")?
        .to_owned();
    std::fs::create_dir_all(&store)?;
    let name = format!("rhone-escape-{}", Uuid::new_v4().simple());
    let outside: Vec<PathBuf> = [
        PathBuf::from("/usr").join(&name),
        PathBuf::from("/etc").join(&name),
        PathBuf::from("/bin").join(&name),
        PathBuf::from("/").join(&name),
        store.join(&name),
    ]
    .into();
    let mut attempts = outside
        .iter()
        .map(|p| Ok(format!("write={}", plain(p)?)))
        .collect::<Result<Vec<_>>>()?;
    attempts.extend([
        "write=/etc/passwd".to_owned(),
        "write=/src/../escape".to_owned(),
        format!("write=../../../artifacts/{name}"),
    ]);
    let inside = [
        "write=/src/escape-ok".to_owned(),
        "write=/tmp/escape-ok".to_owned(),
        "write=dist-escape-ok".to_owned(),
    ];
    // Unsandboxed, the writes into the store work (the rest are not tried on the host: as
    // root there every one of them would work too).
    let into_store = [
        format!("write={}", plain(&store.join(&name))?),
        format!("write=../../../artifacts/{name}"),
    ];
    let host = unsandboxed(&fx, &attack(&into_store)).await?;
    for attempt in &into_store {
        worked(&host, attempt).context("without the sandbox")?;
    }
    std::fs::remove_file(store.join(&name))?;
    let mut all = attempts.clone();
    all.extend(inside.iter().cloned());
    let (log, err) = hostile_build(&fx, &attack(&all), "").await?;
    ran_to_the_end(&err, &log);
    for attempt in &attempts {
        let detail = blocked(&log, attempt)?;
        assert!(
            detail.contains("Read-only file system")
                || detail.contains("Permission denied")
                || detail.contains("No such file"),
            "{attempt}: {detail}"
        );
    }
    for attempt in &inside {
        worked(&log, attempt)?;
    }
    for path in &outside {
        let there = path.exists();
        if there {
            let _ = std::fs::remove_file(path);
        }
        assert!(!there, "the build wrote {}", path.display());
    }
    let stored: Vec<_> = std::fs::read_dir(&store)?.flatten().collect();
    assert!(
        stored.is_empty(),
        "the build wrote into the store: {stored:?}"
    );
    Ok(())
}

/// 127.0.0.1 and every IPv4 address of the host.
fn host_addresses() -> Result<Vec<Ipv4Addr>> {
    let mut all = vec![Ipv4Addr::LOCALHOST];
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("running ip")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(cidr) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1)
            && let Some(Ok(addr)) = cidr.split('/').next().map(str::parse::<Ipv4Addr>)
            && !all.contains(&addr)
        {
            all.push(addr);
        }
    }
    ensure!(all.len() > 1, "the host has an address besides loopback");
    Ok(all)
}

/// A build tries each of `ports` and `listener`'s port on every address of the host: all
/// fail, while the same attempts from the host reach `listener` (where the service stands,
/// listening on every address).
async fn cannot_reach(fx: &Fixture, ports: &[u16], listener: &TcpListener) -> Result<()> {
    let hosts = host_addresses()?;
    let connect = |port: u16| -> Vec<String> {
        hosts
            .iter()
            .map(|h| format!("connect={h}:{port}"))
            .collect()
    };
    let mut attempts: Vec<String> = ports.iter().flat_map(|p| connect(*p)).collect();
    let standing = connect(listener.local_addr()?.port());
    attempts.extend(standing.iter().cloned());
    attempts.dedup();
    let command = attack(&attempts);
    // Unsandboxed, the listener answers on loopback and on the host's other addresses (not
    // asked of each: a runner test's bridge may go away meanwhile).
    let host = unsandboxed(fx, &command).await?;
    let reached: Vec<&String> = standing
        .iter()
        .filter(|a| worked(&host, a).is_ok())
        .collect();
    ensure!(
        reached.len() >= 2 && reached.contains(&&standing[0]),
        "without the sandbox the listener is reached: {host}"
    );

    let (log, err) = hostile_build(fx, &command, "").await?;
    ran_to_the_end(&err, &log);
    for attempt in &attempts {
        let detail = blocked(&log, attempt)?;
        assert!(
            detail.contains("refused")
                || detail.contains("unreachable")
                || detail.contains("timed out"),
            "{attempt}: {detail}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_build_cannot_connect_to_temporal() -> Result<()> {
    let fx = Fixture::new().await?;
    // The suite's Temporal when it runs under scripts/test.sh, and a listener on every
    // address standing where Temporal would.
    let stand_in = TcpListener::bind("0.0.0.0:0").await?;
    let mut ports = Vec::new();
    if let Ok(addr) = std::env::var("RHONE_TEST_TEMPORAL_ADDRESS") {
        ports.push(addr.rsplit(':').next().context("port")?.parse()?);
    }
    cannot_reach(&fx, &ports, &stand_in).await
}

#[tokio::test]
async fn a_build_cannot_reach_the_api_report_endpoint() -> Result<()> {
    let fx = Fixture::new().await?;
    // Where the API's `/internal/runner/reports` listens: every address of the host.
    let api = TcpListener::bind("0.0.0.0:0").await?;
    cannot_reach(&fx, &[], &api).await
}

#[tokio::test]
async fn a_build_cannot_reach_a_runner_api() -> Result<()> {
    let fx = Fixture::new().await?;
    let runner = TcpListener::bind("0.0.0.0:0").await?;
    cannot_reach(&fx, &[], &runner).await
}

#[tokio::test]
async fn a_build_over_its_memory_limit_fails_with_out_of_memory() -> Result<()> {
    let fx = Fixture::new().await?;
    // No `; exit 1` after it: the build ends with the hog's SIGKILL, which with the limit
    // reached is told as out of memory. Without the sandbox the 512 MiB are there and the
    // hog prints `ok`.
    let (d, log, err) =
        hostile_deploy(&fx, "python3 attack.py memory=512", "\nmemory_mb = 64").await?;
    let message = err.to_string();
    assert!(
        matches!(&err, DeployError::BuildFailed { status, .. }
            if status == "was killed: out of memory (limit 64 MiB)"),
        "{message}\n{log}"
    );
    assert!(
        message.contains("out of memory (limit 64 MiB)"),
        "{message}"
    );
    assert!(
        log.contains("[rhone] build command was killed: out of memory (limit 64 MiB)"),
        "{log}"
    );
    assert!(!log.contains("ESCAPE memory=512"), "{log}");
    let left = leftovers(d).await?;
    assert!(
        left.is_empty(),
        "processes of the build outlived it: {left:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() -> Result<()> {
    let fx = Fixture::new().await?;
    let started = Instant::now();
    // Up to 1000 children: without the sandbox the bomb would get them all.
    let bomb = "forkbomb=1000";
    let (d, log, err) = hostile_deploy(&fx, &attack(&[bomb.to_owned()]), "\nmax_pids = 32").await?;
    // The children sleep 20 s: the build ended with its first process, and took them along.
    ran_to_the_end(&err, &log);
    let detail = blocked(&log, bomb)?;
    assert!(
        detail.contains("Resource temporarily unavailable"),
        "{detail}"
    );
    let forked: u32 = detail
        .split("forked ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .context("a count")?
        .parse()?;
    assert!((1..32).contains(&forked), "forked {forked}: {detail}");
    assert!(
        started.elapsed() < WITHIN,
        "the build ended promptly: {:?}",
        started.elapsed()
    );
    let left = leftovers(d).await?;
    assert!(
        left.is_empty(),
        "the bomb's children outlived the build: {left:?}"
    );
    Ok(())
}
