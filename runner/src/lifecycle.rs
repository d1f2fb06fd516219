//! The task of one allocation: planned → pulling → starting → ready → draining → stopped,
//! or failed, driven by what happens to the artifact and the process and by stop requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rhone_core::stage::AllocationStage::*;
use tokio::sync::watch;
use tracing::Instrument;

use crate::allocation::{Allocation, Observed};
use crate::process::{Process, describe, free_port};
use crate::pull::ArtifactCache;
use crate::spec::AllocationSpec;
use crate::{RunnerConfig, orphans, probe};

/// How long a process that failed readiness gets to exit after SIGTERM.
const FAILED_GRACE: Duration = Duration::from_secs(2);

/// What the lifecycle needs from the runner.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: RunnerConfig,
    pub cache: ArtifactCache,
    pub http: reqwest::Client,
}

/// Runs the allocation until it is stopped or failed.
pub(crate) async fn run(ctx: Arc<Context>, alloc: Arc<Allocation>) {
    let spec = alloc.spec();
    let span = tracing::info_span!(
        "allocation",
        allocation_id = %alloc.id,
        digest = %spec.artifact_digest,
    );
    drive(&ctx, &alloc, &spec).instrument(span).await;
}

async fn drive(ctx: &Context, alloc: &Allocation, spec: &AllocationSpec) {
    let mut stop = alloc.stop_signal();
    if *stop.borrow() {
        alloc.enter(Stopped, note("stopped before it started"));
        return;
    }

    alloc.enter(Pulling, |_| {});
    let root = tokio::select! {
        root = ctx.cache.ensure(&spec.artifact_digest) => root,
        _ = stopped(&mut stop) => {
            alloc.enter(Stopped, note("stopped while pulling"));
            return;
        }
    };
    let root = match root {
        Ok(root) => root,
        Err(e) => {
            alloc.enter(Failed, note(&e.to_string()));
            return;
        }
    };

    alloc.enter(Starting, |_| {});
    let dir = ctx
        .config
        .work_dir
        .join("allocations")
        .join(alloc.id.to_string());
    let (mut process, port) = match start(ctx, alloc, spec, &root, &dir) {
        Ok(started) => started,
        Err(message) => {
            alloc.enter(Failed, note(&message));
            return;
        }
    };
    orphans::record(&dir, process.pid());
    supervise(ctx, alloc, spec, &mut process, port, &mut stop).await;
    orphans::forget(&dir);
}

/// Probes readiness, then watches the process until it ends or is drained.
async fn supervise(
    ctx: &Context,
    alloc: &Allocation,
    spec: &AllocationSpec,
    process: &mut Process,
    port: u16,
    stop: &mut watch::Receiver<bool>,
) {
    let url = format!("http://127.0.0.1:{port}{}", spec.process.health_path);
    let timeout = Duration::from_millis(spec.process.readiness_timeout_ms);
    tokio::select! {
        ready = probe::wait_ready(&ctx.http, &url, timeout) => match ready {
            Ok(()) => {
                alloc.enter(Ready, |_| {});
            }
            Err(not_ready) => {
                let ended = process.terminate(FAILED_GRACE).await;
                alloc.enter(Failed, ended_with(ended, &not_ready.to_string()));
                return;
            }
        },
        status = process.wait() => {
            alloc.enter(Failed, ended_with(status.map(|s| (s, false)), "the process exited while starting"));
            return;
        }
        _ = stopped(stop) => {
            let ended = process.terminate(drain_deadline(ctx, spec)).await;
            alloc.enter(Stopped, ended_with(ended, "stopped while starting"));
            return;
        }
    }

    tokio::select! {
        status = process.wait() => {
            alloc.enter(Failed, ended_with(status.map(|s| (s, false)), "the process exited on its own"));
        }
        _ = stopped(stop) => {
            alloc.enter(Draining, |_| {});
            let deadline = drain_deadline(ctx, spec);
            let ended = process.terminate(deadline).await;
            let message = match &ended {
                Ok((_, true)) => format!("killed after the {} ms drain deadline", deadline.as_millis()),
                _ => "drained".to_owned(),
            };
            alloc.enter(Stopped, ended_with(ended, &message));
        }
    }
}

/// Picks a port and starts the process; the error is the failure message.
fn start(
    ctx: &Context,
    alloc: &Allocation,
    spec: &AllocationSpec,
    root: &Path,
    dir: &Path,
) -> Result<(Process, u16), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
    let mut env: Vec<(String, String)> = ctx
        .config
        .inherit_env
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v)))
        .collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(
        spec.secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned())),
    );
    env.push(("PORT".into(), port.to_string()));
    env.push(("RHONE_ALLOCATION_ID".into(), alloc.id.to_string()));
    env.push((
        "RHONE_ARTIFACT_DIGEST".into(),
        spec.artifact_digest.to_string(),
    ));
    let process = Process::spawn(&spec.process.command, root, env, &alloc.logs)
        .map_err(|e| format!("starting `sh -c` in {}: {e}", root.display()))?;
    let pid = process.pid();
    tracing::info!(pid, port, "process started");
    alloc.observe(|o| {
        o.port = Some(port);
        o.pid = Some(pid);
    });
    Ok((process, port))
}

fn drain_deadline(ctx: &Context, spec: &AllocationSpec) -> Duration {
    spec.process
        .drain_timeout_ms
        .map_or(ctx.config.drain_timeout, Duration::from_millis)
}

/// Resolves once a stop is requested (or the allocation is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn note(message: &str) -> impl FnOnce(&mut Observed) + '_ {
    move |o| o.message = Some(message.to_owned())
}

/// Records how the process ended, keeping its port and pid for the record.
fn ended_with<'a>(
    ended: std::io::Result<(std::process::ExitStatus, bool)>,
    why: &'a str,
) -> impl FnOnce(&mut Observed) + 'a {
    move |o| match ended {
        Ok((status, _)) => {
            o.exit_status = Some(describe(status));
            o.exit_code = status.code();
            o.message = Some(format!("{why} ({})", describe(status)));
        }
        Err(e) => o.message = Some(format!("{why}; waiting for the process failed: {e}")),
    }
}
