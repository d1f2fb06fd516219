//! The runner under test: `serve` on `127.0.0.1:0` with its own work directory and a local
//! artifact store holding a small Python app packed on the fly, driven over real HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rhone_runner::{ArtifactStore, RunnerConfig, RunnerError, RunnerIdentity, RunnerState};
use rhone_runner_protocol::{RunnerKey, credentials::token_hash};
use rhone_store::{Digest, archive};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The app: reads `PORT`, serves `/healthz`, `/` (what it was started with) and `/crash`.
/// `APP_MODE` picks a misbehaviour: `crash` (exit 3 at start), `never-ready` (503 on
/// /healthz), `stubborn` (ignores SIGTERM), `child` (starts a `sleep` child).
pub const SERVER_PY: &str = r#"
import json, os, signal, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

mode = os.environ.get("APP_MODE", "serve")
port = int(os.environ["PORT"])
print(f"app starting on port {port} in mode {mode}", flush=True)
if os.environ.get("APP_SECRET"):
    print(f"the secret is {os.environ['APP_SECRET']}", flush=True)
if mode == "crash":
    print("crashing with exit code 3", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "300"]) if mode == "child" else None

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            self.reply(503 if mode == "never-ready" else 200, {"mode": mode})
        elif self.path == "/":
            self.reply(200, {
                "port": os.environ["PORT"],
                "digest": os.environ["RHONE_ARTIFACT_DIGEST"],
                "allocation": os.environ["RHONE_ALLOCATION_ID"],
                "pid": os.getpid(),
                "child_pid": child.pid if child else None,
            })
        elif self.path == "/crash":
            self.reply(200, {"crashing": True})
            print("crashing on request", flush=True)
            os._exit(3)
        else:
            self.reply(404, {})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def log_message(self, fmt, *args):
        print("request: " + fmt % args, flush=True)

HTTPServer(("0.0.0.0", port), Handler).serve_forever()
"#;

/// Host pids of every process in allocation `id`'s sandbox (its container cgroup).
pub fn sandbox_processes(id: impl std::fmt::Display) -> Vec<u64> {
    let needle = format!("/{id}/c\n");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&needle))
        })
        .collect()
}

/// The runner's name.
pub const RUNNER: &str = "test-runner";

/// The operator key of these tests.
pub fn runner_key() -> RunnerKey {
    match RunnerKey::new("runner-test-key-0123456789abcdefghij") {
        Ok(key) => key,
        Err(e) => unreachable!("a long enough key: {e}"),
    }
}

/// `Authorization: Bearer <the runner's call token>`, as the control plane sends it.
fn call_headers() -> Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    let token = runner_key().call_token(RUNNER);
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.expose()).parse()?,
    );
    Ok(headers)
}

/// A running runner and its store. Dropping it stops the runner.
pub struct Harness {
    pub url: String,
    pub http: reqwest::Client,
    pub work: PathBuf,
    pub store_dir: PathBuf,
    pub store: ArtifactStore,
    pub digest: Digest,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), RunnerError>>>,
    _dir: TempDir,
}

impl Harness {
    pub async fn start() -> Result<Harness> {
        Harness::start_with(|_| {}).await
    }

    /// A runner whose config `edit` adjusts.
    pub async fn start_with(edit: impl FnOnce(&mut RunnerConfig)) -> Result<Harness> {
        Harness::start_in(Harness::dir()?, edit).await
    }

    /// A directory for a runner: its work directory will be `work/` in it.
    pub fn dir() -> Result<TempDir> {
        Ok(tempfile::Builder::new().prefix("rhone-runner-").tempdir()?)
    }

    /// A runner in `dir` (made by [`Harness::dir`]).
    pub async fn start_in(dir: TempDir, edit: impl FnOnce(&mut RunnerConfig)) -> Result<Harness> {
        Harness::start_on("127.0.0.1:0", dir, edit).await
    }

    /// A runner listening on `addr` (`0.0.0.0:0` for every address of the host).
    pub async fn start_on(
        addr: &str,
        dir: TempDir,
        edit: impl FnOnce(&mut RunnerConfig),
    ) -> Result<Harness> {
        let (work, store_dir, app) = (
            dir.path().join("work"),
            dir.path().join("store"),
            dir.path().join("app"),
        );
        std::fs::create_dir_all(&app)?;
        std::fs::write(app.join("server.py"), SERVER_PY)?;
        let store = ArtifactStore::local(&store_dir);
        let digest = store.put(&archive::pack_dir(&app)?).await?;

        let mut config = RunnerConfig::new(&work);
        config.call_token_sha256 = Some(token_hash(runner_key().call_token(RUNNER).expose()));
        edit(&mut config);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let state = RunnerState {
            identity: RunnerIdentity {
                name: RUNNER.into(),
                region: "local".into(),
                cell: "local-a".into(),
            },
            config,
            store: store.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(rhone_runner::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Ok(Harness {
            url,
            http: reqwest::Client::builder()
                .no_proxy()
                .default_headers(call_headers()?)
                .build()?,
            work,
            store_dir,
            store,
            digest,
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        })
    }

    /// The same runner, called with `token` as the call token (one a registration named).
    pub fn with_call_token(mut self, token: &str) -> Result<Harness> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        self.http = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .build()?;
        Ok(self)
    }

    /// A spec of the test app in `mode`, ready in well under the test's time.
    pub fn spec(&self, id: Uuid, generation: i64, mode: &str) -> Result<Value> {
        Ok(json!({
            "allocation_id": id,
            "generation": generation,
            "artifact_digest": self.digest,
            "process": {
                "command": "exec python3 server.py",
                "health_path": "/healthz",
                "readiness_timeout_ms": 4000,
            },
            "env": { "APP_MODE": mode },
        }))
    }

    pub async fn put(&self, id: Uuid, spec: &Value) -> Result<(u16, Value)> {
        let response = self.http.put(self.alloc_url(id)).json(spec).send().await?;
        answer(response).await
    }

    pub async fn get(&self, id: Uuid) -> Result<(u16, Value)> {
        answer(self.http.get(self.alloc_url(id)).send().await?).await
    }

    pub async fn delete(&self, id: Uuid) -> Result<(u16, Value)> {
        answer(self.http.delete(self.alloc_url(id)).send().await?).await
    }

    pub fn alloc_url(&self, id: impl std::fmt::Display) -> String {
        format!("{}/v1/allocations/{id}", self.url)
    }

    /// Polls the allocation until it is in `stage`; fails at once if it ends in another
    /// final stage, and after `within` otherwise, with the last status seen.
    pub async fn wait_stage(&self, id: Uuid, stage: &str, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let (code, status) = self.get(id).await?;
            if code != 200 {
                bail!("GET allocation {id}: {code} {status}");
            }
            let now = status["stage"].as_str().unwrap_or("");
            if now == stage {
                return Ok(status);
            }
            if matches!(now, "stopped" | "failed") {
                bail!("allocation {id} is {now}, never {stage}: {status:#}");
            }
            if Instant::now() > deadline {
                bail!("allocation {id} not {stage} within {within:?}: {status:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the runner and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let server = self.server.take().context("server already stopped")?;
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .context("the runner did not stop")???;
        Ok(())
    }
}

async fn answer(response: reqwest::Response) -> Result<(u16, Value)> {
    let code = response.status().as_u16();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((code, body))
}

/// Whether process `pid` is gone (reaped, not a zombie).
pub fn process_gone(pid: u64) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits for `check` to hold, up to `within`.
pub async fn eventually(within: Duration, what: &str, check: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The status's log lines joined, for `contains` checks.
pub fn log_text(status: &Value) -> String {
    status["last_log_lines"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
