//! The driver of `bench/sandbox.sh`: an allocation's start-to-ready inside the sandbox
//! against the same app started bare, in one run, then (with `--hold`) one sandboxed
//! allocation and one bare app left running for the script's hot-path rounds. See the header
//! of `bench/sandbox.sh` for what is measured and how to read it.
//!
//!   cargo build --release -p rhone-runner --example sandbox_bench
//!   sandbox_bench --app-dir DIST --work-dir DIR [--rounds N] [--warmup N] [--hold FILE]
//!
//! The runner is the real one (`rhone_runner::serve` on 127.0.0.1:0, in this process) with a
//! local artifact store holding DIST packed by `rhone_store::archive::pack_dir`, driven over
//! HTTP like the control plane drives it. Client-side probes are raw HTTP/1.1 GETs on a fresh
//! TCP connection each (`Connection: close`), the same code for both sides.
//!
//! The runner's own log events are read in-process (a small `tracing` subscriber): they give
//! the allocation's address as soon as its process is started (so the app's own readiness
//! can be polled before the runner reports `ready`) and when each stage began.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rhone_runner::{ArtifactStore, RunnerConfig, RunnerIdentity, RunnerState};
use rhone_store::{Digest, archive};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Child,
    sync::oneshot,
};
use uuid::Uuid;

const USAGE: &str = "usage: sandbox_bench --app-dir DIST --work-dir DIR [--rounds N] [--warmup N] \
[--command CMD] [--port N] [--health-path PATH] [--cpu-millis N] [--target-ms MS] \
[--settle-ms MS] [--hold FILE [--hold-command CMD]]";

struct Args {
    /// The app's build output (`python3 build.py` in a copy of examples/counter: `dist/`).
    app_dir: PathBuf,
    /// The runner's directory (its work directory and store go in it); must exist.
    work_dir: PathBuf,
    rounds: usize,
    warmup: usize,
    /// The app's run command (`[run] command`), in the sandbox and bare alike.
    command: String,
    /// `[run] port`: the sandboxed app's port (the bare one gets a free port).
    port: u16,
    health_path: String,
    /// The sandbox's CPU quota (`[run] cpu_millis`); memory and pids stay at the defaults.
    cpu_millis: u32,
    /// The added-time target stated next to the figure.
    target_ms: f64,
    /// Pause after each side of a round, so teardown work does not overlap the next start.
    settle_ms: u64,
    /// After the rounds: start one sandboxed allocation and one bare app, write their
    /// addresses to this file (shell assignments) and keep them until stdin closes.
    hold: Option<PathBuf>,
    /// The run command of the held apps (default: `command`); run with `sh -c` bare too, so
    /// it may quote.
    hold_command: Option<String>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            app_dir: PathBuf::new(),
            work_dir: PathBuf::new(),
            rounds: 20,
            warmup: 2,
            command: "python3 server.py".into(),
            port: 8080,
            health_path: "/healthz".into(),
            cpu_millis: 1000,
            target_ms: 50.0,
            settle_ms: 100,
            hold: None,
            hold_command: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--app-dir" => args.app_dir = value()?.into(),
                "--work-dir" => args.work_dir = value()?.into(),
                "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
                "--warmup" => args.warmup = value()?.parse().context("--warmup")?,
                "--command" => args.command = value()?,
                "--port" => args.port = value()?.parse().context("--port")?,
                "--health-path" => args.health_path = value()?,
                "--cpu-millis" => args.cpu_millis = value()?.parse().context("--cpu-millis")?,
                "--target-ms" => args.target_ms = value()?.parse().context("--target-ms")?,
                "--settle-ms" => args.settle_ms = value()?.parse().context("--settle-ms")?,
                "--hold" => args.hold = Some(value()?.into()),
                "--hold-command" => args.hold_command = Some(value()?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if args.app_dir.as_os_str().is_empty() || args.work_dir.as_os_str().is_empty() {
            bail!("--app-dir and --work-dir are required\n{USAGE}");
        }
        Ok(args)
    }
}

// --- the runner's log events ------------------------------------------------------------------

/// One event of the runner's log: when, its message, its fields (Display form).
#[derive(Debug, Clone)]
struct Ev {
    at: Instant,
    message: String,
    fields: BTreeMap<String, String>,
}

/// A `tracing` subscriber that keeps the runner's INFO-and-above events in memory and
/// prints warnings and errors to stderr.
struct Recorder {
    events: Arc<Mutex<Vec<Ev>>>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let at = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = fields.remove("message").unwrap_or_default();
        let level = *event.metadata().level();
        if level <= tracing::Level::WARN {
            eprintln!("sandbox_bench: runner {level}: {message} {fields:?}");
        }
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Ev {
                at,
                message,
                fields,
            });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// --- the bench --------------------------------------------------------------------------------

struct Bench {
    args: Args,
    url: String,
    http: reqwest::Client,
    digest: Digest,
    events: Arc<Mutex<Vec<Ev>>>,
    /// The bare app's HOME (the sandboxed one has its own).
    bare_home: PathBuf,
}

/// One sandboxed start.
struct SandboxRound {
    /// PUT → the runner's status says `ready` (polled every 1 ms).
    runner_ms: f64,
    /// PUT → the first 200 on the allocation's address (polled every 1 ms), when the
    /// runner's log gave the address early enough.
    app_ms: Option<f64>,
    /// Milliseconds after the PUT of: `starting`, the process started (runtime spawned),
    /// the runner's own `ready`.
    starting_ms: Option<f64>,
    spawned_ms: Option<f64>,
    ready_event_ms: Option<f64>,
    /// DELETE → `stopped`, and → its network namespace gone.
    stop_ms: f64,
    gone_ms: f64,
    address: String,
}

/// A running sandboxed allocation.
struct Allocated {
    id: Uuid,
    address: String,
    pid: Option<u64>,
}

impl Bench {
    fn spec(&self, id: Uuid, command: &str) -> Value {
        json!({
            "allocation_id": id,
            "generation": 1,
            "artifact_digest": self.digest,
            "process": {
                "command": command,
                "port": self.args.port,
                "health_path": self.args.health_path,
                "readiness_timeout_ms": 20_000,
                "limits": {
                    "memory_mb": rhone_sandbox::Limits::RUN_DEFAULT.memory_mb,
                    "cpu_millis": self.args.cpu_millis,
                    "max_pids": rhone_sandbox::Limits::RUN_DEFAULT.max_pids,
                },
            },
        })
    }

    fn alloc_url(&self, id: Uuid) -> String {
        format!("{}/v1/allocations/{id}", self.url)
    }

    async fn status(&self, id: Uuid) -> Result<Value> {
        let response = self.http.get(self.alloc_url(id)).send().await?;
        let code = response.status();
        let body: Value = response.json().await?;
        if !code.is_success() {
            bail!("GET allocation {id}: {code} {body}");
        }
        Ok(body)
    }

    fn events_since(&self, since: Instant) -> Vec<Ev> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| e.at >= since)
            .cloned()
            .collect()
    }

    /// PUT of a new allocation; waits for `ready`, polling the status every 1 ms and, as
    /// soon as the runner's log says where the process runs, the app's readiness path every
    /// 1 ms too.
    async fn start_sandboxed(&self, command: &str) -> Result<(Allocated, SandboxRound)> {
        let id = Uuid::now_v7();
        let spec = self.spec(id, command);
        let ready_seen = AtomicBool::new(false);
        let t0 = Instant::now();
        let response = self.http.put(self.alloc_url(id)).json(&spec).send().await?;
        if response.status().as_u16() != 201 {
            let code = response.status();
            bail!("PUT allocation {id}: {code} {}", response.text().await?);
        }
        let runner_view = async {
            let deadline = t0 + Duration::from_secs(30);
            let result = loop {
                let status = self.status(id).await?;
                match status["stage"].as_str().unwrap_or("") {
                    "ready" => break (t0.elapsed(), status),
                    stage @ ("failed" | "stopped") => {
                        bail!("allocation {id} is {stage}: {status:#}")
                    }
                    _ => {}
                }
                if Instant::now() > deadline {
                    bail!("allocation {id} not ready within 30 s: {status:#}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            ready_seen.store(true, Ordering::SeqCst);
            Ok(result)
        };
        let app_view = async {
            // The address, from the runner's "process started" event.
            let addr = loop {
                let started = self
                    .events_since(t0)
                    .into_iter()
                    .find(|e| e.message == "process started");
                if let Some(e) = started {
                    let ip: Option<Ipv4Addr> = e.fields.get("address").and_then(|a| a.parse().ok());
                    match ip {
                        Some(ip) => break SocketAddr::from((ip, self.args.port)),
                        None => return Ok::<_, anyhow::Error>(None),
                    }
                }
                if ready_seen.load(Ordering::SeqCst) {
                    // No such event (its wording changed?): no app-side figure this round.
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let deadline = t0 + Duration::from_secs(30);
            loop {
                if let Ok(200) = get(addr, &self.args.health_path, Duration::from_secs(1)).await {
                    return Ok(Some(t0.elapsed()));
                }
                if Instant::now() > deadline {
                    bail!(
                        "{addr}{} never answered 200 within 30 s",
                        self.args.health_path
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let ((runner, status), app) = tokio::try_join!(runner_view, app_view)?;
        let events = self.events_since(t0);
        let at = |message: &str, stage: Option<&str>| {
            events
                .iter()
                .find(|e| {
                    e.message == message
                        && stage
                            .is_none_or(|s| e.fields.get("stage").map(String::as_str) == Some(s))
                })
                .map(|e| ms(e.at - t0))
        };
        let address = status["address"].as_str().unwrap_or("").to_owned();
        let round = SandboxRound {
            runner_ms: ms(runner),
            app_ms: app.map(ms),
            starting_ms: at("allocation stage", Some("starting")),
            spawned_ms: at("process started", None),
            ready_event_ms: at("allocation stage", Some("ready")),
            stop_ms: 0.0,
            gone_ms: 0.0,
            address: address.clone(),
        };
        let allocated = Allocated {
            id,
            address,
            pid: status["pid"].as_u64(),
        };
        Ok((allocated, round))
    }

    /// DELETE; waits for `stopped` and for the allocation's network namespace to be gone.
    /// Returns the milliseconds to each.
    async fn stop_sandboxed(&self, id: Uuid) -> Result<(f64, f64)> {
        let t0 = Instant::now();
        let response = self.http.delete(self.alloc_url(id)).send().await?;
        if !response.status().is_success() {
            let code = response.status();
            bail!("DELETE allocation {id}: {code} {}", response.text().await?);
        }
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let status = self.status(id).await?;
            match status["stage"].as_str().unwrap_or("") {
                "stopped" => break,
                "failed" => bail!("allocation {id} failed while draining: {status:#}"),
                _ => {}
            }
            if Instant::now() > deadline {
                bail!("allocation {id} not stopped within 30 s: {status:#}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let stopped = t0.elapsed();
        let suffix = format!("-{id}");
        loop {
            let left = std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(&suffix));
            if !left {
                break;
            }
            if Instant::now() > deadline {
                bail!("the network namespace of allocation {id} is still there after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok((ms(stopped), ms(t0.elapsed())))
    }

    /// The bare app: the run command in the app directory with the sandbox's `PATH` and an
    /// environment like the sandbox's, its output read and dropped. `shell`: started as
    /// `sh -c 'exec COMMAND'` (a command that quotes), else split at spaces and spawned.
    fn spawn_bare(&self, port: u16, app_command: &str, shell: bool) -> Result<Child> {
        let mut command = if shell {
            let mut command = tokio::process::Command::new("sh");
            command.arg("-c").arg(format!("exec {app_command}"));
            command
        } else {
            let mut parts = app_command.split_whitespace();
            let mut command = tokio::process::Command::new(parts.next().context("an app command")?);
            command.args(parts);
            command
        };
        command
            .current_dir(&self.args.app_dir)
            .env_clear()
            .env("PATH", rhone_sandbox::PATH)
            .env("HOME", &self.bare_home)
            .env("PORT", port.to_string())
            .env("RHONE_ALLOCATION_ID", Uuid::nil().to_string())
            .env("RHONE_ARTIFACT_DIGEST", self.digest.to_string());
        for name in rhone_runner::DEFAULT_INHERIT_ENV {
            if let Ok(value) = std::env::var(name) {
                command.env(name, value);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("starting {app_command} in {}", self.args.app_dir.display())
            })?;
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(async move {
                let mut out = out;
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
        Ok(child)
    }

    /// Starts the app bare and times spawn → first 200 on its readiness path (polled every
    /// 1 ms); returns it running.
    async fn start_bare(&self, app_command: &str, shell: bool) -> Result<(Child, u16, f64)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        let mut child = self.spawn_bare(port, app_command, shell)?;
        let ready = loop {
            if let Ok(200) = get(addr, &self.args.health_path, Duration::from_secs(1)).await {
                break started.elapsed();
            }
            if let Some(status) = child.try_wait()? {
                bail!("the bare app exited ({status}) before it was ready");
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the bare app was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        Ok((child, port, ms(ready)))
    }

    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(self.args.settle_ms)).await;
    }

    async fn rounds(&self) -> Result<()> {
        let (warmup, rounds) = (self.args.warmup.max(1), self.args.rounds);
        println!(
            "start-to-ready: {rounds} measured rounds after {warmup} warmup (the first one unpacks the artifact); each round starts the app once sandboxed and once bare, alternating which goes first"
        );
        let mut sandboxed = Vec::new();
        let mut bare = Vec::new();
        for i in 0..warmup + rounds {
            let sandbox_first = i % 2 == 0;
            let mut s = None;
            let mut b = None;
            for side in 0..2 {
                if (side == 0) == sandbox_first {
                    let (alloc, mut round) = self.start_sandboxed(&self.args.command).await?;
                    let (stop, gone) = self.stop_sandboxed(alloc.id).await?;
                    round.stop_ms = stop;
                    round.gone_ms = gone;
                    s = Some(round);
                } else {
                    let (mut child, _, ready) = self.start_bare(&self.args.command, false).await?;
                    child.kill().await?;
                    let _ = child.wait().await;
                    b = Some(ready);
                }
                self.settle().await;
            }
            let (s, b) = (s.context("a sandboxed start")?, b.context("a bare start")?);
            let label = if i < warmup {
                format!("warmup {}", i + 1)
            } else {
                format!("round {:2}", i - warmup + 1)
            };
            let opt = |v: Option<f64>| v.map_or("    -".to_owned(), |v| format!("{v:5.1}"));
            println!(
                "{label} ({} first): sandboxed ready {:6.1} ms (app answers {} ms) | bare {:6.1} ms | added {:+6.1} ms | runner: starting {} → process started {} → ready {} ms after the PUT | {} | drained {:.0} ms, network gone {:.0} ms",
                if sandbox_first { "sandboxed" } else { "bare" },
                s.runner_ms,
                opt(s.app_ms),
                b,
                s.runner_ms - b,
                opt(s.starting_ms),
                opt(s.spawned_ms),
                opt(s.ready_event_ms),
                s.address,
                s.stop_ms,
                s.gone_ms,
            );
            if i >= warmup {
                sandboxed.push(s);
                bare.push(b);
            }
        }
        if !sandboxed.is_empty() {
            self.report(&sandboxed, &bare);
        }
        Ok(())
    }

    fn report(&self, sandboxed: &[SandboxRound], bare: &[f64]) {
        let runner: Vec<f64> = sandboxed.iter().map(|r| r.runner_ms).collect();
        let app: Vec<f64> = sandboxed.iter().filter_map(|r| r.app_ms).collect();
        let diffs: Vec<f64> = sandboxed
            .iter()
            .zip(bare)
            .map(|(s, b)| s.runner_ms - b)
            .collect();
        let (r, b) = (Stats::of(&runner), Stats::of(bare));
        let path = &self.args.health_path;
        println!();
        println!("start-to-ready results ({} rounds):", sandboxed.len());
        let row = |label: &str, s: &Stats| {
            println!(
                "  {label:<72} p50 {:7.1} ms  p90 {:7.1} ms  max {:7.1} ms",
                s.p50, s.p90, s.max
            );
        };
        row(
            &format!("bare: spawn → first 200 on 127.0.0.1:PORT{path}"),
            &b,
        );
        if app.is_empty() {
            println!(
                "  sandboxed, app's view: not measured (the runner's log never gave the address early)"
            );
        } else {
            row(
                &format!("sandboxed, app's view: PUT → first 200 on ADDRESS{path} (the driver's)"),
                &Stats::of(&app),
            );
        }
        row(
            "sandboxed, runner's view: PUT → status says `ready` (GET every 1 ms)",
            &r,
        );
        let added = r.p50 - b.p50;
        println!(
            "  added by the sandbox (runner's view − bare): p50 {:.1} ms (target p50 < {:.0} ms: {}), p90 {:.1} ms, max {:.1} ms; median of per-round differences {:.1} ms",
            added,
            self.args.target_ms,
            if added < self.args.target_ms {
                "met"
            } else {
                "NOT met"
            },
            r.p90 - b.p90,
            r.max - b.max,
            Stats::of(&diffs).p50,
        );
        if !app.is_empty() {
            let a = Stats::of(&app);
            println!(
                "  added, app's view (sandboxed app answers − bare): p50 {:.1} ms; runner's view − app's view: p50 {:+.1} ms (its probe backs off from 2 ms)",
                a.p50 - b.p50,
                r.p50 - a.p50
            );
        }
        println!(
            "  ratio sandboxed / bare start-to-ready: p50 {:.2}x",
            r.p50 / b.p50
        );
        let p50_of = |f: fn(&SandboxRound) -> Option<f64>| {
            let v: Vec<f64> = sandboxed.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| Stats::of(&v).p50)
        };
        let mut line = vec!["PUT 0".to_owned()];
        let mut prev = 0.0;
        for (name, at) in [
            ("starting", p50_of(|r| r.starting_ms)),
            ("process started (crun spawned)", p50_of(|r| r.spawned_ms)),
            ("app answers", p50_of(|r| r.app_ms)),
            ("runner ready", p50_of(|r| r.ready_event_ms)),
            ("status shows ready", Some(r.p50)),
        ] {
            if let Some(at) = at {
                line.push(format!("→ {name} {at:.1} ({:+.1})", at - prev));
                prev = at;
            }
        }
        println!(
            "  where the time goes (p50 ms after the PUT): {}",
            line.join(" ")
        );
        let stop: Vec<f64> = sandboxed.iter().map(|r| r.stop_ms).collect();
        let gone: Vec<f64> = sandboxed.iter().map(|r| r.gone_ms).collect();
        println!(
            "  (not part of start-to-ready) DELETE → stopped p50 {:.1} ms, → network namespace gone p50 {:.1} ms",
            Stats::of(&stop).p50,
            Stats::of(&gone).p50
        );
    }

    /// One sandboxed allocation and one bare app for the hot-path rounds, until stdin closes.
    async fn hold(&self, file: &Path) -> Result<()> {
        let command = self
            .args
            .hold_command
            .as_deref()
            .unwrap_or(&self.args.command);
        let (alloc, _) = self.start_sandboxed(command).await?;
        let (mut child, port, _) = self.start_bare(command, true).await?;
        let bare_pid = child.id().unwrap_or(0);
        let bridge = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|e| e.message == "allocation network ready")
            .and_then(|e| e.fields.get("bridge").cloned())
            .unwrap_or_default();
        let text = format!(
            "sandbox_url={}\nsandbox_id={}\nsandbox_pid={}\nbare_url=http://127.0.0.1:{port}\nbare_pid={bare_pid}\nbridge={bridge}\n",
            alloc.address,
            alloc.id,
            alloc.pid.unwrap_or(0),
        );
        // Written whole, then renamed: the script never reads half a file.
        let partial = file.with_extension("partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, file)?;
        println!(
            "holding: sandboxed {} and bare http://127.0.0.1:{port} ({command}) until stdin closes",
            alloc.address
        );
        // On a blocking thread: tokio's stdin needs a feature the workspace does not build.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
        })
        .await;
        let _ = child.kill().await;
        let _ = child.wait().await;
        self.stop_sandboxed(alloc.id).await?;
        Ok(())
    }
}

/// One GET of `path` on a fresh connection to `addr`, within `deadline`: the status code.
async fn get(addr: SocketAddr, path: &str, deadline: Duration) -> Result<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rhone-sandbox-bench\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf);
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .context("timed out")?
}

struct Stats {
    p50: f64,
    p90: f64,
    max: f64,
}

impl Stats {
    /// Nearest-rank percentiles.
    fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Stats {
            p50: at(50.0),
            p90: at(90.0),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The runner (in this process) and everything the bench needs to drive it.
async fn setup(
    args: Args,
) -> Result<(
    Bench,
    tokio::task::JoinHandle<Result<(), rhone_runner::RunnerError>>,
    oneshot::Sender<()>,
)> {
    let events = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(Recorder {
        events: events.clone(),
    })
    .context("installing the log recorder")?;

    let work = args.work_dir.join("work");
    let store_dir = args.work_dir.join("store");
    let bare_home = args.work_dir.join("bare-home");
    std::fs::create_dir_all(&bare_home)?;
    let store = ArtifactStore::local(&store_dir);
    let packed = archive::pack_dir(&args.app_dir)
        .with_context(|| format!("packing {}", args.app_dir.display()))?;
    let digest = store.put(&packed).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    // Calls carry a token whose SHA-256 the runner holds, as the control plane's do.
    let token = Uuid::new_v4().to_string();
    let mut config = RunnerConfig::new(&work);
    config.call_token_sha256 = Some(Digest::of(token.as_bytes()).hex().to_owned());
    // The script nests the sandboxes under the driver's accounting cgroup, so their CPU is
    // counted as ours.
    if let Ok(parent) = std::env::var("RHONE_RUNNER_CGROUP_PARENT") {
        config.cgroup_parent = parent;
    }
    let state = RunnerState {
        identity: RunnerIdentity {
            name: "bench-runner".into(),
            region: "local".into(),
            cell: "local-a".into(),
        },
        config,
        store,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut server = tokio::spawn(rhone_runner::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .context("the call token header")?,
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()?;
    // Up when its health check answers (it claims its bridge first).
    let up = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if server.is_finished() {
            return match (&mut server).await {
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the runner stopped")),
                other => bail!("the runner stopped: {other:?}"),
            };
        }
        if up.elapsed() > Duration::from_secs(30) {
            bail!("the runner did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "runner up in {:.0} ms at {url} (work dir {}); artifact {digest} ({})",
        ms(up.elapsed()),
        work.display(),
        args.app_dir.display()
    );
    let bench = Bench {
        args,
        url,
        http,
        digest,
        events,
        bare_home,
    };
    Ok((bench, server, stop_tx))
}

async fn run(bench: Arc<Bench>) -> Result<()> {
    bench.rounds().await?;
    if let Some(file) = &bench.args.hold {
        bench.hold(file).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let fail = |e: anyhow::Error| -> ! {
        eprintln!("sandbox_bench: {e:#}");
        std::process::exit(1);
    };
    let args = Args::parse().unwrap_or_else(|e| fail(e));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(e.into()));
    let (bench, server, stop_runner) = setup(args).await.unwrap_or_else(|e| fail(e));
    let mut task = tokio::spawn(run(Arc::new(bench)));
    let result = tokio::select! {
        done = &mut task => done.unwrap_or_else(|e| Err(anyhow::anyhow!("the bench panicked: {e}"))),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    // On a signal the bench stops where it is (a bare app it started is killed with it); the
    // runner then stops every allocation it still has and removes its bridge.
    task.abort();
    let _ = stop_runner.send(());
    match tokio::time::timeout(Duration::from_secs(60), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("sandbox_bench: the runner failed: {e}"),
        Ok(Err(e)) => eprintln!("sandbox_bench: the runner panicked: {e}"),
        Err(_) => eprintln!("sandbox_bench: the runner did not stop within 60 s"),
    }
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => fail(e),
    }
}
