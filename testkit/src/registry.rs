//! A real OCI registry for tests (`docker-registry`, distribution 2.8): the one
//! `scripts/test.sh` started, or one per test process on a free port, storing in a
//! temporary directory, without auth.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::process::{self, NotReady, Supervised};

/// Address (`127.0.0.1:PORT`) of an already running registry to use instead of starting one.
pub const ADDRESS_ENV: &str = "RHONE_TEST_REGISTRY";

const PROGRAM: &str = "docker-registry";
/// GNU coreutils `env`, for `--default-signal`.
const ENV: &str = "/usr/bin/env";
const NOT_FOUND: &str = "docker-registry not found: run scripts/install-deps.sh \
     (apt-get install -y docker-registry)";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: usize = 3;

/// Where tests reach the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryHandle {
    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub address: String,
}

impl RegistryHandle {
    /// `address/repository:tag`.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("{}/{repository}:{tag}", self.address)
    }
}

struct Started {
    handle: RegistryHandle,
    _server: Supervised,
}

static SERVER: OnceCell<Started> = OnceCell::const_new();

/// The registry for this test: the one at `RHONE_TEST_REGISTRY` when set, otherwise one
/// started on the first call and shared by the whole test process. `GET /v2/` answers
/// 200 when this returns. Tests share it, so each should use its own repository name
/// ([`crate::unique_name`]).
pub async fn server() -> Result<RegistryHandle> {
    if let Some(address) = std::env::var(ADDRESS_ENV)
        .ok()
        .filter(|a| !a.trim().is_empty())
    {
        return Ok(RegistryHandle {
            address: address.trim().to_owned(),
        });
    }
    let started = SERVER.get_or_try_init(start).await?;
    Ok(started.handle.clone())
}

async fn start() -> Result<Started> {
    let program = process::find_program(PROGRAM).ok_or_else(|| anyhow!(NOT_FOUND))?;
    let mut attempt = 1;
    loop {
        match start_once(&program).await {
            Ok(started) => return Ok(started),
            Err(NotReady::Exited(e)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "docker-registry exited early; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.into_error().context("starting docker-registry")),
        }
    }
}

async fn start_once(program: &Path) -> std::result::Result<Started, NotReady> {
    let setup = || -> Result<_> {
        let dir = tempfile::Builder::new()
            .prefix("rhone-registry-")
            .tempdir()
            .context("creating a directory for the registry")?;
        let port = process::free_port()?;
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(&dir.path().join("data"), &address))
            .with_context(|| format!("writing {}", config.display()))?;
        Ok((dir, address, config))
    };
    let (dir, address, config) = setup().map_err(NotReady::Failed)?;
    // `supervise.sh` stops servers with SIGINT, but a background job of a non-interactive
    // shell starts with SIGINT ignored, and docker-registry installs no handler for it:
    // `env --default-signal` gives it back its default action (exit) before the exec.
    let args = vec![
        "--default-signal=INT".to_owned(),
        program.display().to_string(),
        "serve".to_owned(),
        config.display().to_string(),
    ];
    let mut server =
        Supervised::spawn(dir.path(), None, Path::new(ENV), &args).map_err(NotReady::Failed)?;
    process::wait_ready("docker-registry", &mut server, START_TIMEOUT, || async {
        match http_status(&address, "/v2/", PROBE_TIMEOUT).await? {
            200 => Ok(()),
            status => Err(format!("GET /v2/ answered {status}")),
        }
    })
    .await?;
    // From here the wrapper owns the directory and removes it after the server stops.
    let _ = dir.keep();
    tracing::info!(%address, "docker-registry ready");
    Ok(Started {
        handle: RegistryHandle { address },
        _server: server,
    })
}

/// Listens on loopback only (the packaged config listens everywhere), stores under
/// `data`, and has no auth section, so anyone on this host may push and pull.
fn config_yaml(data: &Path, address: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {address}\n",
        data.display()
    )
}

/// The status code of `GET path` on `address`, over HTTP/1.1 with a bare TCP stream, so
/// probes need no HTTP client. `Err` says why there is no status yet.
pub(crate) async fn http_status(
    address: &str,
    path: &str,
    timeout: Duration,
) -> std::result::Result<u16, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < head.len() && !head[..len].contains(&b'\n') {
            match stream.read(&mut head[len..]).await {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&head[..len]).into_owned();
        // "HTTP/1.1 200 OK"
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
