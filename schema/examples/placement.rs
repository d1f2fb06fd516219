//! Placement at fleet scale (`bench/placement.sh` runs it): RUNNERS simulated runners
//! (default 100: runner rows, ready, 8 GiB, 8 cores and 64 slots each, in 10 cells of one
//! region) and ALLOCATIONS allocations to place (default 1,000: 100 environments of 10
//! instances, 512 MiB and 250 millicores each), placed one by one with
//! `fleet::place_allocation` (one write transaction each: the region's runners read under
//! a lock, their usage, the environment's spread, `core::fleet::choose`, the insert). It
//! prints p50/p99/mean/total per placement against two peers measured in the same run:
//!
//! - the floor of the DB: the same allocation rows written one per write transaction with
//!   no choice (`allocations::create_allocation` on a fixed runner), in a database seeded
//!   the same way;
//! - the choice alone: `choose` over the same number of in-memory candidates.
//!
//! and checks what placement made: every environment spread over distinct cells, no runner
//! over its capacity. SQLite always; PostgreSQL too when `RHONE_TEST_POSTGRES_URL` names a
//! server (a database is made for the run and dropped).
//!
//! `cargo run --release -p rhone-schema --example placement -- [RUNNERS] [ALLOCATIONS]`

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rhone_core::RunnerStatus;
use rhone_core::fleet::{Candidate, Need, choose};
use rhone_schema::allocations::{NewAllocation, create_allocation};
use rhone_schema::entity::{allocation, runner};
use rhone_schema::fleet::{Placement, place_allocation};
use rhone_schema::{begin_write, fixtures, new_id, topology};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait};
use uuid::Uuid;

const CELLS: usize = 10;
const INSTANCES: usize = 10;
const NEED: Need = Need {
    memory_mb: 512,
    cpu_millis: 250,
};

/// What a seeded database holds: the region, the runners, and per environment its id, its
/// deployment and the artifact's digest.
struct Seeded {
    region: Uuid,
    runners: Vec<runner::Model>,
    environments: Vec<(Uuid, Uuid, String)>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let runners: usize = args
        .next()
        .map_or(Ok(100), |n| n.parse())
        .context("RUNNERS")?;
    let allocations: usize = args
        .next()
        .map_or(Ok(1000), |n| n.parse())
        .context("ALLOCATIONS")?;
    ensure!(
        runners >= CELLS && allocations >= INSTANCES,
        "at least {CELLS} runners and {INSTANCES} allocations"
    );
    println!(
        "placement benchmark: {allocations} allocations ({} environments of {INSTANCES} instances, {} MiB / {} millicores each) on {runners} simulated runners in {CELLS} cells",
        allocations / INSTANCES,
        NEED.memory_mb,
        NEED.cpu_millis
    );
    choice_alone(runners, allocations);

    let dir = tempfile::tempdir()?;
    let sqlite = |name: &str| {
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join(format!("{name}.db")).display()
        )
    };
    run(
        "SQLite",
        &sqlite("placed"),
        &sqlite("floor"),
        runners,
        allocations,
    )
    .await?;
    if std::env::var("RHONE_TEST_POSTGRES_URL").is_ok() {
        let tag = std::process::id();
        let placed = rhone_testkit::postgres::database(&format!("placement_{tag}")).await?;
        let floor = rhone_testkit::postgres::database(&format!("placement_floor_{tag}")).await?;
        run("PostgreSQL", &placed, &floor, runners, allocations).await?;
    } else {
        println!("PostgreSQL: skipped (set RHONE_TEST_POSTGRES_URL to a server to measure it)");
    }
    Ok(())
}

/// Placement and its floor on one backend.
async fn run(
    backend: &str,
    placed_url: &str,
    floor_url: &str,
    runners: usize,
    allocations: usize,
) -> Result<()> {
    let db = open(placed_url).await?;
    let seeded = seed(&db, runners, allocations / INSTANCES).await?;
    let mut times = Vec::with_capacity(allocations);
    let started = Instant::now();
    for (environment, deployment, digest) in &seeded.environments {
        for _ in 0..INSTANCES {
            let placement = Placement {
                allocation_id: new_id(),
                deployment_id: *deployment,
                artifact_digest: digest.clone(),
                environment_id: *environment,
                region_id: Some(seeded.region),
                need: NEED,
                avoid: Vec::new(),
            };
            let t = Instant::now();
            place_allocation(&db, &placement).await?;
            times.push(t.elapsed());
        }
    }
    let placed_total = started.elapsed();
    check(&db, &seeded).await?;

    let floor_db = open(floor_url).await?;
    let floor_seeded = seed(&floor_db, runners, allocations / INSTANCES).await?;
    let fixed = &floor_seeded.runners[0];
    let mut floor = Vec::with_capacity(allocations);
    for (_, deployment, digest) in &floor_seeded.environments {
        for _ in 0..INSTANCES {
            let t = Instant::now();
            let txn = begin_write(&floor_db).await?;
            create_allocation(
                &txn,
                NewAllocation {
                    id: new_id(),
                    deployment_id: *deployment,
                    artifact_digest: digest.clone(),
                    runner_id: Some(fixed.id),
                    region_id: floor_seeded.region,
                    cell_id: fixed.cell_id,
                    memory_mb: NEED.memory_mb,
                    cpu_millis: NEED.cpu_millis,
                },
            )
            .await?;
            txn.commit().await?;
            floor.push(t.elapsed());
        }
    }
    let (p, f) = (Stats::of(&times), Stats::of(&floor));
    println!("{backend}:");
    println!(
        "  place_allocation      p50 {:>8.3} ms  p99 {:>8.3} ms  mean {:>8.3} ms  total {:>7.2} s  (first 100: mean {:.3} ms, last 100: mean {:.3} ms)",
        p.p50,
        p.p99,
        p.mean,
        placed_total.as_secs_f64(),
        Stats::of(&times[..100]).mean,
        Stats::of(&times[times.len() - 100..]).mean
    );
    println!(
        "  floor (bare insert)   p50 {:>8.3} ms  p99 {:>8.3} ms  mean {:>8.3} ms  total {:>7.2} s",
        f.p50,
        f.p99,
        f.mean,
        floor.iter().sum::<Duration>().as_secs_f64()
    );
    println!(
        "  placement / floor: {:.1}x at p50, {:.1}x mean; {:.0} placements/s",
        p.p50 / f.p50,
        p.mean / f.mean,
        allocations as f64 / placed_total.as_secs_f64()
    );
    Ok(())
}

async fn open(url: &str) -> Result<DatabaseConnection> {
    let db = rhone_schema::connect(url).await?;
    rhone_schema::migrate(&db).await?;
    Ok(db)
}

/// The region's runners (8 GiB, 8 cores, 64 slots each) and `environments` environments,
/// each with a deployment of its own artifact.
async fn seed(db: &DatabaseConnection, runners: usize, environments: usize) -> Result<Seeded> {
    let mut rows = Vec::with_capacity(runners);
    for i in 0..runners {
        let r = topology::ensure_runner(
            db,
            "bench",
            &format!("cell-{}", i % CELLS),
            &format!("runner-{i:03}"),
            &format!("http://10.0.{}.{}:8082", i / 250, i % 250 + 1),
        )
        .await?;
        let mut r: runner::ActiveModel = r.into();
        r.memory_mb = Set(8192);
        r.cpu_millis = Set(8000);
        r.slots = Set(64);
        rows.push(r.update(db).await?);
    }
    let region = rhone_schema::entity::cell::Entity::find_by_id(rows[0].cell_id)
        .one(db)
        .await?
        .context("cell")?
        .region_id;
    let mut envs = Vec::with_capacity(environments);
    for e in 0..environments {
        let t = fixtures::tenancy(db, &format!("bench-{e}"), "production").await?;
        let digest = fixtures::digest(e as u64);
        fixtures::artifact(db, &digest).await?;
        let d = fixtures::deployment(db, &t, &digest, "promoted").await?;
        envs.push((t.environment.id, d.id, digest));
    }
    Ok(Seeded {
        region,
        runners: rows,
        environments: envs,
    })
}

/// Every environment on as many cells as it has instances (up to the cells there are); no
/// runner over its memory, CPU or slots.
async fn check(db: &DatabaseConnection, seeded: &Seeded) -> Result<()> {
    let rows = allocation::Entity::find().all(db).await?;
    let by_deployment: HashMap<Uuid, Uuid> = seeded
        .environments
        .iter()
        .map(|(e, d, _)| (*d, *e))
        .collect();
    let mut cells: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    let mut used: HashMap<Uuid, (i64, i64, i64)> = HashMap::new();
    for row in &rows {
        let env = by_deployment[&row.deployment_id];
        cells.entry(env).or_default().insert(row.cell_id);
        let u = used.entry(row.runner_id.context("placed")?).or_default();
        *u = (u.0 + row.memory_mb, u.1 + row.cpu_millis, u.2 + 1);
    }
    for (env, c) in &cells {
        ensure!(
            c.len() == INSTANCES.min(CELLS),
            "environment {env} is on {} cells",
            c.len()
        );
    }
    for r in &seeded.runners {
        let u = used.get(&r.id).copied().unwrap_or_default();
        ensure!(
            u.0 <= r.memory_mb && u.1 <= r.cpu_millis && u.2 <= i64::from(r.slots),
            "runner {} over capacity: {u:?}",
            r.name
        );
    }
    let counts: Vec<i64> = seeded
        .runners
        .iter()
        .map(|r| used.get(&r.id).map_or(0, |u| u.2))
        .collect();
    println!(
        "  placed {} allocations: each environment on {} distinct cells; per runner {} to {} allocations",
        rows.len(),
        INSTANCES.min(CELLS),
        counts.iter().min().copied().unwrap_or(0),
        counts.iter().max().copied().unwrap_or(0)
    );
    Ok(())
}

/// `choose` alone over `runners` in-memory candidates, `allocations` times, with the
/// candidates' usage updated after each choice as the DB would have it.
fn choice_alone(runners: usize, allocations: usize) {
    let cells: Vec<Uuid> = (0..CELLS).map(|_| new_id()).collect();
    let mut candidates: Vec<Candidate> = (0..runners)
        .map(|i| Candidate {
            runner_id: new_id(),
            runner: format!("runner-{i:03}"),
            cell_id: cells[i % CELLS],
            cell: format!("cell-{}", i % CELLS),
            status: RunnerStatus::Ready,
            free_memory_mb: 8192,
            free_cpu_millis: 8000,
            free_slots: 64,
            same_environment: 0,
            same_environment_in_cell: 0,
        })
        .collect();
    let started = Instant::now();
    for n in 0..allocations {
        if n % INSTANCES == 0 {
            for c in &mut candidates {
                c.same_environment = 0;
                c.same_environment_in_cell = 0;
            }
        }
        let Ok(i) = choose(black_box(&candidates), NEED, Some("bench")) else {
            println!("choose: no room at allocation {n}");
            return;
        };
        let cell = candidates[i].cell_id;
        let c = &mut candidates[i];
        c.free_memory_mb -= NEED.memory_mb;
        c.free_cpu_millis -= NEED.cpu_millis;
        c.free_slots -= 1;
        c.same_environment += 1;
        for c in candidates.iter_mut().filter(|c| c.cell_id == cell) {
            c.same_environment_in_cell += 1;
        }
    }
    let per = started.elapsed().as_secs_f64() * 1e3 / allocations as f64;
    println!("choose alone (in memory, {runners} candidates): mean {per:.4} ms per allocation");
}

/// Milliseconds: p50, p99, mean.
struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

impl Stats {
    fn of(times: &[Duration]) -> Stats {
        let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |p: usize| ms[((p * ms.len()).div_ceil(100)).max(1) - 1];
        Stats {
            p50: at(50),
            p99: at(99),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }
}
