//! A real S3 API server for tests (`s3s-fs`): the one `scripts/test.sh` started, or one
//! per test process on a free port, over a temporary directory.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::OnceCell;

use crate::process::{self, NotReady, Supervised};
use crate::registry::http_status;

/// URL (`http://127.0.0.1:PORT`) of an already running S3 API server to use instead of
/// starting one; [`ACCESS_KEY_ENV`] and [`SECRET_KEY_ENV`] must then be set too.
pub const ENDPOINT_ENV: &str = "RHONE_TEST_S3_ENDPOINT";
pub const ACCESS_KEY_ENV: &str = "RHONE_TEST_S3_ACCESS_KEY";
pub const SECRET_KEY_ENV: &str = "RHONE_TEST_S3_SECRET_KEY";

const PROGRAM: &str = "s3s-fs";
const NOT_FOUND: &str = "s3s-fs not found on PATH: run scripts/install-deps.sh \
     (cargo install s3s-fs@0.14.1 --locked --features binary)";
/// Test-only credentials for the servers started here.
const ACCESS_KEY: &str = "rhone-test";
const SECRET_KEY: &str = "rhone-test-secret";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: usize = 3;

/// Where and how tests reach the server.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Handle {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Any region signs correctly against s3s-fs; this is the usual default.
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for S3Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Handle")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"***")
            .finish()
    }
}

struct Started {
    handle: S3Handle,
    _server: Supervised,
}

static SERVER: OnceCell<Started> = OnceCell::const_new();

/// The S3 API server for this test: the one at `RHONE_TEST_S3_ENDPOINT` when set,
/// otherwise an `s3s-fs` started on the first call and shared by the whole test process.
/// It answers HTTP when this returns. It starts with no buckets: each test creates its
/// own, named with [`crate::unique_name`].
pub async fn server() -> Result<S3Handle> {
    if let Some(endpoint) = env(ENDPOINT_ENV) {
        let (Some(access_key), Some(secret_key)) = (env(ACCESS_KEY_ENV), env(SECRET_KEY_ENV))
        else {
            bail!("{ENDPOINT_ENV} is set, so {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} must be too");
        };
        return Ok(handle(endpoint, access_key, secret_key));
    }
    let started = SERVER.get_or_try_init(start).await?;
    Ok(started.handle.clone())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn handle(endpoint: String, access_key: String, secret_key: String) -> S3Handle {
    S3Handle {
        endpoint,
        region: "us-east-1".to_owned(),
        access_key,
        secret_key,
    }
}

async fn start() -> Result<Started> {
    let program = process::find_program(PROGRAM).ok_or_else(|| anyhow!(NOT_FOUND))?;
    let mut attempt = 1;
    loop {
        match start_once(&program).await {
            Ok(started) => return Ok(started),
            Err(NotReady::Exited(e)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "s3s-fs exited early; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.into_error().context("starting s3s-fs")),
        }
    }
}

async fn start_once(program: &Path) -> std::result::Result<Started, NotReady> {
    let setup = || -> Result<_> {
        let dir = tempfile::Builder::new()
            .prefix("rhone-s3-")
            .tempdir()
            .context("creating a directory for s3s-fs")?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        Ok((dir, data, process::free_port()?))
    };
    let (dir, data, port) = setup().map_err(NotReady::Failed)?;
    let args: Vec<String> = vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--access-key".into(),
        ACCESS_KEY.into(),
        "--secret-key".into(),
        SECRET_KEY.into(),
        data.display().to_string(),
    ];
    let mut server =
        Supervised::spawn(dir.path(), None, program, &args).map_err(NotReady::Failed)?;
    let address = format!("127.0.0.1:{port}");
    // Any HTTP answer (an unsigned request gets 403) means the server is up.
    process::wait_ready("s3s-fs", &mut server, START_TIMEOUT, || async {
        http_status(&address, "/", PROBE_TIMEOUT).await.map(|_| ())
    })
    .await?;
    // From here the wrapper owns the directory and removes it after the server stops.
    let _ = dir.keep();
    tracing::info!(%address, "s3s-fs ready");
    Ok(Started {
        handle: handle(
            format!("http://{address}"),
            ACCESS_KEY.to_owned(),
            SECRET_KEY.to_owned(),
        ),
        _server: server,
    })
}
