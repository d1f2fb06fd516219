//! `rhone serve ROLE`: one server role of a multi-host install. Configuration comes from
//! `RHONE_*` variables through one pure parse function that reports every bad key at once.

use std::{collections::BTreeMap, future::Future, net::SocketAddr};

use anyhow::{Context, Result, bail};
use clap::ValueEnum as _;
use rhone_activities::{
    PromotionConfig, WakeConfig, Worker, WorkerConfig,
    temporal::{self, TemporalConfig},
};
use tokio::net::TcpListener;

/// The `RHONE_*` variables of every role, as `rhone serve --help` prints them.
const VARIABLES: &str = "\
Every role:
  RHONE_LISTEN                 address to serve on (api 127.0.0.1:8080, edge :8081, runner :8082)
  RHONE_LOG                    log filter (default info)
api, worker, edge:
  RHONE_DATABASE_URL           control DB, sqlite://PATH?mode=rwc or postgres://… (required)
  RHONE_TEMPORAL_ADDRESS       Temporal frontend (else Temporal's TEMPORAL_* envconfig)
  RHONE_TASK_QUEUE             Temporal task queue (default rhone-control)
api, worker:
  RHONE_RUNNER_KEY[_FILE]      operator key (32+ characters) the runners' call tokens derive from
  RHONE_RUNNER_LOST_AFTER_MS   a runner unseen this long is lost (default 3000)
  RHONE_ALLOW_LOCAL_REPOSITORIES  1: deploys may clone a path or file:// URL on the worker's host (default 0)
api:
  RHONE_RUNNER_HEARTBEAT_MS    how often runners heartbeat (default 1000)
worker:
  RHONE_DATA_DIR               build scratch space and the local artifact store
  RHONE_PREVIEW_DOMAIN         preview hosts end with it (default rhone.localhost)
  RHONE_PREVIEW_PORT_SUFFIX    appended to preview URLs (e.g. :8081)
  RHONE_PROMOTION_HEALTH_WINDOW_MS, RHONE_PROMOTION_DRAIN_GRACE_MS,
  RHONE_PROMOTION_PROPAGATION_DEADLINE_MS, RHONE_EDGE_LIVENESS_MS,
  RHONE_WAKE_IDLE_CHECK_MS, RHONE_WAKE_DRAIN_GRACE_MS   promotion and wake timings
edge:
  RHONE_EDGE_ID, RHONE_EDGE_POLL_MS, RHONE_EDGE_ASSET_CACHE_BYTES, RHONE_DATA_DIR
  RHONE_EDGE_ADMIN_LISTEN      on-call's /_rhone/status (default 127.0.0.1:9081; `off` for none)
worker, runner, edge:
  RHONE_S3_ENDPOINT, RHONE_S3_BUCKET, RHONE_S3_ACCESS_KEY_ID, RHONE_S3_SECRET_ACCESS_KEY[_FILE],
  RHONE_S3_REGION (us-east-1), RHONE_S3_PREFIX   the artifact store is this S3 bucket
runner:
  RHONE_RUNNER_NAME, RHONE_REGION, RHONE_CELL   its identity (as `rhone runners add` named it)
  RHONE_API_URL                the API it registers, heartbeats and reports to
  RHONE_RUNNER_CREDENTIAL[_FILE]  the credential `rhone runners add` printed
  RHONE_RUNNER_ADDRESS         where the worker reaches it (default http://LISTEN)
  RHONE_RUNNER_MEMORY_MB, RHONE_RUNNER_CPU_MILLIS, RHONE_RUNNER_SLOTS   capacity (capped by the host)
  RHONE_RUNNER_SUBNET          its allocations' subnet (default the first free 10.213.N.0/24)
  RHONE_RUNNER_WORK_DIR, RHONE_ARTIFACT_DIR, RHONE_RUNNER_RUNTIME (crun), RHONE_RUNNER_NET_LOCK_DIR,
  RHONE_RUNNER_SHARED_DIRS, RHONE_RUNNER_DRAIN_TIMEOUT_MS, RHONE_RUNNER_INHERIT_ENV,
  RHONE_RUNNER_AGENT_VERSION, RHONE_RUNNER_CGROUP_PARENT,
  RHONE_RUNNER_CALL_TOKEN_SHA256 (pins the call token; a standalone runner)
Every bad variable is reported at once, before anything starts.";

#[derive(clap::Args)]
#[command(after_help = VARIABLES)]
pub struct ServeArgs {
    #[arg(value_enum)]
    role: Role,
    /// Check the role's configuration (every RHONE_* variable it reads, the files they
    /// name) and exit: 0 and a summary when it would start, 1 and every problem otherwise.
    /// Nothing is connected to or bound.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Api,
    Worker,
    Edge,
    Runner,
}

/// Settings of a server role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `RHONE_DATABASE_URL`: the control DB (`sqlite://…` or `postgres://…`). Required for
    /// every role but the runner.
    pub database_url: Option<String>,
    /// `RHONE_LISTEN`: the address to serve on. Default `127.0.0.1:8080` (api),
    /// `:8081` (edge), `:8082` (runner).
    pub listen: Option<SocketAddr>,
    /// `RHONE_TASK_QUEUE`: the Temporal task queue. Default `rhone-control`.
    pub task_queue: String,
    /// `RHONE_TEMPORAL_ADDRESS`: overrides the Temporal envconfig address.
    pub temporal_address: Option<String>,
    /// `RHONE_RUNNER_NAME`, `RHONE_REGION`, `RHONE_CELL`: the runner's identity.
    pub runner_name: String,
    pub region: String,
    pub cell: String,
    /// `RHONE_DATA_DIR` (worker): build scratch space in `work/` and the local artifact
    /// store in `artifacts/` below it, which the runners of the host read. Default: the
    /// system temporary directory.
    pub data_dir: Option<std::path::PathBuf>,
    /// `RHONE_PREVIEW_DOMAIN` (worker): preview hosts are `<env>.<app>.<project>.<workspace>.`
    /// followed by it. Default `rhone.localhost`.
    pub preview_domain: String,
    /// `RHONE_EDGE_ADMIN_LISTEN` (edge): where `GET /_rhone/status` is served for on-call,
    /// never on the public listener. Default `127.0.0.1:9081`; `off` serves none.
    pub edge_admin_listen: Option<SocketAddr>,
    /// `RHONE_EDGE_ID` (edge): the edge's name in `edge_acks`, unique per control DB.
    /// Default `edge-<hostname>-<port>`.
    pub edge_id: Option<String>,
    /// `RHONE_EDGE_POLL_MS` (edge): how often the edge polls the route change log and the
    /// allocations, in milliseconds. Default 20.
    pub edge_poll_interval: Option<std::time::Duration>,
    /// `RHONE_EDGE_ASSET_CACHE_BYTES` (edge): memory kept for asset bytes served to sleeping
    /// apps' visitors (read from the local artifact store under `RHONE_DATA_DIR`). Default
    /// 256 MiB.
    pub edge_asset_cache_bytes: u64,
    /// `RHONE_PREVIEW_PORT_SUFFIX` (worker): appended to preview URLs, e.g. `:8081` when the
    /// edge is not on port 80. Default empty.
    pub preview_port_suffix: String,
    /// Promotion timings (worker), in milliseconds: `RHONE_PROMOTION_HEALTH_WINDOW_MS`
    /// (default 5000), `RHONE_PROMOTION_DRAIN_GRACE_MS` (30000),
    /// `RHONE_PROMOTION_PROPAGATION_DEADLINE_MS` (10000), `RHONE_EDGE_LIVENESS_MS` (30000:
    /// a promotion waits only for edges seen this recently).
    pub promotion: PromotionConfig,
    /// `RHONE_WAKE_IDLE_CHECK_MS` (worker): the longest interval between two idle checks of a
    /// hot scale-to-zero route (default 5000; a route is checked every `min(sleep after / 4,
    /// this)`); `RHONE_WAKE_DRAIN_GRACE_MS`: how long a sleep waits between the edges and
    /// the runners (default 1000).
    pub wake: WakeConfig,
    /// `RHONE_RUNNER_HEARTBEAT_MS` (api): how often runners heartbeat (default 1000);
    /// `RHONE_RUNNER_LOST_AFTER_MS` (api, worker): a runner unseen this long is lost and its
    /// allocations are replaced (default 3000; more than the heartbeat interval).
    pub fleet: rhone_core::fleet::FleetTimings,
    /// `RHONE_S3_ENDPOINT`, `RHONE_S3_BUCKET`, `RHONE_S3_ACCESS_KEY_ID`,
    /// `RHONE_S3_SECRET_ACCESS_KEY` (or `…_FILE`), `RHONE_S3_REGION` (default `us-east-1`),
    /// `RHONE_S3_PREFIX` (default none) (worker, runner, edge): the artifact store is this
    /// S3 bucket. Default: the local store under `RHONE_DATA_DIR` / `RHONE_ARTIFACT_DIR`.
    pub s3: Option<S3Settings>,
    /// `RHONE_ALLOW_LOCAL_REPOSITORIES` (api, worker): `1` lets deploys clone a local path or
    /// a `file://` URL on the worker's host. Default `0`: only remote URLs.
    pub local_repositories: bool,
    /// `RHONE_SECRETS_KEY` or `RHONE_SECRETS_KEY_FILE` (and `RHONE_SECRETS_OLD_KEYS`): the
    /// key secrets are sealed under (API).
    pub secrets: Option<std::sync::Arc<rhone_schema::secrets::Keyring>>,
}

/// The S3 artifact store of a role. `Debug` leaves the secret key out.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: rhone_core::Secret,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// The store (no request is made yet).
    pub fn store(&self) -> Result<rhone_store::ArtifactStore> {
        Ok(rhone_store::ArtifactStore::s3(&rhone_store::S3Config {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: rhone_store::SecretKey::new(self.secret_access_key.expose()),
        })?)
    }

    /// The `RHONE_S3_*` keys: none set is `None`; an endpoint needs every other required one.
    fn parse(env: &BTreeMap<String, String>, errors: &mut Vec<String>) -> Option<S3Settings> {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let secret = match (
            get("RHONE_S3_SECRET_ACCESS_KEY"),
            get("RHONE_S3_SECRET_ACCESS_KEY_FILE"),
        ) {
            (Some(value), None) => Some(value),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                Ok(_) => {
                    errors.push(format!("RHONE_S3_SECRET_ACCESS_KEY_FILE={path:?} is empty"));
                    None
                }
                Err(e) => {
                    errors.push(format!("RHONE_S3_SECRET_ACCESS_KEY_FILE={path:?}: {e}"));
                    None
                }
            },
            (Some(_), Some(_)) => {
                errors.push(
                    "set RHONE_S3_SECRET_ACCESS_KEY or RHONE_S3_SECRET_ACCESS_KEY_FILE, not both"
                        .to_owned(),
                );
                None
            }
            (None, None) => None,
        };
        let endpoint = get("RHONE_S3_ENDPOINT");
        let others = [
            "RHONE_S3_BUCKET",
            "RHONE_S3_ACCESS_KEY_ID",
            "RHONE_S3_REGION",
            "RHONE_S3_PREFIX",
        ];
        let Some(endpoint) = endpoint else {
            if others.iter().any(|k| get(k).is_some()) || secret.is_some() {
                errors.push("RHONE_S3_* keys are set without RHONE_S3_ENDPOINT".to_owned());
            }
            return None;
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            errors.push(format!(
                "RHONE_S3_ENDPOINT={endpoint:?} must be an http:// or https:// URL"
            ));
        }
        let mut missing = Vec::new();
        let bucket = get("RHONE_S3_BUCKET").unwrap_or_else(|| {
            missing.push("RHONE_S3_BUCKET");
            String::new()
        });
        let access_key_id = get("RHONE_S3_ACCESS_KEY_ID").unwrap_or_else(|| {
            missing.push("RHONE_S3_ACCESS_KEY_ID");
            String::new()
        });
        let secret = secret.unwrap_or_else(|| {
            missing.push("RHONE_S3_SECRET_ACCESS_KEY (or _FILE)");
            String::new()
        });
        if !missing.is_empty() {
            errors.push(format!(
                "RHONE_S3_ENDPOINT is set, so {} must be too",
                missing.join(", ")
            ));
        }
        Some(S3Settings {
            endpoint,
            region: get("RHONE_S3_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
            bucket,
            prefix: get("RHONE_S3_PREFIX").unwrap_or_default(),
            access_key_id,
            secret_access_key: rhone_core::Secret::new(secret),
        })
    }
}

impl Config {
    /// Parses every key, reports every bad one, fails once.
    pub fn parse(env: &BTreeMap<String, String>) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let listen = get("RHONE_LISTEN").and_then(|v| match v.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!(
                    "RHONE_LISTEN={v:?} is not an address like 127.0.0.1:8080 ({e})"
                ));
                None
            }
        });
        let edge_admin_listen = match get("RHONE_EDGE_ADMIN_LISTEN").as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9081))),
            Some("off") => None,
            Some(v) => match v.parse() {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(format!(
                        "RHONE_EDGE_ADMIN_LISTEN={v:?} is not an address like 127.0.0.1:9081, or `off` ({e})"
                    ));
                    None
                }
            },
        };
        let mut millis = |key: &str| {
            get(key).and_then(|v| match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Some(std::time::Duration::from_millis(ms)),
                _ => {
                    errors.push(format!(
                        "{key}={v:?} is not a positive number of milliseconds"
                    ));
                    None
                }
            })
        };
        let edge_poll_interval = millis("RHONE_EDGE_POLL_MS");
        let defaults = PromotionConfig::default();
        let promotion = PromotionConfig {
            health_window: millis("RHONE_PROMOTION_HEALTH_WINDOW_MS")
                .unwrap_or(defaults.health_window),
            drain_grace: millis("RHONE_PROMOTION_DRAIN_GRACE_MS").unwrap_or(defaults.drain_grace),
            propagation_deadline: millis("RHONE_PROMOTION_PROPAGATION_DEADLINE_MS")
                .unwrap_or(defaults.propagation_deadline),
            edge_liveness: millis("RHONE_EDGE_LIVENESS_MS").unwrap_or(defaults.edge_liveness),
        };
        let wake = WakeConfig {
            idle_check: millis("RHONE_WAKE_IDLE_CHECK_MS")
                .unwrap_or(WakeConfig::default().idle_check),
            drain_grace: millis("RHONE_WAKE_DRAIN_GRACE_MS")
                .unwrap_or(WakeConfig::default().drain_grace),
        };
        let fleet_defaults = rhone_core::fleet::FleetTimings::default();
        let fleet = rhone_core::fleet::FleetTimings {
            heartbeat_interval_ms: millis("RHONE_RUNNER_HEARTBEAT_MS")
                .map_or(fleet_defaults.heartbeat_interval_ms, |d| {
                    d.as_millis() as u64
                }),
            lost_after_ms: millis("RHONE_RUNNER_LOST_AFTER_MS")
                .map_or(fleet_defaults.lost_after_ms, |d| d.as_millis() as u64),
        };
        if fleet.lost_after_ms <= fleet.heartbeat_interval_ms {
            errors.push(format!(
                "RHONE_RUNNER_LOST_AFTER_MS ({}) must be more than RHONE_RUNNER_HEARTBEAT_MS ({})",
                fleet.lost_after_ms, fleet.heartbeat_interval_ms
            ));
        }
        let s3 = S3Settings::parse(env, &mut errors);
        let edge_asset_cache_bytes = match get("RHONE_EDGE_ASSET_CACHE_BYTES") {
            None => rhone_edge::DEFAULT_ASSET_CACHE_BYTES,
            Some(v) => v.parse::<u64>().unwrap_or_else(|_| {
                errors.push(format!(
                    "RHONE_EDGE_ASSET_CACHE_BYTES={v:?} is not a number of bytes"
                ));
                rhone_edge::DEFAULT_ASSET_CACHE_BYTES
            }),
        };
        let local_repositories = match get(rhone_core::repository::ALLOW_LOCAL_VAR).as_deref() {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(v) => {
                errors.push(format!(
                    "{}={v:?} must be 1 or 0",
                    rhone_core::repository::ALLOW_LOCAL_VAR
                ));
                false
            }
        };
        let secrets = match rhone_schema::secrets::Keyring::from_vars(get) {
            Ok(keys) => keys.map(std::sync::Arc::new),
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
        let database_url = get("RHONE_DATABASE_URL");
        if let Some(url) = &database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            errors.push("RHONE_DATABASE_URL must start with sqlite: or postgres://".to_owned());
        }
        let config = Config {
            database_url,
            listen,
            task_queue: get("RHONE_TASK_QUEUE")
                .unwrap_or_else(|| WorkerConfig::default().task_queue),
            temporal_address: get("RHONE_TEMPORAL_ADDRESS"),
            runner_name: get("RHONE_RUNNER_NAME").unwrap_or_else(|| "runner-1".to_owned()),
            region: get("RHONE_REGION").unwrap_or_else(|| "local".to_owned()),
            cell: get("RHONE_CELL").unwrap_or_else(|| "local-a".to_owned()),
            data_dir: get("RHONE_DATA_DIR").map(std::path::PathBuf::from),
            preview_domain: get("RHONE_PREVIEW_DOMAIN")
                .unwrap_or_else(|| "rhone.localhost".to_owned()),
            edge_id: get("RHONE_EDGE_ID"),
            edge_admin_listen,
            edge_poll_interval,
            edge_asset_cache_bytes,
            preview_port_suffix: get("RHONE_PREVIEW_PORT_SUFFIX").unwrap_or_default(),
            promotion,
            wake,
            fleet,
            s3,
            local_repositories,
            secrets,
        };
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }
}

/// Tags a server future's error with its role.
pub async fn named<E: std::error::Error + Send + Sync + 'static>(
    role: &'static str,
    fut: impl Future<Output = Result<(), E>>,
) -> Result<()> {
    fut.await.with_context(|| format!("{role} stopped"))
}

/// The topology `rhone dev` runs in: one region, one cell, one runner, named like any other
/// so nothing depends on a "first cell". The runner gets a fresh credential at every start
/// (the one before stops working) and registers itself like any runner.
pub async fn register_dev_topology(
    db: &sea_orm::DatabaseConnection,
) -> Result<(rhone_runner::RunnerIdentity, rhone_core::Secret)> {
    let identity = rhone_runner::RunnerIdentity {
        name: "dev-runner-1".to_owned(),
        region: "local".to_owned(),
        cell: "local-a".to_owned(),
    };
    let txn = rhone_schema::begin_write(db).await?;
    let (_, credential) = rhone_schema::fleet::rotate_credential(
        &txn,
        &identity.region,
        &identity.cell,
        &identity.name,
    )
    .await?;
    rhone_schema::fleet::audit_runner(
        &txn,
        "system",
        "runner.credential_issued",
        &identity.name,
        serde_json::json!({ "by": "rhone dev" }),
    )
    .await?;
    txn.commit().await?;
    Ok((identity, credential))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, the signals people and supervisors stop servers
/// with. Both handlers are installed explicitly, so a SIGINT ignored by the parent shell
/// (background jobs) does not make the server unstoppable.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Every problem with the configuration of `role` in `env`, at once: the shared keys, what
/// the role requires, the runner's own keys, the operator key and the S3 store. The role's
/// configuration, and the runner's own for a runner.
fn check(
    role: Role,
    env: &BTreeMap<String, String>,
) -> Result<(Config, Option<rhone_runner::RunnerConfig>), Vec<String>> {
    let mut errors = Vec::new();
    let config = Config::parse(env).map_err(|e| errors.extend(e)).ok();
    let mut runner = None;
    if role == Role::Runner {
        match rhone_runner::RunnerConfig::parse(env) {
            Ok(c) => runner = Some(c),
            Err(e) => errors.extend(e),
        }
    } else if config.as_ref().is_some_and(|c| c.database_url.is_none()) {
        errors.push(
            "RHONE_DATABASE_URL is required for this role (sqlite://path?mode=rwc or postgres://…)"
                .to_owned(),
        );
    }
    if matches!(role, Role::Api | Role::Worker)
        && let Err(e) = runner_key(env)
    {
        errors.push(format!("{e:#}"));
    }
    if let Some(Some(s3)) = config.as_ref().map(|c| &c.s3)
        && let Err(e) = s3.store()
    {
        errors.push(format!("the S3 artifact store: {e:#}"));
    }
    match config {
        Some(config) if errors.is_empty() => Ok((config, runner)),
        _ => Err(errors),
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("RHONE_"))
        .collect();
    let role = args
        .role
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned());
    let (config, runner_config) = match check(args.role, &env) {
        Ok(c) => c,
        Err(errors) => bail!(
            "invalid configuration for `rhone serve {role}`:\n  {}",
            errors.join("\n  ")
        ),
    };
    if args.check {
        let store = match &config.s3 {
            Some(s3) => format!("S3 bucket {} at {}", s3.bucket, s3.endpoint),
            None => "local".to_owned(),
        };
        println!(
            "rhone serve {role}: the configuration is valid (listen {}, artifact store {store})",
            config
                .listen
                .map_or_else(|| "default".to_owned(), |a| a.to_string())
        );
        return Ok(());
    }
    let default_port = match args.role {
        Role::Api | Role::Worker => 8080,
        Role::Edge => 8081,
        Role::Runner => 8082,
    };
    let listen = config
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    if let Some(runner_config) = runner_config {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let identity = rhone_runner::RunnerIdentity {
            name: config.runner_name,
            region: config.region,
            cell: config.cell,
        };
        let store = match &config.s3 {
            Some(s3) => s3.store()?,
            None => rhone_runner::ArtifactStore::local(&runner_config.artifact_dir),
        };
        let state = rhone_runner::RunnerState {
            identity,
            store,
            config: runner_config,
        };
        tracing::info!(%listen, "runner serving");
        return named(
            "runner",
            rhone_runner::serve(listener, state, shutdown_signal()),
        )
        .await;
    }
    let Some(url) = &config.database_url else {
        bail!("RHONE_DATABASE_URL is required for this role");
    };
    let db = rhone_schema::connect(url).await?;
    rhone_schema::migrate(&db).await?;
    let temporal_config = TemporalConfig {
        address: config.temporal_address.clone(),
        namespace: None,
    };
    match args.role {
        Role::Api => {
            if let Some(keys) = config.secrets.as_deref().filter(|k| k.rotating()) {
                let resealed = rhone_schema::secrets::reseal_all(&db, keys).await?;
                tracing::info!(
                    resealed,
                    key_id = keys.current_id(),
                    "secrets re-sealed under the current key; the old keys can be removed"
                );
            }
            let client = temporal::connect(&temporal_config).await?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, "API serving");
            let state = rhone_api::ApiState {
                db,
                temporal: client,
                task_queue: config.task_queue,
                runner_key: runner_key(&env)?,
                fleet: config.fleet,
                local_repositories: config.local_repositories,
                secrets: config.secrets.clone(),
            };
            named("api", rhone_api::serve(listener, state, shutdown_signal())).await
        }
        Role::Worker => {
            let client = temporal::connect(&temporal_config).await?;
            let mut wc = WorkerConfig {
                task_queue: config.task_queue,
                ..WorkerConfig::default()
            };
            if let Some(dir) = &config.data_dir {
                wc.deploy = rhone_activities::deploy::DeployConfig::under(dir);
                wc.migration = rhone_activities::database::MigrationConfig::under(dir);
            }
            if let Some(s3) = &config.s3 {
                wc.deploy.store = s3.store()?;
            }
            wc.runner_key = runner_key(&env)?;
            wc.secrets = config.secrets.clone();
            wc.preview.domain = config.preview_domain;
            wc.preview.port_suffix = config.preview_port_suffix;
            wc.promotion = config.promotion;
            wc.wake = config.wake;
            wc.fleet = config.fleet;
            wc.deploy.local_repositories = config.local_repositories;
            named("worker", Worker::run(wc, client, db, shutdown_signal())).await
        }
        Role::Edge => {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let mut edge = rhone_edge::EdgeConfig::for_address(listener.local_addr()?);
            if let Some(id) = config.edge_id {
                edge.edge_id = id;
            }
            if let Some(poll) = config.edge_poll_interval {
                edge.poll_interval = poll;
            }
            // Waking a sleeping app is the one thing the edge asks Temporal; until it is
            // reachable the edge routes every app that is awake, and keeps trying.
            let wake = Some(rhone_edge::WakeClient::connecting(
                move || {
                    let config = temporal_config.clone();
                    async move { temporal::connect(&config).await }
                },
                config.task_queue,
            ));
            tracing::info!(%listen, edge_id = %edge.edge_id, "edge serving");
            // Assets of sleeping apps come from the artifact store the worker writes to.
            let store = match (&config.s3, &config.data_dir) {
                (Some(s3), _) => Some(s3.store()?),
                (None, Some(dir)) => Some(rhone_activities::deploy::DeployConfig::under(dir).store),
                (None, None) => None,
            };
            let assets =
                store.map(|store| rhone_edge::Assets::new(store, config.edge_asset_cache_bytes));
            if assets.is_none() {
                tracing::warn!(
                    "neither RHONE_S3_ENDPOINT nor RHONE_DATA_DIR is set: assets of sleeping apps wake them"
                );
            }
            let admin = match config.edge_admin_listen {
                Some(addr) => {
                    let admin = TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding RHONE_EDGE_ADMIN_LISTEN {addr}"))?;
                    tracing::info!(%addr, "edge admin (/_rhone/status) serving");
                    Some(admin)
                }
                None => None,
            };
            let state = rhone_edge::EdgeState {
                db,
                config: edge,
                wake,
                assets,
                admin,
            };
            named(
                "edge",
                rhone_edge::serve(listener, state, shutdown_signal()),
            )
            .await
        }
        Role::Runner => unreachable!("handled above"),
    }
}

/// `RHONE_RUNNER_KEY`, or the contents of `RHONE_RUNNER_KEY_FILE`: the operator's runner
/// key (api, worker), from which every runner's tokens are derived. Unset: the API takes
/// no reports and runners refuse the worker's calls.
pub fn runner_key(
    env: &std::collections::BTreeMap<String, String>,
) -> Result<Option<rhone_runner_protocol::RunnerKey>> {
    let key = match (
        env.get("RHONE_RUNNER_KEY").filter(|v| !v.is_empty()),
        env.get("RHONE_RUNNER_KEY_FILE").filter(|v| !v.is_empty()),
    ) {
        (Some(key), _) => key.trim().to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("RHONE_RUNNER_KEY_FILE: reading {file}"))?
            .trim()
            .to_owned(),
        (None, None) => {
            tracing::warn!(
                "RHONE_RUNNER_KEY is not set: runners refuse this process's calls and reports are disabled"
            );
            return Ok(None);
        }
    };
    Ok(Some(
        rhone_runner_protocol::RunnerKey::new(key).context("RHONE_RUNNER_KEY")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::parse(&env(&[])).expect("empty env is valid");
        assert_eq!(c.task_queue, "rhone-control");
        assert_eq!(c.listen, None);
        assert_eq!(c.region, "local");
        assert_eq!(c.edge_id, None);
        assert_eq!(c.edge_poll_interval, None);
        assert_eq!(c.edge_admin_listen, Some(([127, 0, 0, 1], 9081).into()));
        assert!(
            !c.local_repositories,
            "local repositories are the operator's choice"
        );
    }

    #[test]
    fn edge_keys() {
        let c = Config::parse(&env(&[
            ("RHONE_EDGE_ID", "edge-eu-1"),
            ("RHONE_EDGE_POLL_MS", "50"),
        ]))
        .expect("valid edge keys");
        assert_eq!(c.edge_id.as_deref(), Some("edge-eu-1"));
        assert_eq!(
            c.edge_poll_interval,
            Some(std::time::Duration::from_millis(50))
        );
        for bad in ["0", "-1", "fast"] {
            let errors =
                Config::parse(&env(&[("RHONE_EDGE_POLL_MS", bad)])).expect_err("a bad poll");
            assert!(errors[0].contains("RHONE_EDGE_POLL_MS"), "{errors:?}");
        }
        let c = Config::parse(&env(&[("RHONE_EDGE_ADMIN_LISTEN", "off")])).expect("off");
        assert_eq!(c.edge_admin_listen, None);
        let errors = Config::parse(&env(&[("RHONE_EDGE_ADMIN_LISTEN", "everywhere")]))
            .expect_err("a bad admin address");
        assert!(errors[0].contains("RHONE_EDGE_ADMIN_LISTEN"), "{errors:?}");
    }

    #[test]
    fn local_repositories_key() {
        for (v, on) in [("1", true), ("true", true), ("0", false), ("false", false)] {
            let c = Config::parse(&env(&[("RHONE_ALLOW_LOCAL_REPOSITORIES", v)])).expect(v);
            assert_eq!(c.local_repositories, on, "{v}");
        }
        let errors = Config::parse(&env(&[("RHONE_ALLOW_LOCAL_REPOSITORIES", "yes")]))
            .expect_err("not 1 or 0");
        assert!(
            errors[0].contains("RHONE_ALLOW_LOCAL_REPOSITORIES"),
            "{errors:?}"
        );
    }

    #[test]
    fn s3_keys() {
        let c = Config::parse(&env(&[
            ("RHONE_S3_ENDPOINT", "http://s3:9000"),
            ("RHONE_S3_BUCKET", "artifacts"),
            ("RHONE_S3_ACCESS_KEY_ID", "rhone"),
            ("RHONE_S3_SECRET_ACCESS_KEY", "s3cr3t-key"),
            ("RHONE_S3_PREFIX", "prod/"),
        ]))
        .expect("valid S3 keys");
        let s3 = c.s3.clone().expect("an S3 store");
        assert_eq!(
            (
                s3.endpoint.as_str(),
                s3.bucket.as_str(),
                s3.region.as_str(),
                s3.prefix.as_str()
            ),
            ("http://s3:9000", "artifacts", "us-east-1", "prod/")
        );
        assert_eq!(s3.secret_access_key.expose(), "s3cr3t-key");
        assert!(
            !format!("{c:?}").contains("s3cr3t-key"),
            "the key leaks in Debug"
        );
        assert!(s3.store().is_ok());
        assert_eq!(Config::parse(&env(&[])).map(|c| c.s3).ok(), Some(None));

        let errors = Config::parse(&env(&[
            ("RHONE_S3_ENDPOINT", "s3:9000"),
            ("RHONE_S3_BUCKET", "artifacts"),
        ]))
        .expect_err("incomplete");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("http://"), "{errors:?}");
        assert!(
            errors[1].contains("RHONE_S3_ACCESS_KEY_ID")
                && errors[1].contains("RHONE_S3_SECRET_ACCESS_KEY"),
            "{errors:?}"
        );
        let errors =
            Config::parse(&env(&[("RHONE_S3_BUCKET", "artifacts")])).expect_err("no endpoint");
        assert!(
            errors[0].contains("without RHONE_S3_ENDPOINT"),
            "{errors:?}"
        );
    }

    #[test]
    fn every_bad_key_is_reported() {
        let errors = Config::parse(&env(&[
            ("RHONE_LISTEN", "nope"),
            ("RHONE_DATABASE_URL", "mysql://x"),
            ("RHONE_EDGE_POLL_MS", "soon"),
        ]))
        .expect_err("three bad keys");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("RHONE_LISTEN"));
        assert!(errors[1].contains("RHONE_EDGE_POLL_MS"));
        assert!(errors[2].contains("RHONE_DATABASE_URL"));
    }
}
