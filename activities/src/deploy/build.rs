//! Building: `rhone.toml` at the commit, the build command under its time limit with its
//! output streamed into the build log, then the output packed into the artifact
//! ([`super::package`]). The checkout is scratch space, removed when the build ends.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rhone_manifest::AppManifest;
use rhone_sandbox::{Bind, Network, Sandbox, SandboxSpec};
use rhone_workflows::activities::{BuildInput, Built};
use sea_orm::DatabaseConnection;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use super::DeployConfig;
use super::buildlog::BuildLog;
use super::error::DeployError;
use super::package;
use super::process::describe_exit;
use super::source::{Checkout, ensure_checkout};

/// Variables of the worker's environment a build may see; everything else (the worker's
/// database URL, store and Temporal credentials, its `PATH`) is withheld. `PATH` and
/// `HOME` are the sandbox's own.
const PASSED_ENV: &[&str] = &["LANG", "LC_ALL", "LC_CTYPE", "TZ"];
/// Where the checkout is inside the build's sandbox; the build command runs there.
pub const SOURCE_DIR: &str = "/src";
/// Lines of the log quoted in the error of a failed build.
const TAIL_LINES: usize = 20;
/// How often pending output is written to the log while the build runs.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How long output may still arrive after the build command exited.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Builds the deployment's commit into a stored artifact and records it on the deployment.
#[tracing::instrument(skip_all, fields(
    operation_id = %input.operation_id,
    deployment_id = %input.deployment_id,
    commit = %input.commit_sha,
))]
pub async fn build_artifact(
    db: &DatabaseConnection,
    config: &DeployConfig,
    input: &BuildInput,
) -> Result<Built, DeployError> {
    // A lost attempt (its worker killed) may have left its build running in its sandbox,
    // still writing to the checkout: it is ended before the checkout is made clean.
    let sandbox = Sandbox::new(&config.sandbox()).map_err(sandbox_error)?;
    if sandbox.end_leftover(&build_id(input.deployment_id)).await {
        tracing::warn!("ended the build an earlier, lost attempt left running");
    }
    let scratch = config.work_dir.join(input.deployment_id.to_string());
    // A checkout an earlier attempt handed to its build belongs to the build's user, and
    // its `.git` is the tenant's to rewrite: git never runs in it again (it would refuse
    // the ownership, or run the tenant's hooks and config); the retry clones afresh.
    if handed_to_a_build(config, input.deployment_id).await {
        tracing::warn!("cloning again: an earlier attempt handed the checkout to its build");
        tokio::fs::remove_dir_all(&scratch)
            .await
            .map_err(|e| DeployError::io(format!("removing {}", scratch.display()), e))?;
    }
    let checkout = ensure_checkout(
        config,
        input.deployment_id,
        &input.source,
        Some(&input.commit_sha),
    )
    .await?;
    let result = build_checkout(db, config, input, &checkout).await;
    if let Err(err) = tokio::fs::remove_dir_all(&scratch).await {
        tracing::warn!(dir = %scratch.display(), error = %err, "cannot remove the build's work directory");
    }
    result
}

async fn build_checkout(
    db: &DatabaseConnection,
    config: &DeployConfig,
    input: &BuildInput,
    checkout: &Checkout,
) -> Result<Built, DeployError> {
    let app = read_app_manifest(&checkout.dir, &checkout.commit_sha).await?;
    let header = format!(
        "[rhone] building {} at commit {}: `{}` (time limit {} s, log kept up to {} bytes)\n",
        super::source::redact(&input.source.repository),
        checkout.commit_sha,
        app.build.command,
        app.build.timeout_secs,
        app.build.max_log_bytes,
    );
    let operation_id = input.operation_id.0;
    let mut log = BuildLog::start(db, operation_id, &header, app.build.max_log_bytes).await?;
    tracing::info!(attempt = log.attempt(), "build started");
    let started = Instant::now();
    run_command(&mut log, config, &app, checkout, input).await?;
    let build_millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    let facts = package::source_facts(&input.source, &checkout.commit_sha, &app);
    let output = output_dir(&checkout.dir, &app.build.output_dir).await?;
    let inspected = package::inspect_output(output.clone(), app, facts).await?;
    for stale in &inspected.stale {
        log.note(&format!("warning: stale generated artifact {stale}"))
            .await?;
    }
    let stored = package::store(
        db,
        config,
        input.deployment_id,
        &output,
        &inspected.manifest,
    )
    .await?;
    log.note(&format!(
        "artifact {} ({} bytes) stored",
        stored.digest, stored.size
    ))
    .await?;
    Ok(Built {
        digest: stored.digest.to_string(),
        size_bytes: stored.size,
        build_millis,
        log_bytes: log.kept_bytes(),
    })
}

/// `rhone.toml` at the root of the checkout, parsed.
async fn read_app_manifest(dir: &Path, commit: &str) -> Result<AppManifest, DeployError> {
    let path = dir.join("rhone.toml");
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(DeployError::Invalid(
                "rhone.toml: expected a regular file".into(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DeployError::Invalid(format!(
                "rhone.toml: not found at the root of the repository at commit {commit} \
                 (see manifest/README.md)"
            )));
        }
        Err(e) => return Err(DeployError::io(format!("reading {}", path.display()), e)),
    }
    let text = tokio::fs::read(&path)
        .await
        .map_err(|e| DeployError::io(format!("reading {}", path.display()), e))?;
    let text = String::from_utf8(text)
        .map_err(|_| DeployError::Invalid("rhone.toml: expected UTF-8 text".into()))?;
    Ok(AppManifest::parse(&text)?)
}

/// The build's output directory: a real directory inside the checkout.
async fn output_dir(checkout: &Path, output_dir: &str) -> Result<std::path::PathBuf, DeployError> {
    let path = checkout.join(output_dir);
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) if meta.is_dir() => Ok(path),
        _ => Err(DeployError::Invalid(format!(
            "build.output_dir: {output_dir}/ does not exist after the build (or is not a directory)"
        ))),
    }
}

/// Whether the deployment's checkout exists and is owned by someone other than the owner of
/// the work directory (the platform): a build's user, after `run_command` handed it over.
async fn handed_to_a_build(config: &DeployConfig, deployment_id: uuid::Uuid) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = super::source::checkout_dir(config, deployment_id);
    match (
        tokio::fs::symlink_metadata(&config.work_dir).await,
        tokio::fs::symlink_metadata(&dir).await,
    ) {
        (Ok(ours), Ok(checkout)) => checkout.uid() != ours.uid(),
        _ => false,
    }
}

/// The sandbox id of a deployment's build: the same for every attempt, so a retry finds
/// what a lost one left.
fn build_id(deployment_id: uuid::Uuid) -> String {
    format!("build-{deployment_id}")
}

/// Runs `build.command` with `sh -c` at the checkout root in a sandbox of its own (no
/// network, the checkout its only writable directory, `[build]` limits), its stdout and
/// stderr on one pipe (interleaved as written) into the log, killed at the time limit.
async fn run_command(
    log: &mut BuildLog,
    config: &DeployConfig,
    app: &AppManifest,
    checkout: &Checkout,
    input: &BuildInput,
) -> Result<(), DeployError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e| DeployError::io(format!("{what} for the build command"), e)
    };
    let sandbox = Sandbox::new(&config.sandbox()).map_err(sandbox_error)?;
    let id = build_id(input.deployment_id);
    let owner = rhone_sandbox::host_uid(&id);
    let dir = checkout.dir.clone();
    tokio::task::spawn_blocking(move || rhone_sandbox::chown_tree(&dir, owner))
        .await
        .map_err(|e| {
            DeployError::io(
                "handing the checkout to the build",
                std::io::Error::other(e),
            )
        })?
        .map_err(io("handing the checkout over"))?;
    let mut env: Vec<(String, String)> = PASSED_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.extend([
        ("HOME".to_owned(), "/tmp".to_owned()),
        ("CI".to_owned(), "true".to_owned()),
        ("RHONE_COMMIT_SHA".to_owned(), checkout.commit_sha.clone()),
        (
            "RHONE_DEPLOYMENT_ID".to_owned(),
            input.deployment_id.to_string(),
        ),
    ]);
    let spec = SandboxSpec {
        id: id.clone(),
        command: app.build.command.clone(),
        env,
        cwd: SOURCE_DIR.to_owned(),
        binds: vec![Bind::writable(&checkout.dir, SOURCE_DIR)],
        limits: app.build.limits,
        network: Network::Isolated,
        hostname: "build".to_owned(),
        hosts: Vec::new(),
    };
    let (reader, writer) = std::io::pipe().map_err(io("creating a pipe"))?;
    let started = sandbox
        .start(
            &spec,
            Stdio::from(writer.try_clone().map_err(io("creating a pipe"))?),
            Stdio::from(writer),
        )
        .await
        .map_err(sandbox_error)?;
    // `start` dropped our copies of the pipe's write end with the command, so the read end
    // sees its end when the sandbox's processes are gone.
    let guard = SandboxGuard(Some((sandbox.clone(), id.clone())));
    let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(io("reading"))?;
    let limit = Duration::from_secs(app.build.timeout_secs);
    let status = stream_until_exit(log, &sandbox, &id, started.child, reader, limit).await;
    let ended = match &status {
        Ok(Some(status)) => *status,
        // Timed out (killed already) or unreadable: nothing of it may stay.
        _ => {
            sandbox.signal(&id, Signal::SIGKILL).await;
            std::os::unix::process::ExitStatusExt::from_raw(9)
        }
    };
    let oom_killed = sandbox.finish(&id, Some(ended)).await.oom_killed;
    drop(guard.disarm());
    let status = match status? {
        Some(status) => status,
        None => {
            log.flush(true).await?;
            log.note(&format!(
                "build timed out after {} s; stopped",
                limit.as_secs()
            ))
            .await?;
            return Err(DeployError::BuildTimedOut(limit.as_secs()));
        }
    };
    log.flush(true).await?;
    let described = if oom_killed {
        format!(
            "was killed: out of memory (limit {} MiB)",
            app.build.limits.memory_mb
        )
    } else {
        describe_sandbox_exit(status)
    };
    log.note(&format!("build command {described}")).await?;
    if oom_killed || !status.success() {
        return Err(DeployError::BuildFailed {
            status: described,
            tail: log.tail_lines(TAIL_LINES),
        });
    }
    Ok(())
}

fn sandbox_error(e: rhone_sandbox::SandboxError) -> DeployError {
    DeployError::io("the build's sandbox", std::io::Error::other(e))
}

/// `exited with status N`, or `was killed by signal N (NAME)` for the runtime's 128 + N.
fn describe_sandbox_exit(status: ExitStatus) -> String {
    match status.code() {
        Some(code) if code > 128 && code - 128 <= 64 => {
            let described = rhone_sandbox::describe_exit(status);
            format!("was killed by {described}")
        }
        _ => describe_exit(status),
    }
}

/// Feeds the pipe into the log until the sandbox's `run` exits (`Some(status)`) or the
/// limit passes (`None`, the sandbox killed), then drains what is left in the pipe.
async fn stream_until_exit(
    log: &mut BuildLog,
    sandbox: &Sandbox,
    id: &str,
    mut child: tokio::process::Child,
    mut reader: pipe::Receiver,
    limit: Duration,
) -> Result<Option<ExitStatus>, DeployError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut buf = vec![0u8; 8192];
    let mut open = true;
    let status = loop {
        tokio::select! {
            read = reader.read(&mut buf), if open => match read {
                Ok(0) => open = false,
                Ok(n) => {
                    log.push(&buf[..n]);
                    if log.should_flush() {
                        log.flush(false).await?;
                    }
                }
                Err(e) => return Err(DeployError::io("reading the build output", e)),
            },
            status = child.wait() => {
                break Some(status.map_err(|e| DeployError::io("waiting for the build", e))?);
            }
            _ = tick.tick() => log.flush(false).await?,
            () = tokio::time::sleep_until(deadline) => break None,
        }
    };
    if status.is_none() {
        sandbox.signal(id, Signal::SIGKILL).await;
        let _ = child.wait().await;
    }
    let drain = async {
        while open {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => open = false,
                Ok(n) => log.push(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
    Ok(status)
}

/// Kills the build's sandbox when dropped before the build ended: a cancelled or failed
/// activity leaves nothing running.
struct SandboxGuard(Option<(Sandbox, String)>);

impl SandboxGuard {
    fn disarm(mut self) -> Self {
        self.0 = None;
        self
    }
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        if let Some((sandbox, id)) = self.0.take() {
            sandbox.kill_detached(&id);
        }
    }
}
