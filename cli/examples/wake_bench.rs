//! The driver of `bench/wake.sh`: cold-start time through the edge against the app's own
//! start-to-ready, and a stampede of cold requests on one sleeping route. See the header of
//! `bench/wake.sh` for what is measured and how to read it; the script sets up `rhone dev`,
//! the app and the environment, then runs this against them.
//!
//!   cargo run --release -p rhone-cli --example wake_bench -- --edge 127.0.0.1:PORT \
//!       --host HOST --db DATA_DIR/rhone.db --app-dir DIST [--rounds N] [--stampede N]
//!
//! Client-side timings use raw HTTP/1.1 over a fresh TCP connection per request (`Connection:
//! close`), so nothing is pooled or pre-connected: TTFB is from `connect()` to the first byte
//! of the answer. The control DB is only read (environment `wake_state`, the route owner, the
//! `operations`, `operation_stages` and `allocations` rows).

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rhone_core::{OperationKind, StateMachine, stage::AllocationStage};
use rhone_schema::entity::{allocation, environment, operation, operation_stage, route_owner};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Barrier,
};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// The edge's address (`rhone dev --edge-port`).
    #[arg(long)]
    edge: SocketAddr,
    /// The route key (Host header) of the scale-to-zero environment.
    #[arg(long)]
    host: String,
    /// The SQLite control DB of `rhone dev` (`<data dir>/rhone.db`), read only.
    #[arg(long)]
    db: PathBuf,
    /// The app's build output (`python3 build.py` in a copy of examples/counter: `dist/`),
    /// started by hand for the peer.
    #[arg(long)]
    app_dir: PathBuf,
    /// The app's run command, started in `app_dir` with PORT set (the peer).
    #[arg(long, default_value = "python3 server.py")]
    app_command: String,
    /// The app's readiness path.
    #[arg(long, default_value = "/healthz")]
    health_path: String,
    /// Measured cold rounds (each: the peer once, then one cold GET).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Unmeasured cold rounds first (the first wake warms Temporal's and the worker's caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Concurrent cold GETs of the stampede (0: no stampede).
    #[arg(long, default_value_t = 1000)]
    stampede: usize,
    /// Pause after the route is seen asleep before a cold request, so the Wake run that put it
    /// to sleep has closed (a request then starts a fresh run).
    #[arg(long, default_value_t = 250)]
    settle_ms: u64,
    /// The least time between two cold sends. An edge shares a wake call's answer with later
    /// reads of the same key and epoch for a while (`SHARE_FOR` in edge/src/wake.rs); where
    /// that answer outlives the route's next sleep, a cold request soon after the previous
    /// wake is held on it until the budget runs out (503). A gap longer than `SHARE_FOR` steps
    /// around such a bug; 0 (the default) measures what a client would see.
    #[arg(long, default_value_t = 0)]
    min_gap_ms: u64,
    /// The overhead target stated next to the figure.
    #[arg(long, default_value_t = 100.0)]
    target_ms: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url = format!("sqlite://{}?mode=rw", args.db.display());
    let db = sea_orm::Database::connect(&url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let bench = Bench {
        args,
        db,
        last_cold: std::sync::Mutex::default(),
    };
    bench.run().await
}

struct Bench {
    args: Args,
    db: DatabaseConnection,
    /// When the last cold request was sent.
    last_cold: std::sync::Mutex<Option<Instant>>,
}

/// What the route is, read from the control DB.
struct Setting {
    env: environment::Model,
    owner: route_owner::Model,
}

/// One answer read off a fresh connection.
#[derive(Debug, Clone)]
struct Answer {
    /// `connect()` to the first byte of the answer.
    ttfb: Duration,
    /// Request sent to the end of the answer's headers.
    headers: Duration,
    status: u16,
    retry_after: bool,
}

#[derive(Debug)]
enum Failure {
    Connect(String),
    /// No complete headers before the deadline: a hanging request.
    TimedOut,
    /// The connection failed or closed before the headers.
    Io(String),
}

/// One cold round's figures.
struct Round {
    ttfb_ms: f64,
    peer_ms: f64,
    status: u16,
    operations: usize,
    allocations: usize,
    /// Milliseconds from the request's send to each stage record of its Wake operation.
    stages: Vec<(String, f64)>,
}

impl Bench {
    async fn run(&self) -> Result<()> {
        let setting = self.setting().await?;
        println!(
            "route {} (environment {} `{}`): scale_to_zero={}, sleep_after_ms={}, wake_budget_ms={}, wake_state={}",
            self.args.host,
            setting.env.id,
            setting.env.name,
            setting.env.scale_to_zero,
            setting.env.sleep_after_ms,
            setting.env.wake_budget_ms,
            setting.env.wake_state,
        );
        if !setting.env.scale_to_zero {
            bail!(
                "the environment of {} does not scale to zero",
                self.args.host
            );
        }
        if self.args.rounds > 0 {
            self.cold_rounds().await?;
        }
        if self.args.stampede > 0 {
            self.stampede().await?;
        }
        Ok(())
    }

    async fn setting(&self) -> Result<Setting> {
        let owner = route_owner::Entity::find_by_id(self.args.host.clone())
            .one(&self.db)
            .await?
            .with_context(|| format!("no route owner for {}", self.args.host))?;
        let env = environment::Entity::find_by_id(owner.environment_id)
            .one(&self.db)
            .await?
            .context("the route owner's environment")?;
        Ok(Setting { env, owner })
    }

    /// Waits until the route sleeps: `wake_state = sleeping`, no allocation of the owner's
    /// deployment still running or stopping, and the newest Wake operation of the key at
    /// `sleeping`. Returns how long it waited.
    async fn wait_asleep(&self) -> Result<Duration> {
        let started = Instant::now();
        let setting = self.setting().await?;
        let limit = Duration::from_millis(u64::try_from(setting.env.sleep_after_ms).unwrap_or(0))
            + Duration::from_secs(90);
        loop {
            let Setting { env, owner } = self.setting().await?;
            let running = allocation::Entity::find()
                .filter(allocation::Column::DeploymentId.eq(owner.deployment_id))
                .filter(allocation::Column::Stage.is_not_in([
                    AllocationStage::Stopped.as_str(),
                    AllocationStage::Failed.as_str(),
                ]))
                .all(&self.db)
                .await?;
            let newest = operation::Entity::find()
                .filter(operation::Column::Kind.eq(OperationKind::Wake.as_str()))
                .filter(operation::Column::TargetId.eq(self.args.host.as_str()))
                .order_by_desc(operation::Column::CreatedAt)
                .one(&self.db)
                .await?;
            let op_done = newest
                .as_ref()
                .is_some_and(|o| o.current_stage == "sleeping" || o.current_stage == "failed");
            if env.wake_state == "sleeping" && running.is_empty() && op_done {
                tokio::time::sleep(Duration::from_millis(self.args.settle_ms)).await;
                let last = *self.last_cold.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(last) = last {
                    let gap = Duration::from_millis(self.args.min_gap_ms);
                    tokio::time::sleep(gap.saturating_sub(last.elapsed())).await;
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!(
                    "{} did not go to sleep within {limit:?}: wake_state={}, allocations not stopped: {:?}, newest Wake operation: {:?}",
                    self.args.host,
                    env.wake_state,
                    running
                        .iter()
                        .map(|a| format!("{} {} desired={}", a.id, a.stage, a.desired))
                        .collect::<Vec<_>>(),
                    newest.map(|o| (o.id, o.current_stage, o.error)),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sent_cold(&self) {
        *self.last_cold.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    async fn wake_ops(&self) -> Result<Vec<operation::Model>> {
        Ok(operation::Entity::find()
            .filter(operation::Column::Kind.eq(OperationKind::Wake.as_str()))
            .filter(operation::Column::TargetId.eq(self.args.host.as_str()))
            .all(&self.db)
            .await?)
    }

    async fn allocation_ids(&self) -> Result<HashSet<Uuid>> {
        Ok(allocation::Entity::find()
            .select_only()
            .column(allocation::Column::Id)
            .into_tuple::<Uuid>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect())
    }

    /// Wake operations and allocations created since `ops`/`allocs` were read.
    async fn created_since(
        &self,
        ops: &HashSet<Uuid>,
        allocs: &HashSet<Uuid>,
    ) -> Result<(Vec<operation::Model>, Vec<Uuid>)> {
        let new_ops = self
            .wake_ops()
            .await?
            .into_iter()
            .filter(|o| !ops.contains(&o.id))
            .collect();
        let new_allocs = self
            .allocation_ids()
            .await?
            .into_iter()
            .filter(|a| !allocs.contains(a))
            .collect();
        Ok((new_ops, new_allocs))
    }

    async fn stage_records(&self, op: Uuid) -> Result<Vec<operation_stage::Model>> {
        Ok(operation_stage::Entity::find()
            .filter(operation_stage::Column::OperationId.eq(op))
            .order_by_asc(operation_stage::Column::Seq)
            .all(&self.db)
            .await?)
    }

    // --- cold rounds --------------------------------------------------------------------

    async fn cold_rounds(&self) -> Result<()> {
        let total = self.args.warmup + self.args.rounds;
        println!();
        let gap = if self.args.min_gap_ms > 0 {
            format!(
                " (and at least {} ms since the previous cold send)",
                self.args.min_gap_ms
            )
        } else {
            String::new()
        };
        println!(
            "cold rounds: {} measured after {} warmup; each waits for the route to sleep{gap}, starts the peer once, then sends one cold GET / through the edge",
            self.args.rounds, self.args.warmup
        );
        let mut rounds = Vec::new();
        for i in 0..total {
            let waited = self.wait_asleep().await?;
            let peer = self.peer_once().await?;
            let ops: HashSet<Uuid> = self.wake_ops().await?.iter().map(|o| o.id).collect();
            let allocs = self.allocation_ids().await?;
            let sent_at = unix_us();
            self.sent_cold();
            let answer = get(
                self.args.edge,
                &self.args.host,
                "/",
                Duration::from_secs(60),
            )
            .await
            .map_err(|f| anyhow::anyhow!("cold GET / failed: {f:?}"))?;
            let (new_ops, new_allocs) = self.created_since(&ops, &allocs).await?;
            let mut stages = Vec::new();
            if let [op] = new_ops.as_slice() {
                for r in self.stage_records(op.id).await? {
                    let at = r.entered_at.timestamp_micros();
                    stages.push((r.stage, (at - sent_at) as f64 / 1000.0));
                }
            }
            let round = Round {
                ttfb_ms: ms(answer.ttfb),
                peer_ms: ms(peer),
                status: answer.status,
                operations: new_ops.len(),
                allocations: new_allocs.len(),
                stages,
            };
            let label = if i < self.args.warmup {
                "warmup".to_owned()
            } else {
                format!("round {:>2}", i - self.args.warmup + 1)
            };
            println!(
                "{label}: cold TTFB {:7.1} ms (status {}) | peer start-to-ready {:6.1} ms | Wake ops {} allocations {} | stages (ms after send): {} | slept after {:.1} s",
                round.ttfb_ms,
                round.status,
                round.peer_ms,
                round.operations,
                round.allocations,
                round
                    .stages
                    .iter()
                    .map(|(s, t)| format!("{s} {t:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                waited.as_secs_f64(),
            );
            if i >= self.args.warmup {
                rounds.push(round);
            }
        }
        self.report_cold(&rounds);
        Ok(())
    }

    fn report_cold(&self, rounds: &[Round]) {
        let cold: Vec<f64> = rounds.iter().map(|r| r.ttfb_ms).collect();
        let peer: Vec<f64> = rounds.iter().map(|r| r.peer_ms).collect();
        let diffs: Vec<f64> = rounds.iter().map(|r| r.ttfb_ms - r.peer_ms).collect();
        let (c, p) = (Stats::of(&cold), Stats::of(&peer));
        let not_ok = rounds.iter().filter(|r| r.status != 200).count();
        let odd = rounds
            .iter()
            .filter(|r| r.operations != 1 || r.allocations != 1)
            .count();
        println!();
        println!("results ({} rounds):", rounds.len());
        println!(
            "  cold GET / through the edge, TTFB (client side)       p50 {:7.1} ms  p90 {:7.1} ms  max {:7.1} ms",
            c.p50, c.p90, c.max
        );
        println!(
            "  peer: the app's own start-to-ready (spawn → 200 {})  p50 {:7.1} ms  p90 {:7.1} ms  max {:7.1} ms",
            self.args.health_path, p.p50, p.p90, p.max
        );
        let overhead = c.p50 - p.p50;
        println!(
            "  Rhone's overhead = cold TTFB − app start-to-ready: p50 {:.1} ms (target p50 < {:.0} ms: {}), p90 {:.1} ms, max {:.1} ms; median of per-round differences {:.1} ms",
            overhead,
            self.args.target_ms,
            if overhead < self.args.target_ms {
                "met"
            } else {
                "NOT met"
            },
            c.p90 - p.p90,
            c.max - p.max,
            Stats::of(&diffs).p50,
        );
        println!(
            "  ratio cold TTFB / app start-to-ready: p50 {:.2}x",
            c.p50 / p.p50
        );
        if not_ok > 0 {
            println!("  WARNING: {not_ok} cold GETs did not answer 200");
        }
        if odd > 0 {
            println!(
                "  WARNING: {odd} rounds did not create exactly one Wake operation and one allocation"
            );
        }
        // Where the time goes, from the Wake operation's stage records (DB timestamps, the
        // same clock as the client's: one machine).
        let mut by_stage: BTreeMap<usize, (String, Vec<f64>)> = BTreeMap::new();
        for r in rounds {
            for (i, (s, t)) in r.stages.iter().enumerate() {
                by_stage
                    .entry(i)
                    .or_insert_with(|| (s.clone(), Vec::new()))
                    .1
                    .push(*t);
            }
        }
        if !by_stage.is_empty() {
            let mut line = Vec::new();
            let mut prev = 0.0;
            for (name, ts) in by_stage.values() {
                let at = Stats::of(ts).p50;
                line.push(format!("→ {name} {at:.0} (+{:.0})", at - prev));
                prev = at;
            }
            line.push(format!("→ first byte {:.0} (+{:.0})", c.p50, c.p50 - prev));
            println!(
                "  where the time goes (p50 ms after the request was sent, per stage record of its Wake operation): send 0 {}",
                line.join(" ")
            );
        }
    }

    /// Starts the app by hand and times spawn → first 200 on its readiness path.
    async fn peer_once(&self) -> Result<Duration> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut parts = self.args.app_command.split_whitespace();
        let program = parts.next().context("an app command")?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(program)
            .args(parts)
            .current_dir(&self.args.app_dir)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} in {}",
                    self.args.app_command,
                    self.args.app_dir.display()
                )
            })?;
        let ready = loop {
            if let Ok(a) = get(
                addr,
                "127.0.0.1",
                &self.args.health_path,
                Duration::from_secs(2),
            )
            .await
                && a.status == 200
            {
                break started.elapsed();
            }
            if let Some(status) = child.try_wait()? {
                bail!("the app exited ({status}) before it was ready");
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the app was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        child.kill().await?;
        let _ = child.wait().await;
        Ok(ready)
    }

    // --- stampede -------------------------------------------------------------------------

    async fn stampede(&self) -> Result<()> {
        let n = self.args.stampede;
        self.wait_asleep().await?;
        let setting = self.setting().await?;
        let budget = Duration::from_millis(u64::try_from(setting.env.wake_budget_ms).unwrap_or(0));
        let deadline = budget + Duration::from_secs(1);
        let ops: HashSet<Uuid> = self.wake_ops().await?.iter().map(|o| o.id).collect();
        let allocs = self.allocation_ids().await?;
        println!();
        println!(
            "stampede: {n} concurrent cold GET / on {} while it sleeps, each on its own connection (all connected first, then sent together), deadline {} ms each (wake budget {} ms + 1 s)",
            self.args.host,
            deadline.as_millis(),
            budget.as_millis()
        );
        self.sent_cold();
        let barrier = Arc::new(Barrier::new(n));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (barrier, edge, host) = (barrier.clone(), self.args.edge, self.args.host.clone());
            tasks.spawn(async move {
                let conn =
                    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(edge)).await;
                barrier.wait().await;
                let stream = match conn {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(Failure::Connect(e.to_string())),
                    Err(_) => return Err(Failure::Connect("timed out".into())),
                };
                exchange(stream, Instant::now(), &host, "/", deadline).await
            });
        }
        let mut results = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            results.push(r.context("a stampede task panicked")?);
        }
        // Anything a late or duplicate wake would create shows up within this.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (new_ops, new_allocs) = self.created_since(&ops, &allocs).await?;

        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        let (mut timed_out, mut errors) = (0, BTreeMap::<String, usize>::new());
        let mut retry_after = 0;
        let mut latencies = Vec::new();
        for r in &results {
            match r {
                Ok(a) => {
                    *statuses.entry(a.status).or_default() += 1;
                    if a.status == 503 && a.retry_after {
                        retry_after += 1;
                    }
                    latencies.push(ms(a.headers));
                }
                Err(Failure::TimedOut) => timed_out += 1,
                Err(Failure::Connect(e)) => {
                    *errors.entry(format!("connect: {e}")).or_default() += 1
                }
                Err(Failure::Io(e)) => *errors.entry(e.clone()).or_default() += 1,
            }
        }
        let ok = statuses.get(&200).copied().unwrap_or(0);
        let unavailable = statuses.get(&503).copied().unwrap_or(0);
        let other: usize = statuses
            .iter()
            .filter(|(s, _)| **s != 200 && **s != 503)
            .map(|(_, c)| c)
            .sum::<usize>()
            + errors.values().sum::<usize>();
        println!(
            "  statuses: 200 {ok} | 503 {unavailable} ({retry_after} with Retry-After) | other {other} | timed out (hanging) {timed_out}"
        );
        for (s, c) in statuses.iter().filter(|(s, _)| **s != 200 && **s != 503) {
            println!("    other: status {s} × {c}");
        }
        for (e, c) in &errors {
            println!("    other: {e} × {c}");
        }
        if !latencies.is_empty() {
            let l = Stats::of(&latencies);
            println!(
                "  latency, send → answer headers (answered requests): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                l.p50, l.p99, l.max
            );
        }
        for op in &new_ops {
            let stages = self.stage_records(op.id).await?;
            println!(
                "  Wake operation {} now at {} ({}): {}",
                op.id,
                op.current_stage,
                op.status,
                stages
                    .iter()
                    .map(|s| s.stage.as_str())
                    .collect::<Vec<_>>()
                    .join(" → ")
            );
        }
        println!(
            "  Wake operations created: {} | allocations created: {}",
            new_ops.len(),
            new_allocs.len()
        );
        println!("  one Wake operation: {}", yes(new_ops.len() == 1));
        println!("  one allocation: {}", yes(new_allocs.len() == 1));
        println!("  none hanging: {}", yes(timed_out == 0));
        Ok(())
    }
}

/// One GET on a fresh connection to `addr`, within `deadline` of the connect.
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    deadline: Duration,
) -> Result<Answer, Failure> {
    let start = Instant::now();
    let stream = tokio::time::timeout(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::TimedOut)?
        .map_err(|e| Failure::Connect(e.to_string()))?;
    exchange(stream, start, host, path, deadline).await
}

/// Sends a GET with `Connection: close` on `stream`, reads the answer's headers within
/// `deadline` of `start`, then drains the body. TTFB counts from `start`.
async fn exchange(
    mut stream: TcpStream,
    start: Instant,
    host: &str,
    path: &str,
    deadline: Duration,
) -> Result<Answer, Failure> {
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rhone-wake-bench\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let sent = Instant::now();
    let until = start + deadline;
    let io = |e: std::io::Error| Failure::Io(e.kind().to_string());
    tokio::time::timeout_at(until.into(), stream.write_all(request.as_bytes()))
        .await
        .map_err(|_| Failure::TimedOut)?
        .map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut ttfb = None;
    let end = loop {
        let n = tokio::time::timeout_at(until.into(), stream.read(&mut chunk))
            .await
            .map_err(|_| Failure::TimedOut)?
            .map_err(io)?;
        if n == 0 {
            return Err(Failure::Io("closed before the answer's headers".into()));
        }
        ttfb.get_or_insert_with(|| start.elapsed());
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let headers = sent.elapsed();
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::Io(format!("no status line in {:?}", head.lines().next())))?;
    let retry_after = head.lines().any(|l| l.starts_with("retry-after:"));
    // The rest of the answer, so the server sees a normal close.
    let _ = tokio::time::timeout_at(until.into(), async {
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(Answer {
        ttfb: ttfb.unwrap_or(headers),
        headers,
        status,
        retry_after,
    })
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
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
            p99: at(99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
