//! The edge's in-memory route table at scale (`bench/route_table.sh` runs it): seeds a SQLite
//! control DB with KEYS route keys (default 100,000), each with its own deployment, artifact,
//! ready allocation and change-log row, then prints
//!
//! - snapshot load time from the DB (`RouteTable::reload`), against the plain read of the
//!   owner rows it includes (the floor);
//! - memory: the table's heap estimate and the RSS growth of the process;
//! - lookup time over 1,000,000 lookups of random keys, p50/p99/mean, against a plain
//!   `HashMap<String, Arc<Route>>` and a `BTreeMap` holding the same routes, in this run.
//!
//! `cargo run --release -p rhone-edge --example route_table -- [KEYS]`

use std::{
    collections::{BTreeMap, HashMap},
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use rhone_edge::{Route, RouteTable};
use rhone_schema::{
    entity::{allocation, artifact, deployment, route_change, route_owner},
    fixtures, new_id,
};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

const LOOKUPS: usize = 1_000_000;
const RELOADS: usize = 10;
const CHUNK: usize = 500;

#[tokio::main]
async fn main() -> Result<()> {
    let keys: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("KEYS must be a number")?,
        None => 100_000,
    };
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("control.db").display()
    );
    let db = rhone_schema::connect(&url).await?;
    rhone_schema::migrate(&db).await?;
    let started = Instant::now();
    let names = seed(&db, keys).await?;
    println!(
        "route table benchmark: {keys} route keys, each with one deployment, artifact, ready allocation and change (SQLite, seeded in {:.1?})",
        started.elapsed()
    );

    // Snapshot load: the first into an empty table (measured for memory too), then reloads.
    let table = RouteTable::new("bench");
    let rss_before = rss_bytes()?;
    let started = Instant::now();
    let loaded = table.reload(&db).await?;
    let first_load = started.elapsed();
    let rss_after = rss_bytes()?;
    ensure!(loaded.route_keys == keys && loaded.unverified == 0 && loaded.allocations == keys);
    let mut reloads = Vec::new();
    let mut rss_series = Vec::new();
    for _ in 0..RELOADS {
        let started = Instant::now();
        table.reload(&db).await?;
        reloads.push(started.elapsed());
        rss_series.push(rss_bytes()?.saturating_sub(rss_before));
    }
    let mut owner_reads = Vec::new();
    for _ in 0..RELOADS {
        let started = Instant::now();
        let rows = route_owner::Entity::find().all(&db).await?;
        owner_reads.push(started.elapsed());
        ensure!(rows.len() == keys);
    }
    let heap = table.heap_estimate();
    println!();
    println!("snapshot load from SQLite (one read transaction, verified):");
    println!("  first load            {}", ms(first_load));
    println!(
        "  reload, median of {RELOADS}  {}   (min {})",
        ms(median(&mut reloads)),
        ms(*reloads.iter().min().unwrap_or(&Duration::ZERO))
    );
    let floor = median(&mut owner_reads);
    println!(
        "  peer: SELECT * FROM route_owners into models, median {}  (reload / peer = {:.2})",
        ms(floor),
        median(&mut reloads).as_secs_f64() / floor.as_secs_f64()
    );
    println!();
    println!("memory:");
    println!(
        "  heap estimate         {:.1} MiB  ({} B per route key, allocator overhead not counted)",
        mib(heap),
        heap / keys
    );
    println!(
        "  RSS growth, first load  {:.1} MiB  ({} B per route key, includes what the allocator keeps of the snapshot's rows)",
        mib(rss_after.saturating_sub(rss_before)),
        rss_after.saturating_sub(rss_before) / keys
    );
    let series: Vec<String> = rss_series
        .iter()
        .map(|b| format!("{:.0}", mib(*b)))
        .collect();
    println!(
        "  RSS growth after each of {RELOADS} reloads (MiB)  {}",
        series.join(" ")
    );

    // Lookups: the same random key sequence through the table and through the peers.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let order: Vec<usize> = (0..LOOKUPS).map(|_| rng.below(keys)).collect();
    let mut hash: HashMap<String, Arc<Route>> = HashMap::with_capacity(keys);
    let mut btree: BTreeMap<String, Arc<Route>> = BTreeMap::new();
    for name in &names {
        let route = table
            .lookup(name)?
            .with_context(|| format!("{name} is not in the table"))?;
        hash.insert(name.clone(), route.clone());
        btree.insert(name.clone(), route);
    }
    let overhead = timer_overhead();
    let rows = [
        (
            "RouteTable::lookup",
            measure(&order, &names, |k| {
                table.lookup(k).ok().flatten().map(|r| r.owner.epoch)
            }),
        ),
        (
            "peer: HashMap<String, Arc<Route>>::get",
            measure(&order, &names, |k| {
                hash.get(k).cloned().map(|r| r.owner.epoch)
            }),
        ),
        (
            "peer: BTreeMap<String, Arc<Route>>::get",
            measure(&order, &names, |k| {
                btree.get(k).cloned().map(|r| r.owner.epoch)
            }),
        ),
    ];
    println!();
    println!(
        "lookups: {LOOKUPS} of random keys, one thread, each timed with Instant (timer overhead p50 {overhead} ns, not subtracted); mean from an untimed loop"
    );
    println!(
        "  {:<42} {:>8} {:>8} {:>9}",
        "", "p50 ns", "p99 ns", "mean ns"
    );
    for (name, m) in &rows {
        println!("  {name:<42} {:>8} {:>8} {:>9.1}", m.p50, m.p99, m.mean);
    }
    let (table_m, hash_m) = (&rows[0].1, &rows[1].1);
    println!(
        "  ratio RouteTable / HashMap: p50 {:.2}, p99 {:.2}, mean {:.2}",
        table_m.p50 as f64 / hash_m.p50 as f64,
        table_m.p99 as f64 / hash_m.p99 as f64,
        table_m.mean / hash_m.mean
    );
    Ok(())
}

struct Measured {
    p50: u64,
    p99: u64,
    mean: f64,
}

/// Times `lookup` once per entry of `order`, then the whole sequence untimed for the mean.
fn measure<T>(order: &[usize], names: &[String], lookup: impl Fn(&str) -> Option<T>) -> Measured {
    // Warm the caches the same way for every contender.
    for &i in order.iter().take(100_000) {
        black_box(lookup(black_box(&names[i])));
    }
    let mut ns: Vec<u64> = Vec::with_capacity(order.len());
    for &i in order {
        let key = black_box(names[i].as_str());
        let started = Instant::now();
        let found = lookup(key);
        let took = started.elapsed();
        assert!(found.is_some(), "{key} not found");
        black_box(found);
        ns.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
    ns.sort_unstable();
    let started = Instant::now();
    for &i in order {
        black_box(lookup(black_box(&names[i])));
    }
    let mean = started.elapsed().as_nanos() as f64 / order.len() as f64;
    Measured {
        p50: ns[ns.len() / 2],
        p99: ns[ns.len() * 99 / 100],
        mean,
    }
}

/// The p50 of timing nothing with `Instant`.
fn timer_overhead() -> u64 {
    let mut ns: Vec<u64> = (0..100_000)
        .map(|_| {
            let started = Instant::now();
            u64::try_from(black_box(started).elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
        .collect();
    ns.sort_unstable();
    ns[ns.len() / 2]
}

/// Seeds `keys` route keys, each `app-N.bench.rhone.localhost` with its own deployment,
/// artifact, ready allocation, owner at epoch 1 and change-log row. Returns the keys.
async fn seed(db: &DatabaseConnection, keys: usize) -> Result<Vec<String>> {
    let t = fixtures::tenancy(db, "bench", "production").await?;
    let (cell, runner) = fixtures::local_cell(db).await?;
    let now = Utc::now();
    let mut names = Vec::with_capacity(keys);
    let txn = db.begin().await?;
    for start in (0..keys).step_by(CHUNK) {
        let range = start..(start + CHUNK).min(keys);
        let rows: Vec<(String, String, Uuid)> = range
            .map(|i| {
                let key = format!("app-{i}.bench.rhone.localhost");
                (key, fixtures::digest(i as u64), new_id())
            })
            .collect();
        artifact::Entity::insert_many(rows.iter().map(|(_, digest, _)| artifact::ActiveModel {
            digest: Set(digest.clone()),
            size_bytes: Set(1),
            manifest: Set(json!({})),
            store_uri: Set(format!("local://{digest}")),
            created_at: Set(now),
        }))
        .exec_without_returning(&txn)
        .await?;
        deployment::Entity::insert_many(rows.iter().map(|(_, digest, id)| {
            deployment::ActiveModel {
                id: Set(*id),
                workspace_id: Set(t.workspace.id),
                app_id: Set(t.app.id),
                environment_id: Set(t.environment.id),
                artifact_digest: Set(Some(digest.clone())),
                source: Set(json!({})),
                stage: Set("preview_ready".into()),
                operation_id: Set(None),
                promoted_from: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            }
        }))
        .exec_without_returning(&txn)
        .await?;
        allocation::Entity::insert_many(rows.iter().enumerate().map(|(j, (_, digest, id))| {
            let n = start + j;
            allocation::ActiveModel {
                id: Set(new_id()),
                deployment_id: Set(*id),
                artifact_digest: Set(digest.clone()),
                runner_id: Set(Some(runner)),
                region_id: Set(cell.region_id),
                cell_id: Set(cell.id),
                generation: Set(1),
                desired: Set("run".into()),
                stage: Set("ready".into()),
                address: Set(Some(format!(
                    "http://10.{}.{}.{}:8080",
                    n >> 16 & 0xff,
                    n >> 8 & 0xff,
                    n & 0xff
                ))),
                exit_status: Set(None),
                last_report_at: Set(Some(now)),
                created_at: Set(now),
                updated_at: Set(now),
                memory_mb: Set(512),
                cpu_millis: Set(1000),
                sealed_secrets: Set(None),
            }
        }))
        .exec_without_returning(&txn)
        .await?;
        route_owner::Entity::insert_many(rows.iter().map(|(key, digest, id)| {
            route_owner::ActiveModel {
                route_key: Set(key.clone()),
                environment_id: Set(t.environment.id),
                deployment_id: Set(*id),
                artifact_digest: Set(digest.clone()),
                region_id: Set(cell.region_id),
                cell_id: Set(cell.id),
                epoch: Set(1),
                operation_id: Set(None),
                instances: Set(1),
                updated_at: Set(now),
            }
        }))
        .exec_without_returning(&txn)
        .await?;
        route_change::Entity::insert_many(rows.iter().map(|(key, digest, id)| {
            route_change::ActiveModel {
                route_key: Set(key.clone()),
                epoch: Set(1),
                deployment_id: Set(*id),
                artifact_digest: Set(digest.clone()),
                operation_id: Set(None),
                created_at: Set(now),
                ..Default::default()
            }
        }))
        .exec_without_returning(&txn)
        .await?;
        names.extend(rows.into_iter().map(|(key, _, _)| key));
    }
    txn.commit().await?;
    Ok(names)
}

/// The resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

fn median(d: &mut [Duration]) -> Duration {
    d.sort_unstable();
    d.get(d.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A small deterministic generator, so every run looks the keys up in the same order.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
