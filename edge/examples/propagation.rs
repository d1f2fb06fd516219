//! Route-change propagation: from a CAS commit of a RouteOwner to every edge serving the new
//! epoch (`bench/propagation.sh` runs it). Seeds a control DB (SQLite in a temporary
//! directory; then PostgreSQL too when `RHONE_TEST_POSTGRES_URL` is set) with one route key
//! and two deployments of one ready allocation each, starts EDGES edges in this process
//! (`rhone_edge::serve` on 127.0.0.1:0, default settings: poll interval 20 ms), then moves
//! the key CHANGES times between the two deployments with `routes::write_owner` (CAS on the
//! epoch), 50 ms apart plus a jitter of up to one poll interval (so commits land at every
//! phase of the edges' poll ticks, which are spread evenly over the interval, as separate
//! edges' would be at unrelated phases). For each change, from the moment `write_owner`
//! returns:
//!
//! - (a) until every edge serves it: `GET /_rhone/status` of each edge shows
//!   `applied_seq` ≥ the change's `seq`;
//! - (b) until every edge acknowledged it: its `edge_acks.acked_seq` ≥ `seq` (what a
//!   promotion waits for);
//!
//! both sampled every 1 ms, each edge's time taken when the response that shows it arrives.
//! Prints p50/p90/p99/max of both, and peers measured in the same run: the round trip of one
//! poll's `SELECT` of `route_changes` after a seq, the poll interval, and (a)'s p50 over the
//! poll interval.
//!
//! `cargo run --release -p rhone-edge --example propagation -- [EDGES] [CHANGES]`

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::Utc;
use futures::future::join_all;
use rhone_edge::{EdgeConfig, EdgeState, serve};
use rhone_schema::{
    entity::{allocation, edge_ack, route_change},
    fixtures, new_id,
    routes::{OwnerWrite, write_owner},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::MissedTickBehavior};
use uuid::Uuid;

const ROUTE_KEY: &str = "web.bench.rhone.localhost";
/// Time between one commit and the next, before the jitter.
const SPACING: Duration = Duration::from_millis(50);
/// How often the edges' status and the ack rows are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(1);
/// A change not served and acknowledged by every edge within this long fails the run.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The follower's batch size, so the peer query is the poll's query.
const POLL_BATCH: u64 = 10_000;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let edges: usize = match args.next() {
        Some(n) => n.parse().context("EDGES must be a number")?,
        None => 3,
    };
    let changes: usize = match args.next() {
        Some(n) => n.parse().context("CHANGES must be a number")?,
        None => 100,
    };
    ensure!(
        edges > 0 && changes > 0,
        "EDGES and CHANGES must be positive"
    );

    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("control.db").display()
    );
    run("SQLite (WAL file)", &url, edges, changes).await?;

    match std::env::var(rhone_testkit::postgres::URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        Some(_) => {
            let url = rhone_testkit::postgres::database("rhone_bench_propagation").await?;
            println!();
            run("PostgreSQL", &url, edges, changes).await?;
        }
        None => {
            println!();
            println!(
                "PostgreSQL: skipped ({} is not set)",
                rhone_testkit::postgres::URL_ENV
            );
        }
    }
    Ok(())
}

/// What one change took, from its commit.
struct Sample {
    /// `write_owner` itself, begin to commit.
    write: Duration,
    /// Every edge's status shows the change applied; the slowest edge.
    served_all: Duration,
    /// Each edge's own time to serve it.
    served_each: Vec<Duration>,
    /// Every edge's `edge_acks` row has it; the slowest edge.
    acked_all: Duration,
}

async fn run(backend: &str, url: &str, edges: usize, changes: usize) -> Result<()> {
    let db = rhone_schema::connect(url).await?;
    rhone_schema::migrate(&db).await?;
    let seed = seed(&db).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;

    // The key starts at epoch 1 on the first deployment, before any edge loads a snapshot.
    let mut epoch = write_owner(&db, seed.write(0, 0)).await?.epoch;

    // Each edge has its own pool, as separate edge processes would; all are opened first, so
    // that connecting does not delay the starts below.
    let mut ready = Vec::with_capacity(edges);
    for i in 0..edges {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = EdgeConfig {
            edge_id: format!("bench-edge-{i}"),
            ..EdgeConfig::for_address(addr)
        };
        let db = rhone_schema::connect(url).await?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let status_url = format!("http://{}/_rhone/status", admin.local_addr()?);
        ready.push((
            listener,
            status_url,
            EdgeState {
                db,
                config,
                wake: None,
                assets: None,
                admin: Some(admin),
            },
        ));
    }
    // Separate edges poll at unrelated phases: edge i starts i/EDGES of a poll interval after
    // the first, so their ticks stay spread evenly over the interval (every run alike).
    let poll_interval = EdgeConfig::DEFAULT_POLL_INTERVAL;
    let first_start = Instant::now();
    let mut running = Vec::with_capacity(edges);
    for (i, (listener, status_url, state)) in ready.into_iter().enumerate() {
        tokio::time::sleep_until((first_start + poll_interval * i as u32 / edges as u32).into())
            .await;
        let edge_id = state.config.edge_id.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        running.push(RunningEdge {
            edge_id,
            status_url,
            stop,
            handle,
        });
    }

    // Every edge loaded its snapshot and acknowledged the head before the first change.
    let head = seq_of(&db, epoch).await?;
    observe(&client, &db, &running, head, Instant::now())
        .await
        .context("waiting for the edges to load their first snapshot")?;

    println!(
        "route-change propagation: {edges} edges in-process, {changes} CAS changes of one route key, {backend}"
    );
    println!(
        "  poll interval {} (EdgeConfig default; the edges' poll ticks spread evenly over it), commits {} apart + jitter 0..{}, sampled every {}",
        ms(poll_interval),
        ms(SPACING),
        ms(poll_interval),
        ms(SAMPLE_EVERY)
    );

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut samples = Vec::with_capacity(changes);
    let mut poll_empty = Vec::with_capacity(changes);
    let mut poll_one = Vec::with_capacity(changes);
    let (mut sampled, mut sample_count) = (Duration::ZERO, 0u32);
    for i in 0..changes {
        let started = Instant::now();
        let owner = write_owner(&db, seed.write((i + 1) % 2, epoch)).await?;
        let committed = Instant::now();
        ensure!(
            owner.epoch == epoch + 1,
            "the CAS did not advance the epoch"
        );
        epoch = owner.epoch;
        let seq = seq_of(&db, epoch).await?;
        let observed = observe(&client, &db, &running, seq, committed)
            .await
            .with_context(|| format!("change {} (seq {seq})", i + 1))?;
        sampled += committed.elapsed();
        sample_count += observed.samples;
        samples.push(Sample {
            write: committed - started,
            served_all: max(&observed.served),
            served_each: observed.served,
            acked_all: max(&observed.acked),
        });

        // Peer: one poll's query, the way the follower sends it, under the same load: once
        // with nothing new (an idle poll) and once returning the change just made.
        poll_empty.push(time_poll(&db, seq, 0).await?);
        poll_one.push(time_poll(&db, seq - 1, 1).await?);

        let jitter = Duration::from_micros(rng.below(poll_interval.as_micros() as u64));
        tokio::time::sleep_until((committed + SPACING + jitter).into()).await;
    }

    for edge in running {
        let _ = edge.stop.send(());
        edge.handle
            .await
            .context("edge task")?
            .with_context(|| format!("edge {}", edge.edge_id))?;
    }
    let left = edge_ack::Entity::find().all(&db).await?;
    ensure!(
        left.is_empty(),
        "edges left ack rows behind after a graceful stop"
    );

    let mut served_all: Vec<Duration> = samples.iter().map(|s| s.served_all).collect();
    let mut served_each: Vec<Duration> = samples
        .iter()
        .flat_map(|s| s.served_each.iter().copied())
        .collect();
    let mut acked_all: Vec<Duration> = samples.iter().map(|s| s.acked_all).collect();
    let mut ack_after_serve: Vec<Duration> = samples
        .iter()
        .map(|s| s.acked_all.saturating_sub(s.served_all))
        .collect();
    let mut writes: Vec<Duration> = samples.iter().map(|s| s.write).collect();
    let a = Stats::of(&mut served_all);

    println!();
    println!(
        "  {:<58} {:>9} {:>9} {:>9} {:>9}",
        "from write_owner's commit", "p50", "p90", "p99", "max"
    );
    row(
        "(a) every edge serves the new epoch (status applied_seq)",
        &a,
    );
    row(
        &format!("    any one edge ({} samples)", served_each.len()),
        &Stats::of(&mut served_each),
    );
    row(
        "(b) every edge acknowledged it (edge_acks.acked_seq)",
        &Stats::of(&mut acked_all),
    );
    row(
        "    (b) - (a), per change",
        &Stats::of(&mut ack_after_serve),
    );
    println!();
    println!("  peers, same run");
    row(
        "write_owner itself (begin to commit)",
        &Stats::of(&mut writes),
    );
    row(
        "one poll: SELECT route_changes after seq, nothing new",
        &Stats::of(&mut poll_empty),
    );
    row(
        "one poll: SELECT route_changes after seq, 1 change",
        &Stats::of(&mut poll_one),
    );
    println!(
        "  {:<58} {:>9}",
        "sampling period achieved (mean; the resolution of (a), (b))",
        ms(sampled / sample_count.max(1))
    );
    println!(
        "  {:<58} {:>9}",
        "poll interval",
        format!("{:.2} ms", poll_interval.as_secs_f64() * 1e3)
    );
    println!();
    println!(
        "  (a) p50 / poll interval = {:.2}   (expected from the phases alone: one edge 0.5, the slowest of {edges} spread evenly {:.2}; plus the poll's queries)",
        a.p50.as_secs_f64() / poll_interval.as_secs_f64(),
        1.0 - 0.5 / edges as f64
    );
    Ok(())
}

struct RunningEdge {
    edge_id: String,
    status_url: String,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), rhone_edge::ServeError>>,
}

/// The two deployments the key moves between, and where they run.
struct Seed {
    environment_id: Uuid,
    region_id: Uuid,
    cell_id: Uuid,
    deployments: [(Uuid, String); 2],
}

impl Seed {
    /// A CAS move of the key to deployment `which`, from `epoch`.
    fn write(&self, which: usize, epoch: i64) -> OwnerWrite {
        let (deployment_id, digest) = &self.deployments[which];
        OwnerWrite {
            instances: 1,
            route_key: ROUTE_KEY.to_owned(),
            environment_id: self.environment_id,
            deployment_id: *deployment_id,
            artifact_digest: digest.clone(),
            region_id: self.region_id,
            cell_id: self.cell_id,
            operation_id: None,
            expected_epoch: Some(epoch),
        }
    }
}

/// A tenancy, two artifacts, a deployment of each and one ready allocation of each. Nothing
/// listens at the allocations' addresses: nothing is proxied.
async fn seed(db: &DatabaseConnection) -> Result<Seed> {
    let t = fixtures::tenancy(db, "bench", "production").await?;
    let (cell, runner) = fixtures::local_cell(db).await?;
    let mut deployments = Vec::new();
    for n in 1..=2u64 {
        let digest = fixtures::digest(n);
        fixtures::artifact(db, &digest).await?;
        let d = fixtures::deployment(db, &t, &digest, "preview_ready").await?;
        let now = Utc::now();
        allocation::ActiveModel {
            id: Set(new_id()),
            deployment_id: Set(d.id),
            artifact_digest: Set(digest.clone()),
            runner_id: Set(Some(runner)),
            region_id: Set(cell.region_id),
            cell_id: Set(cell.id),
            generation: Set(1),
            desired: Set("run".into()),
            stage: Set("ready".into()),
            address: Set(Some(format!("http://127.0.0.1:{}", 9000 + n))),
            exit_status: Set(None),
            last_report_at: Set(Some(now)),
            created_at: Set(now),
            updated_at: Set(now),
            memory_mb: Set(512),
            cpu_millis: Set(1000),
            sealed_secrets: Set(None),
        }
        .insert(db)
        .await?;
        deployments.push((d.id, digest));
    }
    let [a, b]: [(Uuid, String); 2] = deployments
        .try_into()
        .map_err(|_| anyhow::anyhow!("two deployments"))?;
    Ok(Seed {
        environment_id: t.environment.id,
        region_id: cell.region_id,
        cell_id: cell.id,
        deployments: [a, b],
    })
}

/// The change-log seq of the key's move to `epoch`.
async fn seq_of(db: &DatabaseConnection, epoch: i64) -> Result<i64> {
    route_change::Entity::find()
        .select_only()
        .column(route_change::Column::Seq)
        .filter(route_change::Column::RouteKey.eq(ROUTE_KEY))
        .filter(route_change::Column::Epoch.eq(epoch))
        .into_tuple::<i64>()
        .one(db)
        .await?
        .with_context(|| format!("no route change logged for epoch {epoch}"))
}

/// Samples every edge's status and ack row every `SAMPLE_EVERY` until all have `seq`;
/// returns each edge's time to serve it and to acknowledge it, from `since`, and how many
/// samples that took.
async fn observe(
    client: &reqwest::Client,
    db: &DatabaseConnection,
    edges: &[RunningEdge],
    seq: i64,
    since: Instant,
) -> Result<Observed> {
    let mut served: Vec<Option<Duration>> = vec![None; edges.len()];
    let mut acked: Vec<Option<Duration>> = vec![None; edges.len()];
    let ids: Vec<&str> = edges.iter().map(|e| e.edge_id.as_str()).collect();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut samples = 0;
    loop {
        tick.tick().await;
        samples += 1;
        let statuses = join_all(
            edges
                .iter()
                .enumerate()
                .filter(|(i, _)| served[*i].is_none())
                .map(|(i, e)| async move {
                    let applied = applied_seq(client, &e.status_url).await;
                    (i, applied, since.elapsed())
                }),
        );
        let acks = async {
            if acked.iter().all(Option::is_some) {
                return Ok((Vec::new(), since.elapsed()));
            }
            let rows = edge_ack::Entity::find()
                .select_only()
                .columns([edge_ack::Column::EdgeId, edge_ack::Column::AckedSeq])
                .filter(edge_ack::Column::EdgeId.is_in(ids.iter().copied()))
                .into_tuple::<(String, i64)>()
                .all(db)
                .await?;
            anyhow::Ok((rows, since.elapsed()))
        };
        let (statuses, acks) = futures::join!(statuses, acks);
        for (i, applied, at) in statuses {
            if applied? >= seq {
                served[i] = Some(at);
            }
        }
        let (rows, at) = acks?;
        for (edge_id, acked_seq) in rows {
            if acked_seq >= seq
                && let Some(i) = ids.iter().position(|id| *id == edge_id)
                && acked[i].is_none()
            {
                acked[i] = Some(at);
            }
        }
        if served.iter().chain(&acked).all(Option::is_some) {
            return Ok(Observed {
                served: served.into_iter().flatten().collect(),
                acked: acked.into_iter().flatten().collect(),
                samples,
            });
        }
        if since.elapsed() > TIMEOUT {
            let lagging: Vec<String> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| served[*i].is_none() || acked[*i].is_none())
                .map(|(i, id)| {
                    format!(
                        "{id} (served: {}, acked: {})",
                        served[i].is_some(),
                        acked[i].is_some()
                    )
                })
                .collect();
            bail!(
                "seq {seq} not served and acknowledged by every edge within {TIMEOUT:?}: {}",
                lagging.join(", ")
            );
        }
    }
}

/// Each edge's time to serve a change and to acknowledge it, in edge order.
struct Observed {
    served: Vec<Duration>,
    acked: Vec<Duration>,
    samples: u32,
}

/// The edge's `applied_seq`, or -1 while it has not loaded its first snapshot.
async fn applied_seq(client: &reqwest::Client, url: &str) -> Result<i64> {
    let status: serde_json::Value = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if status["loaded"] != serde_json::Value::Bool(true) {
        return Ok(-1);
    }
    status["applied_seq"]
        .as_i64()
        .with_context(|| format!("no applied_seq in {status}"))
}

/// One follower poll's query (`changes_after`: the same columns, order and limit), timed;
/// checks it returned `rows` rows.
async fn time_poll(db: &DatabaseConnection, after: i64, rows: usize) -> Result<Duration> {
    let started = Instant::now();
    let got = route_change::Entity::find()
        .select_only()
        .columns([
            route_change::Column::Seq,
            route_change::Column::RouteKey,
            route_change::Column::Epoch,
            route_change::Column::DeploymentId,
            route_change::Column::ArtifactDigest,
        ])
        .filter(route_change::Column::Seq.gt(after))
        .order_by_asc(route_change::Column::Seq)
        .limit(POLL_BATCH)
        .into_tuple::<(i64, String, i64, Uuid, String)>()
        .all(db)
        .await?;
    let took = started.elapsed();
    ensure!(
        got.len() == rows,
        "poll after {after}: {} rows, not {rows}",
        got.len()
    );
    Ok(took)
}

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

impl Stats {
    /// Nearest-rank percentiles.
    fn of(d: &mut [Duration]) -> Self {
        d.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * d.len() as f64).ceil() as usize).clamp(1, d.len());
            d[rank - 1]
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: d[d.len() - 1],
        }
    }
}

fn row(name: &str, s: &Stats) {
    println!(
        "  {name:<58} {:>9} {:>9} {:>9} {:>9}",
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max)
    );
}

fn max(d: &[Duration]) -> Duration {
    d.iter().copied().max().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A small deterministic generator, so every run jitters the same way.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
