//! The task of one allocation: planned → pulling → starting → ready → draining → stopped,
//! or failed, driven by what happens to the artifact and the process and by stop requests.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rhone_core::stage::AllocationStage::*;
use rhone_runner_protocol::AllocationSpec;
use rhone_sandbox::{Adoption, Bind, HostNetwork, Network, Sandbox, SandboxSpec, describe_exit};
use tokio::sync::watch;
use tracing::Instrument;

use crate::allocation::{Allocation, Observed};
use crate::process::{Ended, Process};
use crate::pull::ArtifactCache;
use crate::{RunnerConfig, probe};

/// How long a process that failed readiness gets to exit after SIGTERM.
const FAILED_GRACE: Duration = Duration::from_secs(2);
/// How long resolving one egress host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the artifact is inside the sandbox; the app starts there.
pub(crate) const APP_DIR: &str = "/app";

/// What the lifecycle needs from the runner.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: RunnerConfig,
    pub cache: ArtifactCache,
    pub http: reqwest::Client,
    pub sandbox: Sandbox,
    pub network: HostNetwork,
}

/// Runs the allocation until it is stopped or failed, from the stage it is at: a new one
/// (`planned`) starts; one an earlier runner on this host ran is taken over from the stage its
/// record has: not started yet, it starts; its process still running (and its network
/// there), it is adopted and watched on (probed first if it was not ready yet); ended while
/// no runner watched, it is reported failed (stopped, if it was draining) with how it ended.
pub(crate) async fn run(ctx: Arc<Context>, alloc: Arc<Allocation>) {
    let spec = alloc.spec();
    let span = tracing::info_span!(
        "allocation",
        allocation_id = %alloc.id,
        digest = %spec.artifact_digest,
    );
    adopt(&ctx, &alloc, &spec).instrument(span).await;
}

async fn adopt(ctx: &Context, alloc: &Allocation, spec: &AllocationSpec) {
    let was = alloc.observed().stage;
    if matches!(was, Planned | Pulling) {
        // Nothing of it was started: start it.
        return drive(ctx, alloc, spec).await;
    }
    let id = alloc.id.to_string();
    let limit = spec.process.limits.memory_mb;
    let found = ctx.sandbox.adopt(&id);
    let attachment = ctx.network.adopt(&id).await;
    let end = if was == Draining { Stopped } else { Failed };
    match (found, attachment) {
        (Some(Adoption::Running(supervised, output)), Some(attachment)) => {
            let mut process = Process::adopt(&ctx.sandbox, supervised, output, &alloc.logs);
            tracing::info!(stage = %was, address = %attachment.address, "adopted a running allocation");
            if was == Draining {
                alloc.request_stop();
            }
            let mut stop = alloc.stop_signal();
            if was != Starting
                || become_ready(
                    ctx,
                    alloc,
                    spec,
                    &mut process,
                    attachment.address,
                    &mut stop,
                )
                .await
            {
                run_until_end(ctx, alloc, spec, &mut process, &mut stop).await;
            }
            ctx.network.detach(&attachment).await;
        }
        (Some(Adoption::Running(supervised, output)), None) => {
            let mut process = Process::adopt(&ctx.sandbox, supervised, output, &alloc.logs);
            let ended = process.terminate(FAILED_GRACE).await;
            let why = "its network namespace was gone when the runner restarted; stopped";
            alloc.enter(end, ended_with(ended, why, limit));
        }
        (found, attachment) => {
            if let Some(attachment) = attachment {
                ctx.network.detach(&attachment).await;
            }
            let status = match found {
                Some(Adoption::Ended(status)) => status,
                _ => None,
            };
            let exit = ctx.sandbox.finish(&id, status).await;
            let ended = Ok(Ended {
                status,
                oom_killed: exit.oom_killed,
                killed_at_deadline: false,
            });
            let why = "the runner restarted and found the process ended";
            let record = ended_with(ended, why, limit);
            alloc.enter(end, |o| {
                record(o);
                if status.is_none() {
                    o.exit_status = Some(
                        "ended while the runner was down (how was not recorded: its supervisor was killed too)"
                            .to_owned(),
                    );
                }
            });
        }
    }
}

async fn drive(ctx: &Context, alloc: &Allocation, spec: &AllocationSpec) {
    let mut stop = alloc.stop_signal();
    if *stop.borrow() {
        alloc.enter(Stopped, note("stopped before it started"));
        return;
    }

    alloc.enter(Pulling, |_| {});
    let egress = match resolve(spec).await {
        Ok(egress) => egress,
        Err(message) => {
            alloc.enter(Failed, note(&message));
            return;
        }
    };
    let hosts = egress
        .iter()
        .filter(|e| e.name.parse::<Ipv4Addr>().is_err())
        .map(|e| (e.name.clone(), e.address))
        .collect();
    let allowed: Vec<(Ipv4Addr, u16)> = egress.iter().map(|e| (e.address, e.port)).collect();
    let dir = alloc.dir.clone();
    let sandbox_id = alloc.id.to_string();
    let root = ctx.cache.path_of(&spec.artifact_digest);
    let spec_in_sandbox = sandbox_spec(ctx, alloc, spec, &root, &dir, hosts);
    // The artifact is made sure of while the network namespace, the app's home and the
    // sandbox's bundle and cgroups are made, side by side: none needs the others, and each
    // is a few milliseconds of the start.
    let pulled = async {
        tokio::select! {
            pulled = ctx.cache.ensure(&spec.artifact_digest) => Some(pulled),
            _ = stopped(&mut stop) => None,
        }
    };
    let (pulled, attached, prepared) = tokio::join!(
        pulled,
        ctx.network
            .attach(&sandbox_id, spec.process.port < 1024, &allowed),
        prepare(ctx, &spec_in_sandbox, &dir),
    );
    let failure = match (&pulled, &attached, &prepared) {
        (Some(Ok(_)), Ok(_), Ok(())) => None,
        (None, _, _) => Some((Stopped, "stopped while pulling".to_owned())),
        (Some(Err(e)), _, _) => Some((Failed, e.to_string())),
        (_, Err(e), _) => Some((Failed, e.to_string())),
        (_, _, Err(message)) => Some((Failed, message.clone())),
    };
    let attachment = match (failure, attached) {
        (None, Ok(attachment)) => attachment,
        (failure, attached) => {
            if let Ok(attachment) = &attached {
                ctx.network.detach(attachment).await;
            }
            ctx.sandbox.discard(&sandbox_id).await;
            let (stage, message) =
                failure.unwrap_or((Failed, "the network namespace was not made".to_owned()));
            alloc.enter(stage, note(&message));
            return;
        }
    };
    alloc.enter(Starting, |_| {});
    match Process::spawn(&ctx.sandbox, &spec_in_sandbox, &alloc.logs) {
        Ok(mut process) => {
            tracing::info!(address = %attachment.address, port = spec.process.port, "process started");
            let (ip, port) = (attachment.address, spec.process.port);
            alloc.observe(|o| {
                o.ip = Some(ip);
                o.port = Some(port);
            });
            supervise(
                ctx,
                alloc,
                spec,
                &mut process,
                attachment.address,
                &mut stop,
            )
            .await;
        }
        Err(e) => {
            ctx.sandbox.discard(&sandbox_id).await;
            alloc.enter(Failed, note(&format!("starting the sandbox: {e}")));
        }
    }
    ctx.network.detach(&attachment).await;
}

/// One address an allocation may connect to: `name` (as its egress named it) resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    name: String,
    address: Ipv4Addr,
    port: u16,
}

/// The allocation's egress resolved to IPv4 addresses (every address of a name): the error
/// names the endpoint that cannot be.
async fn resolve(spec: &AllocationSpec) -> Result<Vec<Resolved>, String> {
    let mut resolved = Vec::new();
    for endpoint in &spec.egress {
        let addresses: Vec<Ipv4Addr> = match endpoint.host.parse::<Ipv4Addr>() {
            Ok(address) => vec![address],
            Err(_) => {
                let looked_up = tokio::time::timeout(
                    RESOLVE_TIMEOUT,
                    tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)),
                )
                .await
                .map_err(|_| {
                    format!("egress {endpoint}: no answer from DNS within {RESOLVE_TIMEOUT:?}")
                })?
                .map_err(|e| format!("egress {endpoint}: cannot resolve {}: {e}", endpoint.host))?;
                looked_up
                    .filter_map(|a| match a.ip() {
                        std::net::IpAddr::V4(v4) => Some(v4),
                        std::net::IpAddr::V6(_) => None,
                    })
                    .collect()
            }
        };
        if addresses.is_empty() {
            return Err(format!(
                "egress {endpoint}: {} has no IPv4 address (allocations have no IPv6)",
                endpoint.host
            ));
        }
        for address in addresses {
            let entry = Resolved {
                name: endpoint.host.clone(),
                address,
                port: endpoint.port,
            };
            if !resolved.contains(&entry) {
                resolved.push(entry);
            }
        }
    }
    Ok(resolved)
}

/// Probes readiness, then watches the process until it ends or is drained.
async fn supervise(
    ctx: &Context,
    alloc: &Allocation,
    spec: &AllocationSpec,
    process: &mut Process,
    ip: Ipv4Addr,
    stop: &mut watch::Receiver<bool>,
) {
    if become_ready(ctx, alloc, spec, process, ip, stop).await {
        run_until_end(ctx, alloc, spec, process, stop).await;
    }
}

/// Probes readiness until it answers (`ready`: true), the process ends, or a stop comes
/// (both final: false).
async fn become_ready(
    ctx: &Context,
    alloc: &Allocation,
    spec: &AllocationSpec,
    process: &mut Process,
    ip: Ipv4Addr,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let limit = spec.process.limits.memory_mb;
    let url = format!(
        "http://{ip}:{}{}",
        spec.process.port, spec.process.health_path
    );
    let timeout = Duration::from_millis(spec.process.readiness_timeout_ms);
    tokio::select! {
        ready = probe::wait_ready(&ctx.http, &url, timeout) => match ready {
            Ok(()) => {
                let pid = process.pid();
                alloc.enter(Ready, |o| o.pid = pid);
                true
            }
            Err(not_ready) => {
                let ended = process.terminate(FAILED_GRACE).await;
                alloc.enter(Failed, ended_with(ended, &not_ready.to_string(), limit));
                false
            }
        },
        ended = process.wait() => {
            alloc.enter(Failed, ended_with(ended, "the process exited while starting", limit));
            false
        }
        _ = stopped(stop) => {
            let ended = process.terminate(drain_deadline(ctx, spec)).await;
            alloc.enter(Stopped, ended_with(ended, "stopped while starting", limit));
            false
        }
    }
}

/// Watches a ready process until it ends on its own (failed) or is drained (stopped).
async fn run_until_end(
    ctx: &Context,
    alloc: &Allocation,
    spec: &AllocationSpec,
    process: &mut Process,
    stop: &mut watch::Receiver<bool>,
) {
    let limit = spec.process.limits.memory_mb;
    tokio::select! {
        ended = process.wait() => {
            alloc.enter(Failed, ended_with(ended, "the process exited on its own", limit));
        }
        _ = stopped(stop) => {
            alloc.enter(Draining, |_| {});
            let deadline = drain_deadline(ctx, spec);
            let ended = process.terminate(deadline).await;
            let message = match &ended {
                Ok(e) if e.killed_at_deadline => format!("killed after the {} ms drain deadline", deadline.as_millis()),
                _ => "drained".to_owned(),
            };
            alloc.enter(Stopped, ended_with(ended, &message, limit));
        }
    }
}

/// The app's sandbox: the artifact read-only at [`APP_DIR`], its home writable, the
/// runner's shared directories read-only, its limits, and the network namespace
/// [`HostNetwork::attach`] makes for it.
fn sandbox_spec(
    ctx: &Context,
    alloc: &Allocation,
    spec: &AllocationSpec,
    root: &Path,
    dir: &Path,
    hosts: Vec<(String, Ipv4Addr)>,
) -> SandboxSpec {
    let sandbox_id = alloc.id.to_string();
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
    env.push(("PORT".into(), spec.process.port.to_string()));
    env.push(("RHONE_ALLOCATION_ID".into(), alloc.id.to_string()));
    env.push((
        "RHONE_ARTIFACT_DIGEST".into(),
        spec.artifact_digest.to_string(),
    ));
    SandboxSpec {
        network: Network::Join(ctx.network.netns_path(&sandbox_id)),
        id: sandbox_id,
        command: spec.process.command.clone(),
        env,
        cwd: APP_DIR.to_owned(),
        binds: [
            Bind::read_only(root, APP_DIR),
            Bind::writable(dir.join("home"), rhone_sandbox::HOME),
        ]
        .into_iter()
        .chain(
            ctx.config
                .shared_dirs
                .iter()
                .map(|(host, inside)| Bind::read_only(host, inside)),
        )
        .collect(),
        limits: spec.process.limits,
        hostname: "app".to_owned(),
        hosts,
    }
}

/// The app's own writable directory (its HOME, owned by its sandbox's uid), then the
/// sandbox's bundle and cgroups; the error is the failure message.
async fn prepare(ctx: &Context, spec: &SandboxSpec, dir: &Path) -> Result<(), String> {
    let home = dir.join("home");
    let owner = rhone_sandbox::host_uid(&spec.id);
    let made = {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&home)?;
            rhone_sandbox::chown_tree(&home, owner)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
    };
    made.map_err(|e| format!("creating {}: {e}", home.display()))?;
    ctx.sandbox
        .prepare(spec)
        .await
        .map_err(|e| format!("preparing the sandbox: {e}"))
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

/// Records how the process ended, keeping its port and pid for the record. An end by the
/// OOM killer says so first, with the limit.
fn ended_with<'a>(
    ended: std::io::Result<Ended>,
    why: &'a str,
    memory_mb: u32,
) -> impl FnOnce(&mut Observed) + 'a {
    move |o| match ended {
        Ok(ended) => {
            let described = ended.status.map_or_else(
                || "not recorded (its supervisor was killed)".to_owned(),
                describe_exit,
            );
            o.exit_status = Some(described.clone());
            o.exit_code = ended.status.and_then(|s| s.code());
            o.message = Some(if ended.oom_killed {
                format!("out of memory (limit {memory_mb} MiB): {why} ({described})")
            } else {
                format!("{why} ({described})")
            });
        }
        Err(e) => o.message = Some(format!("{why}; waiting for the process failed: {e}")),
    }
}
