//! A real Redis for tests (`redis-server`): one per test process on a free port, in memory
//! (no RDB snapshot, no AOF), with a password, its directory a temporary one; or the one
//! named by `RHONE_TEST_REDIS_URL`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::process::{self, NotReady, Supervised};

/// URL (`redis://127.0.0.1:PORT`, without credentials) of an already running Redis to use
/// instead of starting one; [`PASSWORD_ENV`] must then be set too.
pub const URL_ENV: &str = "RHONE_TEST_REDIS_URL";
/// The password (`requirepass`) of the Redis at [`URL_ENV`].
pub const PASSWORD_ENV: &str = "RHONE_TEST_REDIS_PASSWORD";

const PROGRAM: &str = "redis-server";
const NOT_FOUND: &str = "redis-server not found on PATH: run scripts/install-deps.sh \
     (apt-get install -y redis-server)";
/// The test-only password of the servers started here: distinctive, so a test can assert
/// that no answer repeats it.
const PASSWORD: &str = "rhone-test-redis-pw-3f9c2a";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: usize = 3;

/// Where and how tests reach the server.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisHandle {
    /// `redis://127.0.0.1:PORT`, with no credentials in it.
    pub url: String,
    /// What `AUTH` takes (the default user's password).
    pub password: String,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("url", &self.url)
            .field("password", &"***")
            .finish()
    }
}

struct Started {
    handle: RedisHandle,
    _server: Supervised,
}

static SERVER: OnceCell<Started> = OnceCell::const_new();

/// The Redis for this test: the one at `RHONE_TEST_REDIS_URL` when set, otherwise a
/// `redis-server` started on the first call and shared by the whole test process. It
/// answers `AUTH` and `PING` when this returns. Tests share it, so each should use its own
/// keys ([`crate::unique_name`]).
pub async fn server() -> Result<RedisHandle> {
    if let Some(url) = env(URL_ENV) {
        let Some(password) = env(PASSWORD_ENV) else {
            bail!("{URL_ENV} is set, so {PASSWORD_ENV} must be too");
        };
        return Ok(RedisHandle { url, password });
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

async fn start() -> Result<Started> {
    let program = process::find_program(PROGRAM).ok_or_else(|| anyhow!(NOT_FOUND))?;
    let mut attempt = 1;
    loop {
        match start_once(&program).await {
            Ok(started) => return Ok(started),
            Err(NotReady::Exited(e)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "redis-server exited early; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.into_error().context("starting redis-server")),
        }
    }
}

async fn start_once(program: &Path) -> std::result::Result<Started, NotReady> {
    let setup = || -> Result<_> {
        let dir = tempfile::Builder::new()
            .prefix("rhone-redis-")
            .tempdir()
            .context("creating a directory for Redis")?;
        let port = process::free_port()?;
        Ok((dir, port))
    };
    let (dir, port) = setup().map_err(NotReady::Failed)?;
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        // Test data is thrown away: no snapshot, no append-only file.
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        PASSWORD,
        "--dir",
        &dir.path().display().to_string(),
        // To stdout, which the wrapper sends to its server.log.
        "--logfile",
        "",
        "--daemonize",
        "no",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut server =
        Supervised::spawn(dir.path(), None, program, &args).map_err(NotReady::Failed)?;
    let address = format!("127.0.0.1:{port}");
    process::wait_ready("redis-server", &mut server, START_TIMEOUT, || {
        ping(&address, PASSWORD, PROBE_TIMEOUT)
    })
    .await?;
    // From here the wrapper owns the directory and removes it after the server stops.
    let _ = dir.keep();
    tracing::info!(%address, "redis-server ready");
    Ok(Started {
        handle: RedisHandle {
            url: format!("redis://{address}"),
            password: PASSWORD.to_owned(),
        },
        _server: server,
    })
}

/// `AUTH password` then `PING` over a bare TCP stream (RESP inline commands), so the probe
/// needs no Redis client. `Err` says why the server does not answer `+OK` and `+PONG` yet.
async fn ping(address: &str, password: &str, timeout: Duration) -> std::result::Result<(), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n",
            password.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        const EXPECTED: &str = "+OK\r\n+PONG\r\n";
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while answer.len() < EXPECTED.len() {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with(EXPECTED) {
            Ok(())
        } else {
            Err(format!("answered {:?} to AUTH and PING", answer.trim_end()))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
