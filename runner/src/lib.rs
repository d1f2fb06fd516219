//! The runner agent of one host. It takes allocation commands over HTTP (`api`), pulls each
//! artifact by digest from the artifact store and unpacks it once per digest (`pull`),
//! starts the app with its env and secrets in a sandbox of its own (`process`, on
//! `rhone_sandbox`: an OCI runtime, cgroup limits, a network namespace on the runner's
//! bridge with its own address), probes readiness (`probe`), drains on request, and reports
//! every stage change to the control plane with the allocation's generation (`report`). One
//! task per allocation (`lifecycle`) drives the core Allocation machine: planned → pulling →
//! starting → ready → draining → stopped, or failed. State is in memory (`table`) and in a
//! record per allocation on disk; secret values (`rhone_core::Secret`) never leave the
//! runner except into the app's environment (and the root-only record and sandbox bundle),
//! and are blanked out of the output it keeps (`scrub`). Apps run under supervisors that
//! outlive the runner: a runner that was killed leaves them running, and the next one on
//! the same work directory adopts them (or reports how they ended) and removes any other
//! sandbox it finds. A runner that stops gracefully drains its allocations. The wire types (spec, status,
//! report) are `rhone_runner_protocol`'s, re-exported here.
//!
//! Entry point: [`serve`].

mod allocation;
mod api;
mod config;
mod lifecycle;
mod logs;
mod membership;
mod probe;
mod process;
mod pull;
mod report;
mod scrub;
mod table;

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use allocation::UpdateError;
pub use config::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_INHERIT_ENV, RunnerConfig};
pub use logs::RING_LINES;
pub use probe::NotReady;
pub use pull::PullError;
pub use rhone_core::secret::{REDACTED, Secret};
pub use rhone_runner_protocol::{
    AllocationSpec, AllocationStatus, Desired, INJECTED_ENV, ProcessSpec, SpecError, StageReport,
};
pub use rhone_store::ArtifactStore;

/// How long an ended allocation's directory (its record, log and home) is kept, for on-call.
const KEEP_ENDED: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// How often ended allocations' directories are looked for.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("runner server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("preparing the runner's work directory {path} failed")]
    WorkDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the runner's HTTP client failed")]
    HttpClient(#[source] reqwest::Error),
    #[error("the runner's sandbox cannot be set up: {0}")]
    Sandbox(#[source] rhone_sandbox::SandboxError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerIdentity {
    pub name: String,
    pub region: String,
    pub cell: String,
}

/// Everything a runner is made of: who it is, its settings, and the store it pulls from.
#[derive(Debug, Clone)]
pub struct RunnerState {
    pub identity: RunnerIdentity,
    pub config: RunnerConfig,
    pub store: ArtifactStore,
}

/// Serves the runner's API on `listener` until `shutdown` resolves, then stops every
/// allocation (each within its drain deadline) and returns once their processes are gone.
pub async fn serve(
    listener: TcpListener,
    state: RunnerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunnerError> {
    let RunnerState {
        identity,
        config,
        store,
    } = state;
    for dir in ["artifacts", table::ALLOCATIONS_DIR] {
        let path = config.work_dir.join(dir);
        tokio::fs::create_dir_all(&path)
            .await
            .map_err(|source| RunnerError::WorkDir {
                path: path.display().to_string(),
                source,
            })?;
    }
    let sandbox = rhone_sandbox::Sandbox::new(&rhone_sandbox::SandboxConfig {
        runtime: config.runtime.clone(),
        state_dir: config.work_dir.join("sandbox"),
        cgroup_parent: config.cgroup_parent.clone(),
    })
    .map_err(RunnerError::Sandbox)?;
    // The subnet this work directory had last: its allocations, if any still run, are there.
    let last_subnet = config.work_dir.join("subnet");
    let preferred = std::fs::read_to_string(&last_subnet)
        .ok()
        .and_then(|s| rhone_sandbox::net::parse_subnet(s.trim()).ok());
    let network = rhone_sandbox::HostNetwork::claim(&rhone_sandbox::NetworkConfig {
        subnet: config.subnet,
        preferred,
        lock_dir: config.net_lock_dir.clone(),
    })
    .await
    .map_err(RunnerError::Sandbox)?;
    if let Err(e) = std::fs::write(&last_subnet, network.subnet()) {
        tracing::warn!(error = %e, "cannot record the runner's subnet");
    }
    tracing::info!(bridge = network.bridge(), subnet = %network.subnet(), "allocation network ready");
    // No proxy: probes go to loopback ports, reports to the configured URL as given.
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(RunnerError::HttpClient)?;
    let reporter = report::Reporter::new(
        http.clone(),
        config
            .api_url
            .as_ref()
            .map(|api| format!("{api}{}", rhone_runner_protocol::fleet::REPORTS_PATH)),
        identity.name.clone(),
        config.credential.clone(),
    );
    let call_token = membership::CallToken::new(config.call_token_sha256.clone());
    let membership = match (&config.api_url, &config.credential) {
        (Some(api_url), Some(credential)) => {
            let address = match (&config.address, listener.local_addr()) {
                (Some(address), _) => address.clone(),
                (None, Ok(addr)) => format!("http://{addr}"),
                (None, Err(e)) => return Err(RunnerError::Serve(e)),
            };
            let prefix = network
                .subnet()
                .split_once('/')
                .and_then(|(_, p)| p.parse::<u32>().ok());
            let subnet_hosts = prefix.map_or(0, |p| (1i64 << (32 - p)) - 3);
            let registration = rhone_runner_protocol::fleet::Registration {
                region: identity.region.clone(),
                cell: identity.cell.clone(),
                address,
                subnet: network.subnet(),
                capacity: membership::capacity(&config, membership::measured(), subnet_hosts),
                agent_version: config.agent_version.clone(),
                allocations: Vec::new(),
            };
            Some((api_url.clone(), credential.clone(), registration))
        }
        _ => None,
    };
    let ctx = Arc::new(lifecycle::Context {
        cache: pull::ArtifactCache::new(config.work_dir.join("artifacts"), store),
        config,
        http,
        sandbox,
        network,
    });
    let table = Arc::new(table::Table::new(ctx.clone(), reporter));
    // What a predecessor that died left running is adopted; any other sandbox or network
    // namespace it left goes before anything new starts.
    let adopted = table.recover();
    let killed = ctx.sandbox.reap_except(&adopted).await;
    if killed > 0 {
        tracing::warn!(killed, "removed sandboxes a previous runner left");
    }
    ctx.network.prune(&adopted).await;
    // What ended long ago goes from the work directory, now and every hour.
    let pruner = {
        let table = table.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PRUNE_EVERY);
            loop {
                every.tick().await;
                let table = table.clone();
                let pruned = tokio::task::spawn_blocking(move || table.prune_ended(KEEP_ENDED))
                    .await
                    .unwrap_or(0);
                if pruned > 0 {
                    tracing::info!(
                        pruned,
                        "removed the directories of allocations that ended over a day ago"
                    );
                }
            }
        })
    };
    let membership = membership.map(|(api_url, credential, registration)| {
        tokio::spawn(
            membership::Membership {
                table: table.clone(),
                http: ctx.http.clone(),
                api_url,
                name: identity.name.clone(),
                credential,
                registration,
                call_token: call_token.clone(),
            }
            .run(),
        )
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, runner = %identity.name, "runner listening");
    }
    let app = api::router(api::Api {
        identity,
        table: table.clone(),
        subnet: ctx.network.subnet(),
        call_token,
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(task) = membership {
        task.abort();
    }
    pruner.abort();
    table.shutdown().await;
    ctx.network.teardown().await;
    served.map_err(RunnerError::Serve)
}
