//! Building: `rhone.toml` at the commit, the build command under its time limit with its
//! output streamed into the build log, then the output packed into the artifact
//! ([`super::package`]). The checkout is scratch space, removed when the build ends.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rhone_manifest::AppManifest;
use rhone_workflows::activities::{BuildInput, Built};
use sea_orm::DatabaseConnection;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Command;

use super::DeployConfig;
use super::buildlog::BuildLog;
use super::error::DeployError;
use super::package;
use super::process::{describe_exit, isolate, kill_group_of};
use super::source::{Checkout, ensure_checkout};

/// Variables of the worker's environment a build may see; everything else (the worker's
/// database URL, store and Temporal credentials) is withheld from the app's build.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYENV_ROOT",
    "GOPATH",
    "GOROOT",
    "GOCACHE",
    "GOMODCACHE",
    "CARGO_HOME",
    "RUSTUP_HOME",
];
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
    let checkout = ensure_checkout(
        config,
        input.deployment_id,
        &input.source,
        Some(&input.commit_sha),
    )
    .await?;
    let result = build_checkout(db, config, input, &checkout).await;
    let scratch = config.work_dir.join(input.deployment_id.to_string());
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
    run_command(&mut log, &app, checkout, input).await?;
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

/// Runs `build.command` with `sh -c` at the checkout root, its stdout and stderr on one pipe
/// (interleaved as written) into the log, killed with its whole process group at the limit.
async fn run_command(
    log: &mut BuildLog,
    app: &AppManifest,
    checkout: &Checkout,
    input: &BuildInput,
) -> Result<(), DeployError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e| DeployError::io(format!("{what} for the build command"), e)
    };
    let (reader, writer) = std::io::pipe().map_err(io("creating a pipe"))?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&app.build.command)
        .current_dir(&checkout.dir)
        .env_clear()
        .envs(
            PASSED_ENV
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (*k, v))),
        )
        .env("CI", "true")
        .env("RHONE_COMMIT_SHA", &checkout.commit_sha)
        .env("RHONE_DEPLOYMENT_ID", input.deployment_id.to_string())
        .stdout(Stdio::from(
            writer.try_clone().map_err(io("creating a pipe"))?,
        ))
        .stderr(Stdio::from(writer));
    isolate(&mut command);
    let child = command.spawn().map_err(io("starting `sh`"))?;
    // Our copies of the pipe's write end must close, or the read end never sees its end.
    drop(command);
    let guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));
    let reader = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(io("reading"))?;
    let limit = Duration::from_secs(app.build.timeout_secs);
    let status = stream_until_exit(log, child, reader, limit).await;
    drop(guard);
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
    log.note(&format!("build command {}", describe_exit(status)))
        .await?;
    if !status.success() {
        return Err(DeployError::BuildFailed {
            status: describe_exit(status),
            tail: log.tail_lines(TAIL_LINES),
        });
    }
    Ok(())
}

/// Feeds the pipe into the log until the child exits (`Some(status)`) or the limit passes
/// (`None`, the group killed), then drains what is left in the pipe.
async fn stream_until_exit(
    log: &mut BuildLog,
    mut child: tokio::process::Child,
    mut reader: pipe::Receiver,
    limit: Duration,
) -> Result<Option<ExitStatus>, DeployError> {
    let deadline = tokio::time::Instant::now() + limit;
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
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
    // Whatever the build left running (or all of it, at the limit) goes now, so the pipe
    // reaches its end.
    if let Some(pgid) = pgid {
        kill_group_of(pgid);
    }
    if status.is_none() {
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

/// Kills the build's process group when dropped: a cancelled or failed activity leaves
/// nothing running.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            kill_group_of(pgid);
        }
    }
}
