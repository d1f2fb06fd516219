//! Promotion and rollback through the real binaries: `rhone dev` (Temporal, API, edge,
//! runner) and the `rhone` CLI; in the kill tests the worker is a separate
//! `rhone serve worker` process that is SIGKILLed in each Promotion stage, and in each
//! Deploy stage, and restarted.

mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use support::{
    Dev, RHONE, descendants, example_repo, free_ports, http_get, start_dev, start_dev_with,
};

const APP: [&str; 6] = ["-w", "acme", "-p", "shop", "-a", "web"];
const PROD_HOST: &str = "web.shop.acme.rhone.localhost";

/// Workspace `acme`, project `shop`, app `web`, a `preview` environment and a `production`
/// one that promotes without approval.
fn tenancy(dev: &Dev) -> Result<()> {
    dev.ok(&["workspaces", "create", "acme"])?;
    dev.ok(&["projects", "create", "-w", "acme", "shop"])?;
    dev.ok(&["apps", "create", "-w", "acme", "-p", "shop", "web"])?;
    let envs = |name: &str, kind: &str, approval: &str| {
        let args = [
            &["envs", "create"][..],
            &APP,
            &[name, "--kind", kind, "--requires-approval", approval],
        ];
        dev.ok(&args.concat())
    };
    envs("preview", "preview", "false")?;
    envs("production", "production", "false")?;
    Ok(())
}

/// Deploys `repo` to preview; the deployment id the CLI prints.
fn deploy(dev: &Dev, repo: &Path) -> Result<String> {
    let repo = repo.display().to_string();
    let out = dev.ok(&[&["deploy", repo.as_str()][..], &APP, &["--env", "preview"]].concat())?;
    let line = out
        .lines()
        .find_map(|l| l.split("rhone promote ").nth(1))
        .with_context(|| format!("no promote hint in:\n{out}"))?;
    Ok(line
        .split_whitespace()
        .next()
        .context("a deployment id")?
        .to_owned())
}

/// The digest the production host serves through the edge.
fn served_digest(edge_port: u16) -> Result<String> {
    let stats: serde_json::Value =
        serde_json::from_str(&http_get(edge_port, PROD_HOST, "/_rhone/stats")?)?;
    Ok(stats["artifact_digest"]
        .as_str()
        .context("artifact_digest")?
        .to_owned())
}

fn route(dev: &Dev) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &dev.ok(&["--json", "route", PROD_HOST])?,
    )?)
}

/// deploy → preview → promote → the production host serves the preview's digest →
/// promote a second deployment → rollback → the first deployment serves again, one epoch
/// per change, every step through the CLI.
#[test]
fn promote_and_roll_back_through_the_cli() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports()?;
    let dev = start_dev(dir.path(), &ports)?;
    tenancy(&dev)?;
    let repo = example_repo(dir.path())?;
    let first = deploy(&dev, &repo)?;

    let out = dev.ok(&[
        &["promote", first.as_str()][..],
        &APP,
        &["--env", "production"],
    ]
    .concat())?;
    for stage in ["policy_check", "route_cas", "edge_propagating", "healthy"] {
        assert!(out.contains(stage), "{stage} missing in:\n{out}");
    }
    let owner = route(&dev)?;
    assert_eq!(owner["epoch"], 1, "{owner}");
    let digest1 = owner["artifactDigest"]
        .as_str()
        .context("digest")?
        .to_owned();
    assert_eq!(served_digest(ports[1])?, digest1);

    std::fs::write(repo.join("NOTES.md"), "version 2\n")?;
    support::commit_all(&repo, "v2")?;
    let second = deploy(&dev, &repo)?;
    dev.ok(&[
        &["promote", second.as_str()][..],
        &APP,
        &["--env", "production"],
    ]
    .concat())?;
    let owner = route(&dev)?;
    assert_eq!(owner["epoch"], 2, "{owner}");
    let digest2 = owner["artifactDigest"]
        .as_str()
        .context("digest")?
        .to_owned();
    assert_ne!(digest1, digest2);
    assert_eq!(served_digest(ports[1])?, digest2);

    let out = dev.ok(&[&["rollback"][..], &APP, &["--env", "production"]].concat())?;
    assert!(out.contains("healthy"), "{out}");
    let owner = route(&dev)?;
    assert_eq!(owner["epoch"], 3, "{owner}");
    assert_eq!(owner["artifactDigest"], digest1.as_str());
    assert_eq!(served_digest(ports[1])?, digest1);
    Ok(())
}

/// A `rhone serve worker` process, killed with SIGKILL when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(env: &[(String, String)], log: &Path) -> Result<Worker> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(Worker(
        Command::new(RHONE)
            .args(["serve", "worker"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RHONE_PROMOTION_HEALTH_WINDOW_MS", "3000")
            .env("RHONE_PROMOTION_DRAIN_GRACE_MS", "500")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    ))
}

/// The `KEY=VALUE` lines `rhone dev --no-worker` prints for a separate worker.
fn worker_env(dev: &Dev) -> Vec<(String, String)> {
    dev.lines
        .iter()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.starts_with("RHONE_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn json(dev: &Dev, args: &[&str]) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &dev.ok(&[&["--json"][..], args].concat())?,
    )?)
}

/// The stage names an operation has recorded.
fn stages(op: &serde_json::Value) -> Vec<String> {
    op["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|r| r["stage"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills the worker (SIGKILL) once a promotion has entered each stage in turn, restarts it,
/// and checks that every promotion finishes healthy with exactly one route CAS and no
/// duplicate allocation.
#[test]
fn promotions_finish_when_the_worker_is_killed_in_each_stage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports()?;
    let dev = start_dev_with(dir.path(), &ports, &["--no-worker"])?;
    let env = worker_env(&dev);
    anyhow::ensure!(
        env.iter().any(|(k, _)| k == "RHONE_DATABASE_URL"),
        "no worker settings in {:?}",
        dev.lines
    );
    let log = dir.path().join("worker.log");
    let mut worker = start_worker(&env, &log)?;
    tenancy(&dev)?;
    let repo = example_repo(dir.path())?;
    let preview = deploy(&dev, &repo)?;

    let (runtime, db) = control_db(&env)?;

    let mut seen_ops = std::collections::HashSet::new();
    for (epoch, stage) in [
        "requested",
        "policy_check",
        "route_cas",
        "edge_propagating",
        "healthy",
    ]
    .into_iter()
    .enumerate()
    {
        let promote = spawn_cli(
            &dev,
            &[
                &["promote", preview.as_str()][..],
                &APP,
                &["--env", "production"],
            ]
            .concat(),
        )?;
        let id = new_operation(&dev, "promotion", &mut seen_ops)?;
        // Kill the worker as soon as the operation has entered `stage`.
        until(&dev, &id, stage, Duration::from_secs(60), |op| {
            Ok(stages(op).iter().any(|s| s == stage))
        })?;
        let killed_at = Instant::now();
        worker = restart(worker, &env, &log)?;

        let out = promote.wait_with_output()?;
        eprintln!(
            "killed in {stage}: finished {:?} after the kill",
            killed_at.elapsed()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "promotion killed in {stage} did not finish:\n{stdout}\n{}\nworker log: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let op = json(&dev, &["ops", "show", &id])?;
        assert_eq!(
            stages(&op),
            [
                "requested",
                "policy_check",
                "route_cas",
                "edge_propagating",
                "healthy"
            ],
            "killed in {stage}: {op}"
        );

        let (cas, allocations) = runtime.block_on(counts(&db, &id))?;
        assert_eq!(cas, 1, "killed in {stage}: exactly one CAS");
        assert_eq!(allocations, 1, "killed in {stage}: no duplicate allocation");
        let owner = route(&dev)?;
        assert_eq!(owner["epoch"], epoch + 1, "{owner}");
    }
    Ok(())
}

/// Kills the worker (SIGKILL) once a deploy has entered each stage in turn (and, for the
/// preview start, once its allocation is placed), restarts it 300 ms later, and checks that
/// every deploy reaches `preview_ready` within a minute of the kill (the lost attempt is
/// seen by its missing heartbeats, not after its start-to-close timeout), each stage
/// recorded once, one artifact, one allocation, and no build left running from the lost
/// attempt.
#[test]
fn deploys_finish_when_the_worker_is_killed_in_each_stage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports()?;
    let dev = start_dev_with(dir.path(), &ports, &["--no-worker"])?;
    let env = worker_env(&dev);
    let data_dir = std::path::PathBuf::from(env_value(&env, "RHONE_DATA_DIR")?);
    let log = dir.path().join("worker.log");
    let mut worker = start_worker(&env, &log)?;
    tenancy(&dev)?;
    let repo = example_repo(dir.path())?;
    let (runtime, db) = control_db(&env)?;

    let mut seen_ops = std::collections::HashSet::new();
    for stage in ["cloning", "building", "validating", "preview start"] {
        let started = chrono::Utc::now();
        let repo_arg = repo.display().to_string();
        let deploy = spawn_cli(
            &dev,
            &[
                &["deploy", repo_arg.as_str()][..],
                &APP,
                &["--env", "preview"],
            ]
            .concat(),
        )?;
        let id = new_operation(&dev, "deploy", &mut seen_ops)?;
        let deployment = json(&dev, &["ops", "show", &id])?["targetId"]
            .as_str()
            .context("the deploy's deployment")?
            .to_owned();
        let entered = stage
            .split(' ')
            .next()
            .map(|s| if s == "preview" { "validating" } else { s });
        until(&dev, &id, stage, Duration::from_secs(120), |op| {
            let placed =
                stage != "preview start" || runtime.block_on(allocations_of(&db, &deployment))? > 0;
            Ok(placed && stages(op).iter().any(|s| Some(s.as_str()) == entered))
        })?;
        let killed_at = Instant::now();
        worker = restart(worker, &env, &log)?;

        let out = finish_within(deploy, Duration::from_secs(90))?;
        let took = killed_at.elapsed();
        eprintln!("killed in {stage}: finished {took:?} after the kill");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "deploy killed in {stage} did not finish:\n{stdout}\n{}\nworker log: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            took < Duration::from_secs(60),
            "killed in {stage}: {took:?}"
        );
        let op = json(&dev, &["ops", "show", &id])?;
        assert_eq!(
            stages(&op),
            [
                "queued",
                "cloning",
                "building",
                "validating",
                "preview_ready"
            ],
            "killed in {stage}: {op}"
        );
        assert_eq!(
            runtime.block_on(allocations_of(&db, &deployment))?,
            1,
            "killed in {stage}: one allocation"
        );
        // One artifact: the deployment's, and no other recorded while it ran (a lost
        // attempt's build is not kept beside the retried one's).
        let (artifact, recorded) = runtime.block_on(artifacts_of(&db, &deployment, started))?;
        let artifact = artifact.with_context(|| format!("killed in {stage}: no artifact"))?;
        assert!(
            recorded.iter().all(|d| *d == artifact),
            "killed in {stage}: artifacts recorded during the deploy {recorded:?}, its own {artifact}"
        );
        let build = data_dir
            .join("work/sandbox/runtime")
            .join(format!("build-{deployment}"));
        assert!(
            !build.exists(),
            "killed in {stage}: a build sandbox is left: {}",
            build.display()
        );
    }
    Ok(())
}

/// `rhone ARGS` against `dev`, its output piped, running on.
fn spawn_cli(dev: &Dev, args: &[&str]) -> Result<Child> {
    Ok(Command::new(RHONE)
        .args(args)
        .env("RHONE_CONFIG", &dev.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// The id of the first operation of `kind` not in `seen` (added to it), within 30 s.
fn new_operation(
    dev: &Dev,
    kind: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ops = json(dev, &["ops", "list", "--kind", kind])?;
        let new = ops.as_array().into_iter().flatten().find_map(|o| {
            let id = o["id"].as_str()?;
            (!seen.contains(id)).then(|| id.to_owned())
        });
        if let Some(id) = new {
            seen.insert(id.clone());
            return Ok(id);
        }
        if Instant::now() > deadline {
            bail!("no {kind} operation appeared");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls operation `id` every 10 ms until `done` says so, or fails after `limit` naming
/// `stage`.
fn until(
    dev: &Dev,
    id: &str,
    stage: &str,
    limit: Duration,
    mut done: impl FnMut(&serde_json::Value) -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let op = json(dev, &["ops", "show", id])?;
        if done(&op)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{id} never reached {stage}: {op}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills `worker` (SIGKILL) and starts another 300 ms later.
fn restart(worker: Worker, env: &[(String, String)], log: &Path) -> Result<Worker> {
    drop(worker);
    std::thread::sleep(Duration::from_millis(300));
    start_worker(env, log)
}

/// The value of `key` among the worker's settings.
fn env_value<'a>(env: &'a [(String, String)], key: &str) -> Result<&'a str> {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .with_context(|| format!("no {key} in the worker's settings"))
}

/// A runtime and a connection to the control DB the worker's settings name.
fn control_db(
    env: &[(String, String)],
) -> Result<(tokio::runtime::Runtime, sea_orm::DatabaseConnection)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = runtime.block_on(rhone_schema::connect(env_value(env, "RHONE_DATABASE_URL")?))?;
    Ok((runtime, db))
}

/// The output of `child` once it exits, or an error (it killed) after `limit`.
fn finish_within(mut child: Child, limit: Duration) -> Result<std::process::Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "still running after {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// Allocations of deployment `id`.
async fn allocations_of(db: &sea_orm::DatabaseConnection, id: &str) -> Result<u64> {
    use rhone_schema::entity::allocation;
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let id: uuid::Uuid = id.parse()?;
    Ok(allocation::Entity::find()
        .filter(allocation::Column::DeploymentId.eq(id))
        .count(db)
        .await?)
}

/// The artifact of deployment `id`, and the digests of every artifact recorded since `since`.
async fn artifacts_of(
    db: &sea_orm::DatabaseConnection,
    id: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<(Option<String>, Vec<String>)> {
    use rhone_schema::entity::{artifact, deployment};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let id: uuid::Uuid = id.parse()?;
    let own = deployment::Entity::find_by_id(id)
        .one(db)
        .await?
        .context("deployment")?
        .artifact_digest;
    let recorded = artifact::Entity::find()
        .filter(artifact::Column::CreatedAt.gte(since))
        .all(db)
        .await?
        .into_iter()
        .map(|a| a.digest)
        .collect();
    Ok((own, recorded))
}

/// Route changes written by operation `id`, and allocations of the deployment it promoted.
async fn counts(db: &sea_orm::DatabaseConnection, id: &str) -> Result<(u64, u64)> {
    use rhone_schema::entity::{allocation, operation, route_change};
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let id: uuid::Uuid = id.parse()?;
    let op = operation::Entity::find_by_id(id)
        .one(db)
        .await?
        .context("operation")?;
    let deployment: uuid::Uuid = op.target_id.parse()?;
    let cas = route_change::Entity::find()
        .filter(route_change::Column::OperationId.eq(id))
        .count(db)
        .await?;
    let allocations = allocation::Entity::find()
        .filter(allocation::Column::DeploymentId.eq(deployment))
        .count(db)
        .await?;
    Ok((cas, allocations))
}

/// `kill -9` of the whole `rhone dev` (Temporal, the runner's sandboxes and the apps in
/// them included) and a restart on the same data dir: production is served again with no
/// one acting, and the repair is an operation that names what was lost.
#[test]
fn production_heals_after_kill_9_of_rhone_dev() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports()?;
    let mut dev = start_dev(dir.path(), &ports)?;
    tenancy(&dev)?;
    let repo = example_repo(dir.path())?;
    let first = deploy(&dev, &repo)?;
    dev.ok(&[
        &["promote", first.as_str()][..],
        &APP,
        &["--env", "production"],
    ]
    .concat())?;
    let digest = route(&dev)?["artifactDigest"]
        .as_str()
        .context("digest")?
        .to_owned();
    assert_eq!(served_digest(ports[1])?, digest);

    let tree = descendants(dev.child.id());
    anyhow::ensure!(!tree.is_empty(), "rhone dev has no child processes");
    dev.child.kill()?;
    dev.child.wait()?;
    for pid in &tree {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    drop(dev);
    // Nothing of it survives (the apps included), so what serves next is the repair's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tree.iter().any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    }) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "rhone dev's processes outlived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::ensure!(
        served_digest(ports[1]).is_err(),
        "production still answers after the kill"
    );

    let started = Instant::now();
    let dev = start_dev(dir.path(), &ports)?;
    let ready = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if served_digest(ports[1]).ok().as_deref() == Some(digest.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "production not served again: {}",
                json(&dev, &["ops", "list", "--kind", "repair"])?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "served again {:?} after the restart began, {:?} after rhone dev said it was ready",
        started.elapsed(),
        ready.elapsed()
    );
    let repairs = json(&dev, &["ops", "list", "--kind", "repair"])?;
    let repair = repairs
        .as_array()
        .and_then(|r| r.first())
        .with_context(|| format!("no repair operation: {repairs}"))?;
    let id = repair["id"].as_str().context("id")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let op = loop {
        let op = json(&dev, &["ops", "show", id])?;
        if op["status"] != "RUNNING" || Instant::now() > deadline {
            break op;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(op["status"], "SUCCEEDED", "{op}");
    assert_eq!(
        stages(&op),
        ["detected", "replacing", "ready", "repaired"],
        "{op}"
    );
    let lost = &op["stages"][0]["evidence"]["lost"][0];
    assert!(
        lost["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ended while the runner was down")),
        "{op}"
    );
    Ok(())
}

/// `temporal workflow …` against `rhone dev`'s Temporal, as on-call runs it.
fn temporal(port: u16, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("temporal")
        .args(args)
        .args(["--address", &format!("127.0.0.1:{port}")])
        .output()?)
}

/// Polls `rhone ops show ID` until its status is final; the operation.
fn op_final(dev: &Dev, id: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let op = json(dev, &["ops", "show", id])?;
        if matches!(
            op["status"].as_str(),
            Some("SUCCEEDED" | "FAILED" | "ABORTED")
        ) {
            return Ok(op);
        }
        anyhow::ensure!(Instant::now() < deadline, "{id} did not end: {op}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A promotion waiting for approval takes an approval and refuses a retry; a decision sent
/// from the Temporal CLI must name its actor and is recorded as `temporal:<actor>`; a
/// workflow terminated from the Temporal CLI ends its operation `failed` with the reason.
#[test]
fn an_approval_gate_takes_only_its_decisions_from_the_api_or_temporal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports()?;
    let dev = start_dev(dir.path(), &ports)?;
    tenancy(&dev)?;
    for env in ["staging", "qa"] {
        dev.ok(&[
            &["envs", "create"][..],
            &APP,
            &[env, "--kind", "staging", "--requires-approval", "true"],
        ]
        .concat())?;
    }
    let repo = example_repo(dir.path())?;
    let deployment = deploy(&dev, &repo)?;
    // `rhone promote` follows the promotion through its approval: it runs beside the test.
    let mut seen = std::collections::HashSet::new();
    let mut followers = Vec::new();
    let mut promote = |env: &str| -> Result<String> {
        followers.push(spawn_cli(
            &dev,
            &[&["promote", deployment.as_str()][..], &APP, &["--env", env]].concat(),
        )?);
        let id = new_operation(&dev, "promotion", &mut seen)?;
        until(&dev, &id, "policy_check", Duration::from_secs(60), |op| {
            Ok(op["status"] == "WAITING")
        })?;
        Ok(id)
    };

    // Through the API: a retry is refused, saying what the gate waits for; approve passes.
    let first = promote("staging")?;
    let out = dev.rhone(&["ops", "retry", &first, "--reason", "again"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "waits in stage policy_check for approve or abort; retry is not accepted there"
        ),
        "{err}"
    );
    dev.ok(&["ops", "approve", &first, "--reason", "looks right"])?;
    let op = op_final(&dev, &first)?;
    assert_eq!(op["status"], "SUCCEEDED", "{op}");
    let entries = op["auditEntries"].as_array().context("audit entries")?;
    assert!(
        entries.iter().any(|e| e["action"] == "operation.approve"
            && e["actor"].as_str().is_some_and(|a| a.starts_with("user:"))),
        "{op}"
    );

    // From the Temporal CLI: a decision naming nobody is refused; one naming alice aborts.
    let second = promote("qa")?;
    let workflow_id = json(&dev, &["ops", "show", &second])?["workflowId"]
        .as_str()
        .context("workflow id")?
        .to_owned();
    let update = |input: &str| {
        temporal(
            ports[3],
            &[
                "workflow",
                "update",
                "execute",
                "--workflow-id",
                &workflow_id,
                "--name",
                "abort",
                "--input",
                input,
            ],
        )
    };
    let refused = update("{}")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("actor: name who decides"), "{said}");
    let taken = update(r#"{"actor": "alice", "reason": "wrong build"}"#)?;
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let op = op_final(&dev, &second)?;
    assert_eq!(op["status"], "ABORTED", "{op}");
    assert_eq!(op["error"], "aborted by temporal:alice", "{op}");
    let entries = op["auditEntries"].as_array().context("audit entries")?;
    assert!(
        entries.iter().any(|e| e["action"] == "operation.abort"
            && e["actor"] == "temporal:alice"
            && e["detail"]["reason"] == "wrong build"),
        "{op}"
    );

    // Terminated from the Temporal CLI: the fleet watch ends the operation with the reason.
    let third = promote("qa")?;
    let workflow_id = json(&dev, &["ops", "show", &third])?["workflowId"]
        .as_str()
        .context("workflow id")?
        .to_owned();
    let out = temporal(
        ports[3],
        &[
            "workflow",
            "terminate",
            "--workflow-id",
            &workflow_id,
            "--reason",
            "stuck on a bad host",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let op = op_final(&dev, &third)?;
    assert_eq!(op["status"], "FAILED", "{op}");
    assert_eq!(op["currentStage"], "failed", "{op}");
    let error = op["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("terminated in Temporal") && error.contains("stuck on a bad host"),
        "{op}"
    );
    for mut follower in followers {
        let _ = follower.kill();
        let _ = follower.wait();
    }
    Ok(())
}

/// Kills the worker (SIGKILL) once a Wake of a sleeping production app has entered each of
/// its stages in turn, restarts it 300 ms later, and checks that the held request is
/// answered and the wake reaches `hot` within a minute of the kill, each of its stages
/// recorded once, with exactly one new allocation per wake.
#[test]
fn wakes_finish_when_the_worker_is_killed_in_each_stage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports()?;
    let dev = start_dev_with(dir.path(), &ports, &["--no-worker"])?;
    let mut env = worker_env(&dev);
    env.push(("RHONE_WAKE_IDLE_CHECK_MS".into(), "300".into()));
    let log = dir.path().join("worker.log");
    let mut worker = start_worker(&env, &log)?;
    tenancy(&dev)?;
    let repo = example_repo(dir.path())?;
    let preview = deploy(&dev, &repo)?;
    dev.ok(&[
        &["promote", preview.as_str()][..],
        &APP,
        &["--env", "production"],
    ]
    .concat())?;
    let promotion = json(&dev, &["ops", "list", "--kind", "promotion"])?[0]["id"]
        .as_str()
        .context("the promotion")?
        .to_owned();
    let promotion = json(&dev, &["ops", "show", &promotion])?["targetId"]
        .as_str()
        .context("the promoted deployment")?
        .to_owned();
    dev.ok(&[
        &["envs", "scale-to-zero"][..],
        &APP,
        &[
            "production",
            "--on",
            "--sleep-after-ms",
            "1000",
            "--wake-budget-ms",
            "90000",
        ],
    ]
    .concat())?;
    let (runtime, db) = control_db(&env)?;
    let mut seen_ops = std::collections::HashSet::new();
    for (n, stage) in ["wake_requested", "starting", "readiness_wait"]
        .into_iter()
        .enumerate()
    {
        // Asleep first: the watch puts the idle app to sleep.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let envs = json(&dev, &[&["envs", "list"][..], &APP].concat())?;
            let prod = envs
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == "production")
                .cloned()
                .unwrap_or_default();
            if prod["wakeState"] == "sleeping" {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "production never slept: {prod}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Wake ops so far (the watches) are not this wake.
        for op in json(&dev, &["ops", "list", "--kind", "wake"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(id) = op["id"].as_str() {
                seen_ops.insert(id.to_owned());
            }
        }
        let edge = ports[1];
        let request = std::thread::spawn(move || {
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "120",
                ])
                .args(["-H", &format!("Host: {PROD_HOST}")])
                .arg(format!("http://127.0.0.1:{edge}/"))
                .output()
        });
        let id = new_operation(&dev, "wake", &mut seen_ops)?;
        until(&dev, &id, stage, Duration::from_secs(60), |op| {
            Ok(stages(op).iter().any(|s| s == stage))
        })?;
        let killed_at = Instant::now();
        worker = restart(worker, &env, &log)?;

        let answered = request
            .join()
            .map_err(|_| anyhow::anyhow!("the request thread panicked"))??;
        let took = killed_at.elapsed();
        eprintln!("killed in {stage}: the held request was answered {took:?} after the kill");
        assert_eq!(
            String::from_utf8_lossy(&answered.stdout),
            "200",
            "killed in {stage}\nworker log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            took < Duration::from_secs(60),
            "killed in {stage}: {took:?}"
        );
        until(&dev, &id, "hot", Duration::from_secs(60), |op| {
            Ok(stages(op).iter().any(|s| s == "hot"))
        })?;
        // Each stage once up to `hot`: the killed step was retried, not recorded again.
        let op = json(&dev, &["ops", "show", &id])?;
        let recorded = stages(&op);
        let through_hot = recorded
            .iter()
            .position(|s| s == "hot")
            .map_or(recorded.len(), |at| at + 1);
        assert_eq!(
            recorded[..through_hot],
            [
                "cold",
                "wake_requested",
                "starting",
                "readiness_wait",
                "hot"
            ],
            "killed in {stage}: {op}"
        );
        // The promotion's allocation and one per wake so far: none duplicated.
        assert_eq!(
            runtime.block_on(allocations_of(&db, &promotion))?,
            2 + n as u64,
            "killed in {stage}: one allocation per wake"
        );
    }
    drop(worker);
    Ok(())
}

/// A deploy whose worker is killed during `building` and not replaced: Temporal schedules
/// the build's next attempt once its heartbeats stop; `rhone ops retry` refuses while the
/// first attempt is still counted as running, then restarts the step (audited with the lost
/// attempt), and a new worker finishes the deploy.
#[test]
fn ops_retry_restarts_a_step_whose_worker_was_lost() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = free_ports()?;
    let dev = start_dev_with(dir.path(), &ports, &["--no-worker"])?;
    let env = worker_env(&dev);
    let log = dir.path().join("worker.log");
    let worker = start_worker(&env, &log)?;
    tenancy(&dev)?;
    let repo = example_repo(dir.path())?;
    let repo_arg = repo.display().to_string();
    let deploy = spawn_cli(
        &dev,
        &[
            &["deploy", repo_arg.as_str()][..],
            &APP,
            &["--env", "preview"],
        ]
        .concat(),
    )?;
    let id = new_operation(&dev, "deploy", &mut Default::default())?;
    // While the build runs on a live worker, a retry is refused naming it.
    let retry = || dev.rhone(&["ops", "retry", &id, "--reason", "worker host died"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = retry()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "retried a healthy step");
        assert!(err.contains("no step of it is being retried"), "{err}");
        if err.contains(": build_artifact (attempt 1) running") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the build never ran: {err}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(worker);
    // Once its heartbeats stop, Temporal schedules attempt 2: the retry restarts it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = retry()?;
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(Instant::now() < deadline, "never retried: {err}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let op = json(&dev, &["ops", "show", &id])?;
    let entry = op["auditEntries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["action"] == "operation.retry")
        .cloned()
        .with_context(|| format!("no retry audited: {op}"))?;
    let restarted = &entry["detail"]["restarted"][0];
    assert_eq!(restarted["step"], "build_artifact", "{entry}");
    assert_eq!(restarted["attempt"], 2, "{entry}");
    assert!(
        restarted["last_failure"]
            .as_str()
            .is_some_and(|f| f.to_lowercase().contains("heartbeat")),
        "{entry}"
    );
    assert_eq!(entry["detail"]["reason"], "worker host died");

    let _worker = start_worker(&env, &log)?;
    let out = finish_within(deploy, Duration::from_secs(90))?;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
