//! The runner fleet in the control DB: runners an operator adds with a credential
//! ([`add_runner`], kept as its SHA-256, [`revoke_runner`]; the caller records those), that
//! register themselves ([`register_runner`]) and heartbeat ([`heartbeat`]), and that are
//! declared lost when unseen ([`mark_lost`]); those moves are audit rows written here
//! (`runner.ready`, `runner.lost`, `runner.refused`). Placement ([`place_allocation`])
//! picks a runner with room for an allocation and writes the allocation in the same
//! transaction, so two placements never count the same free memory twice.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rhone_core::{
    RunnerStatus, Secret, StateMachine,
    fleet::{Candidate, Need, choose},
    stage::AllocationStage,
};
use rhone_runner_protocol::{
    credentials::{
        CREDENTIAL_PREFIX, CREDENTIAL_RANDOM_LEN, matches_hash, token_hash, well_formed_credential,
    },
    fleet::Registration,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionSession, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use crate::{
    SchemaError,
    allocations::{NewAllocation, create_allocation, parse_subnet},
    begin_write,
    entity::{allocation, audit_log, cell, deployment, region, runner},
    new_id,
};

/// A fresh runner credential, shown to the operator once and kept only hashed.
pub fn new_credential() -> Secret {
    use rand::{Rng, distr::Alphanumeric};
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(CREDENTIAL_RANDOM_LEN)
        .map(char::from)
        .collect();
    Secret::new(format!("{CREDENTIAL_PREFIX}{random}"))
}

/// Writes an audit row about runner `name`.
pub async fn audit_runner<C: ConnectionTrait>(
    db: &C,
    actor: &str,
    action: &str,
    name: &str,
    detail: serde_json::Value,
) -> Result<(), SchemaError> {
    audit_log::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(None),
        actor: Set(actor.to_owned()),
        action: Set(action.to_owned()),
        target_type: Set("runner".to_owned()),
        target_id: Set(name.to_owned()),
        operation_id: Set(None),
        detail: Set(detail),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// The region and cell of those names, made if new.
pub async fn ensure_cell<C: ConnectionTrait>(
    db: &C,
    region_name: &str,
    cell_name: &str,
) -> Result<cell::Model, SchemaError> {
    let now = Utc::now();
    let region = match region::Entity::find()
        .filter(region::Column::Name.eq(region_name))
        .one(db)
        .await?
    {
        Some(r) => r,
        None => {
            region::ActiveModel {
                id: Set(new_id()),
                name: Set(region_name.to_owned()),
                created_at: Set(now),
            }
            .insert(db)
            .await?
        }
    };
    Ok(
        match cell::Entity::find()
            .filter(cell::Column::RegionId.eq(region.id))
            .filter(cell::Column::Name.eq(cell_name))
            .one(db)
            .await?
        {
            Some(c) => c,
            None => {
                cell::ActiveModel {
                    id: Set(new_id()),
                    region_id: Set(region.id),
                    name: Set(cell_name.to_owned()),
                    created_at: Set(now),
                }
                .insert(db)
                .await?
            }
        },
    )
}

async fn find_runner<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<Option<runner::Model>, SchemaError> {
    Ok(runner::Entity::find()
        .filter(runner::Column::Name.eq(name))
        .one(db)
        .await?)
}

/// Adds runner `name` to `region`/`cell` (made if new) as `registered` and returns it with
/// its credential, in clear this once. A name that is taken is a conflict. The caller's
/// transaction records who did it.
pub async fn add_runner<C: ConnectionTrait>(
    txn: &C,
    region_name: &str,
    cell_name: &str,
    name: &str,
) -> Result<(runner::Model, Secret), SchemaError> {
    if find_runner(txn, name).await?.is_some() {
        return Err(SchemaError::Conflict {
            what: format!("runner {name} exists (revoke it, or rotate its credential)"),
        });
    }
    let cell = ensure_cell(txn, region_name, cell_name).await?;
    let credential = new_credential();
    let now = Utc::now();
    let row = runner::ActiveModel {
        id: Set(new_id()),
        cell_id: Set(cell.id),
        name: Set(name.to_owned()),
        address: Set(String::new()),
        status: Set(RunnerStatus::Registered.as_str().to_owned()),
        last_seen_at: Set(None),
        subnet: Set(None),
        created_at: Set(now),
        credential_sha256: Set(Some(token_hash(credential.expose()))),
        revoked_at: Set(None),
        memory_mb: Set(0),
        cpu_millis: Set(0),
        slots: Set(0),
        agent_version: Set(None),
        status_changed_at: Set(Some(now)),
    }
    .insert(txn)
    .await?;
    Ok((row, credential))
}

/// A new credential for runner `name` (added if new, in `region`/`cell`); the old one
/// stops working. A revoked runner stays revoked. The caller's transaction records who did
/// it.
pub async fn rotate_credential<C: ConnectionTrait>(
    txn: &C,
    region_name: &str,
    cell_name: &str,
    name: &str,
) -> Result<(runner::Model, Secret), SchemaError> {
    let Some(row) = find_runner(txn, name).await? else {
        return add_runner(txn, region_name, cell_name, name).await;
    };
    if row.revoked_at.is_some() {
        return Err(SchemaError::Forbidden {
            what: format!("runner {name} is revoked; add it under another name"),
        });
    }
    let credential = new_credential();
    let mut active: runner::ActiveModel = row.into();
    active.credential_sha256 = Set(Some(token_hash(credential.expose())));
    let row = active.update(txn).await?;
    Ok((row, credential))
}

/// Revokes runner `name`'s credential: it is refused from now on and placement skips it.
/// Returns the runner and the status it had. The caller's transaction records who did it.
pub async fn revoke_runner<C: ConnectionTrait>(
    txn: &C,
    name: &str,
) -> Result<(runner::Model, String), SchemaError> {
    let row = find_runner(txn, name)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "runner",
            id: name.to_owned(),
        })?;
    let from = row.status.clone();
    if row.revoked_at.is_some() {
        return Ok((row, from));
    }
    let now = Utc::now();
    let mut active: runner::ActiveModel = row.into();
    active.revoked_at = Set(Some(now));
    active.status = Set(RunnerStatus::Revoked.as_str().to_owned());
    active.status_changed_at = Set(Some(now));
    Ok((active.update(txn).await?, from))
}

/// Why a runner's credential was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No runner of that name.
    Unknown,
    Revoked,
    WrongCredential,
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown runner",
            Refusal::Revoked => "revoked credential",
            Refusal::WrongCredential => "wrong credential",
        }
    }
}

/// The runner `name` if `presented` is its credential (compared by hash, in constant time).
/// A refusal of a runner that exists writes a `runner.refused` audit row.
pub async fn authenticate_runner<C: ConnectionTrait>(
    db: &C,
    name: &str,
    presented: &str,
) -> Result<Result<runner::Model, Refusal>, SchemaError> {
    let row = if name.len() <= 253 {
        find_runner(db, name).await?
    } else {
        None
    };
    let verdict = match row {
        None => Err(Refusal::Unknown),
        Some(r) if r.revoked_at.is_some() => Err(Refusal::Revoked),
        Some(r) => match &r.credential_sha256 {
            Some(hash) if well_formed_credential(presented) && matches_hash(presented, hash) => {
                Ok(r)
            }
            _ => Err(Refusal::WrongCredential),
        },
    };
    // Refusals are audited for runners that exist: a flood of made-up names writes nothing.
    if let Err(why @ (Refusal::Revoked | Refusal::WrongCredential)) = &verdict {
        let shown: String = name.chars().take(64).collect();
        audit_runner(
            db,
            &format!("runner:{shown}"),
            "runner.refused",
            &shown,
            json!({ "reason": why.as_str() }),
        )
        .await?;
    }
    Ok(verdict)
}

/// What a registration decided besides the runner's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub runner: runner::Model,
    /// Allocations the control plane had on this runner that it no longer runs (a restart):
    /// fenced, failed with the reason.
    pub fenced: Vec<Uuid>,
    /// Allocations the runner still runs that the control plane does not want there any
    /// more (fenced while it was lost, stopped, or unknown): the runner drains them.
    pub drain: Vec<Uuid>,
}

/// Takes a registration from an authenticated runner: it must name the region and cell it
/// was added to, and a subnet no other runner uses. The runner becomes `ready` with the
/// address, capacity, version and subnet it announced. The allocations it says it runs are
/// reconciled: the control plane's others on it are fenced, and those it runs but should
/// not are handed back to drain.
pub async fn register_runner<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    runner: &runner::Model,
    registration: &Registration,
) -> Result<Registered, SchemaError> {
    let txn = begin_write(db).await?;
    let row = runner::Entity::find_by_id(runner.id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "runner",
            id: runner.name.clone(),
        })?;
    let cell = cell::Entity::find_by_id(row.cell_id)
        .one(&txn)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "cell",
            id: row.cell_id.to_string(),
        })?;
    let region = region::Entity::find_by_id(cell.region_id)
        .one(&txn)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "region",
            id: cell.region_id.to_string(),
        })?;
    let actor = format!("runner:{}", row.name);
    if (registration.region.as_str(), registration.cell.as_str())
        != (region.name.as_str(), cell.name.as_str())
    {
        let what = format!(
            "runner {} was added to region {} cell {}, and registered as region {} cell {}",
            row.name, region.name, cell.name, registration.region, registration.cell
        );
        audit_runner(
            &txn,
            &actor,
            "runner.refused",
            &row.name,
            json!({ "reason": what }),
        )
        .await?;
        txn.commit().await?;
        return Err(SchemaError::Forbidden { what });
    }
    let Some((network, prefix)) = parse_subnet(&registration.subnet) else {
        return Err(SchemaError::Conflict {
            what: format!(
                "subnet {:?} is not a.b.c.d/p with p from 16 to 28",
                registration.subnet
            ),
        });
    };
    // Held until the commit, so two registrations never both take overlapping subnets.
    let others = runner::Entity::find()
        .filter(runner::Column::Id.ne(row.id))
        .filter(runner::Column::RevokedAt.is_null())
        .filter(runner::Column::Subnet.is_not_null())
        .lock_exclusive()
        .all(&txn)
        .await?;
    for other in others {
        let Some((o_net, o_prefix)) = other.subnet.as_deref().and_then(parse_subnet) else {
            continue;
        };
        let common = prefix.min(o_prefix);
        let mask = u32::MAX << (32 - common);
        if network & mask == o_net & mask {
            return Err(SchemaError::Conflict {
                what: format!(
                    "subnet {} overlaps runner {}'s {}",
                    registration.subnet,
                    other.name,
                    other.subnet.unwrap_or_default()
                ),
            });
        }
    }
    let capacity = registration.capacity;
    if capacity.memory_mb < 0 || capacity.cpu_millis < 0 || capacity.slots < 0 {
        return Err(SchemaError::Conflict {
            what: "capacity must not be negative".to_owned(),
        });
    }
    let from = row.status.clone();
    let now = crate::db_now(&txn).await?;
    let mut active: runner::ActiveModel = row.into();
    active.address = Set(registration.address.clone());
    active.subnet = Set(Some(registration.subnet.clone()));
    active.memory_mb = Set(capacity.memory_mb);
    active.cpu_millis = Set(capacity.cpu_millis);
    active.slots = Set(capacity.slots);
    active.agent_version = Set(Some(registration.agent_version.clone()));
    active.status = Set(RunnerStatus::Ready.as_str().to_owned());
    active.last_seen_at = Set(Some(now));
    if from != RunnerStatus::Ready.as_str() {
        active.status_changed_at = Set(Some(now));
    }
    let row = active.update(&txn).await?;
    audit_runner(
        &txn,
        &actor,
        "runner.ready",
        &row.name,
        json!({
            "from": from, "address": registration.address, "subnet": registration.subnet,
            "capacity": capacity, "agent_version": registration.agent_version,
            "running": registration.allocations.len(),
        }),
    )
    .await?;
    // Under the runner's lock: no placement on it lands between the move to ready and the
    // reconciliation of what it runs.
    let fenced = fence_in(
        &txn,
        row.id,
        &registration.allocations,
        &format!(
            "runner {} registered again without it (restarted)",
            row.name
        ),
        &actor,
    )
    .await?;
    let mut drain = Vec::new();
    for id in &registration.allocations {
        let wanted = allocation::Entity::find_by_id(*id)
            .one(&txn)
            .await?
            .is_some_and(|a| {
                a.runner_id == Some(row.id)
                    && a.desired == crate::allocations::Desired::Run.as_str()
            });
        if !wanted {
            drain.push(*id);
        }
    }
    txn.commit().await?;
    Ok(Registered {
        runner: row,
        fenced: fenced.into_iter().map(|a| a.id).collect(),
        drain,
    })
}

/// Fences the allocations placed on runner `runner_id` that are meant to run and have not
/// ended, except those in `keep`: each is told to stop (desired `stop` at the next
/// generation, so anything the runner still reports about it is stale and refused) and ends
/// `failed` with `reason` as its exit status, so the edge stops routing to it at once. One
/// `allocation.fenced` audit row each, by `actor`. Returns them as written.
pub async fn fence_allocations<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    runner_id: Uuid,
    keep: &[Uuid],
    reason: &str,
    actor: &str,
) -> Result<Vec<allocation::Model>, SchemaError> {
    let txn = begin_write(db).await?;
    let fenced = fence_in(&txn, runner_id, keep, reason, actor).await?;
    txn.commit().await?;
    Ok(fenced)
}

/// [`fence_allocations`] in the caller's write transaction.
pub async fn fence_in<C: ConnectionTrait>(
    txn: &C,
    runner_id: Uuid,
    keep: &[Uuid],
    reason: &str,
    actor: &str,
) -> Result<Vec<allocation::Model>, SchemaError> {
    let rows = allocation::Entity::find()
        .filter(allocation::Column::RunnerId.eq(runner_id))
        .filter(allocation::Column::Desired.eq(crate::allocations::Desired::Run.as_str()))
        .lock_exclusive()
        .all(txn)
        .await?;
    let mut fenced = Vec::new();
    for row in rows {
        if keep.contains(&row.id) || !holds_capacity(&row.stage) {
            continue;
        }
        let from: AllocationStage = row
            .stage
            .parse()
            .map_err(|e| SchemaError::IllegalTransition(rhone_core::StageError::from(e)))?;
        from.transition(AllocationStage::Failed)
            .map_err(|e| SchemaError::IllegalTransition(rhone_core::StageError::from(e)))?;
        let workspace_id = deployment::Entity::find_by_id(row.deployment_id)
            .one(txn)
            .await?
            .map(|d| d.workspace_id);
        let generation = row.generation + 1;
        let mut active: allocation::ActiveModel = row.clone().into();
        active.desired = Set(crate::allocations::Desired::Stop.as_str().to_owned());
        active.generation = Set(generation);
        active.stage = Set(AllocationStage::Failed.as_str().to_owned());
        active.address = Set(None);
        active.exit_status = Set(Some(reason.to_owned()));
        active.updated_at = Set(Utc::now());
        let written = active.update(txn).await?;
        audit_log::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(workspace_id),
            actor: Set(actor.to_owned()),
            action: Set("allocation.fenced".to_owned()),
            target_type: Set("allocation".to_owned()),
            target_id: Set(row.id.to_string()),
            operation_id: Set(None),
            detail: Set(json!({
                "reason": reason, "runner_id": runner_id, "from": row.stage,
                "generation": generation,
            })),
            created_at: Set(Utc::now()),
        }
        .insert(txn)
        .await?;
        fenced.push(written);
    }
    Ok(fenced)
}

/// A heartbeat of runner `id`: a ready runner is seen now. Returns its status (a lost runner
/// registers again).
pub async fn heartbeat<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<RunnerStatus, SchemaError> {
    let seen = runner::Entity::update_many()
        .col_expr(
            runner::Column::LastSeenAt,
            crate::db_now_expr(db.get_database_backend()),
        )
        .filter(runner::Column::Id.eq(id))
        .filter(runner::Column::Status.eq(RunnerStatus::Ready.as_str()))
        .exec(db)
        .await?;
    if seen.rows_affected == 1 {
        return Ok(RunnerStatus::Ready);
    }
    let row = runner::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "runner",
            id: id.to_string(),
        })?;
    status_of(&row)
}

/// A runner row's status.
pub fn status_of(row: &runner::Model) -> Result<RunnerStatus, SchemaError> {
    row.status.parse().map_err(|e| SchemaError::Conflict {
        what: format!("runner {}: {e}", row.name),
    })
}

/// Declares lost every ready runner last seen before `cutoff` (each a compare-and-set on
/// its last-seen time, so a heartbeat that lands first wins), fences its allocations
/// ([`fence_allocations`]) and returns the runners. When more than one runner is watched
/// and all of them are silent, none is declared lost: that is the control plane's outage. Only runners
/// with a credential heartbeat; one without (written by a fixture) is never judged.
pub async fn mark_lost<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    cutoff: DateTime<Utc>,
    actor: &str,
) -> Result<Vec<runner::Model>, SchemaError> {
    let stale = runner::Entity::find()
        .filter(runner::Column::Status.eq(RunnerStatus::Ready.as_str()))
        .filter(runner::Column::CredentialSha256.is_not_null())
        .filter(runner::Column::LastSeenAt.lt(cutoff))
        .all(db)
        .await?;
    if stale.len() > 1 {
        let watched = runner::Entity::find()
            .filter(runner::Column::Status.eq(RunnerStatus::Ready.as_str()))
            .filter(runner::Column::CredentialSha256.is_not_null())
            .count(db)
            .await?;
        if stale.len() as u64 == watched {
            // Every runner fell silent at once: the likelier fault is the path from them to
            // the control DB (the API, the DB, the network), not all of them; nothing is
            // declared lost until one of them is heard again.
            tracing::warn!(
                runners = watched,
                "no runner heartbeated within the lost-after time; suspecting the control plane and declaring none lost"
            );
            return Ok(Vec::new());
        }
    }
    let mut lost = Vec::new();
    for row in stale {
        // The switch, its audit row and the fence commit together: a failure leaves the
        // runner ready for the next sweep, and a registration waits for the lock.
        let txn = begin_write(db).await?;
        let now = Utc::now();
        let moved = runner::Entity::update_many()
            .col_expr(
                runner::Column::Status,
                sea_orm::sea_query::Expr::value(RunnerStatus::Lost.as_str()),
            )
            .col_expr(
                runner::Column::StatusChangedAt,
                sea_orm::sea_query::Expr::value(now),
            )
            .filter(runner::Column::Id.eq(row.id))
            .filter(runner::Column::Status.eq(RunnerStatus::Ready.as_str()))
            .filter(runner::Column::LastSeenAt.lt(cutoff))
            .exec(&txn)
            .await?;
        if moved.rows_affected != 1 {
            continue;
        }
        audit_runner(
            &txn,
            actor,
            "runner.lost",
            &row.name,
            json!({ "last_seen_at": row.last_seen_at, "cutoff": cutoff }),
        )
        .await?;
        let seen = row
            .last_seen_at
            .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
        fence_in(
            &txn,
            row.id,
            &[],
            &format!("runner {} lost (last seen {seen})", row.name),
            actor,
        )
        .await?;
        txn.commit().await?;
        lost.push(runner::Model {
            status: RunnerStatus::Lost.as_str().to_owned(),
            status_changed_at: Some(now),
            ..row
        });
    }
    Ok(lost)
}

/// Stages of an allocation that still holds its runner's capacity.
fn holds_capacity(stage: &str) -> bool {
    stage
        .parse::<AllocationStage>()
        .is_ok_and(|s| !s.is_terminal())
}

/// What a runner has placed on it: allocations meant to run that have not ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_mb: i64,
    pub cpu_millis: i64,
    pub allocations: i64,
}

/// Every runner with its cell, region and usage, by name.
pub async fn runners_with_usage<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(runner::Model, cell::Model, region::Model, Usage)>, SchemaError> {
    let runners = runner::Entity::find()
        .order_by_asc(runner::Column::Name)
        .all(db)
        .await?;
    let cells: HashMap<Uuid, cell::Model> = cell::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let regions: HashMap<Uuid, region::Model> = region::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let usage = usage_by_runner(db, None).await?;
    Ok(runners
        .into_iter()
        .filter_map(|r| {
            let cell = cells.get(&r.cell_id)?.clone();
            let region = regions.get(&cell.region_id)?.clone();
            let used = usage.get(&r.id).copied().unwrap_or_default();
            Some((r, cell, region, used))
        })
        .collect())
}

async fn usage_by_runner<C: ConnectionTrait>(
    db: &C,
    runners: Option<&[Uuid]>,
) -> Result<HashMap<Uuid, Usage>, SchemaError> {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait as _, Func};
    let sum = |column: allocation::Column| {
        Expr::expr(Func::sum(Expr::col(column))).cast_as(Alias::new("BIGINT"))
    };
    // Summed by the DB: one row per runner, however many allocations there are.
    let mut query = holding_capacity(allocation::Entity::find())
        .select_only()
        .column(allocation::Column::RunnerId)
        .column_as(sum(allocation::Column::MemoryMb), "memory_mb")
        .column_as(sum(allocation::Column::CpuMillis), "cpu_millis")
        .column_as(allocation::Column::Id.count(), "allocations")
        .filter(allocation::Column::RunnerId.is_not_null())
        .group_by(allocation::Column::RunnerId);
    if let Some(ids) = runners {
        query = query.filter(allocation::Column::RunnerId.is_in(ids.iter().copied()));
    }
    // Runner, memory, CPU, allocations.
    type Row = (Option<Uuid>, Option<i64>, Option<i64>, i64);
    let rows: Vec<Row> = query.into_tuple().all(db).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(runner, memory_mb, cpu_millis, allocations)| {
            Some((
                runner?,
                Usage {
                    memory_mb: memory_mb.unwrap_or(0),
                    cpu_millis: cpu_millis.unwrap_or(0),
                    allocations,
                },
            ))
        })
        .collect())
}

/// Only the allocations that hold their runner's capacity: meant to run and not ended.
fn holding_capacity(
    query: sea_orm::Select<allocation::Entity>,
) -> sea_orm::Select<allocation::Entity> {
    let ended: Vec<&str> = AllocationStage::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str())
        .collect();
    query
        .filter(allocation::Column::Desired.eq(crate::allocations::Desired::Run.as_str()))
        .filter(allocation::Column::Stage.is_not_in(ended))
}

/// A new allocation to place: of `deployment_id`'s artifact, for `environment_id`, in
/// `region_id` (any region when `None`), needing `need`.
#[derive(Debug, Clone)]
pub struct Placement {
    pub allocation_id: Uuid,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub environment_id: Uuid,
    pub region_id: Option<Uuid>,
    pub need: Need,
    /// Runners not to use (the one an allocation being replaced was on).
    pub avoid: Vec<Uuid>,
}

/// Places a new allocation on the runner [`choose`] picks among the region's runners and
/// writes it (`planned`, on that runner), in one transaction that holds the region's runner
/// rows. No room anywhere is [`SchemaError::NoCapacity`], naming every runner's shortfall.
pub async fn place_allocation<C: ConnectionTrait + TransactionTrait>(
    db: &C,
    placement: &Placement,
) -> Result<(allocation::Model, runner::Model), SchemaError> {
    let txn = begin_write(db).await?;
    let placed = place_allocation_in(&txn, placement).await?;
    txn.commit().await?;
    Ok(placed)
}

/// [`place_allocation`] in the caller's write transaction (which commits).
pub async fn place_allocation_in<C: ConnectionTrait>(
    txn: &C,
    placement: &Placement,
) -> Result<(allocation::Model, runner::Model), SchemaError> {
    let region = match placement.region_id {
        Some(id) => Some(
            region::Entity::find_by_id(id)
                .one(txn)
                .await?
                .ok_or_else(|| SchemaError::NotFound {
                    what: "region",
                    id: id.to_string(),
                })?,
        ),
        None => None,
    };
    let cells: HashMap<Uuid, cell::Model> = cell::Entity::find()
        .all(txn)
        .await?
        .into_iter()
        .filter(|c| region.as_ref().is_none_or(|r| c.region_id == r.id))
        .map(|c| (c.id, c))
        .collect();
    let runners: Vec<runner::Model> = runner::Entity::find()
        .filter(runner::Column::CellId.is_in(cells.keys().copied()))
        .filter(runner::Column::RevokedAt.is_null())
        .filter(runner::Column::Id.is_not_in(placement.avoid.iter().copied()))
        .order_by_asc(runner::Column::Name)
        .lock_exclusive()
        .all(txn)
        .await?;
    let ids: Vec<Uuid> = runners.iter().map(|r| r.id).collect();
    let usage = usage_by_runner(txn, Some(&ids)).await?;
    let deployments: HashSet<Uuid> = deployment::Entity::find()
        .filter(deployment::Column::EnvironmentId.eq(placement.environment_id))
        .select_only()
        .column(deployment::Column::Id)
        .into_tuple::<Uuid>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    let mut same_env: HashMap<Uuid, u32> = HashMap::new();
    if !ids.is_empty() && !deployments.is_empty() {
        let rows: Vec<(Option<Uuid>, i64)> = holding_capacity(allocation::Entity::find())
            .select_only()
            .column(allocation::Column::RunnerId)
            .column_as(allocation::Column::Id.count(), "allocations")
            .filter(allocation::Column::RunnerId.is_in(ids.iter().copied()))
            .filter(allocation::Column::DeploymentId.is_in(deployments.iter().copied()))
            .group_by(allocation::Column::RunnerId)
            .into_tuple()
            .all(txn)
            .await?;
        for (runner, count) in rows {
            if let Some(r) = runner {
                same_env.insert(r, u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
    }
    let mut same_cell: HashMap<Uuid, u32> = HashMap::new();
    for r in &runners {
        *same_cell.entry(r.cell_id).or_default() += same_env.get(&r.id).copied().unwrap_or(0);
    }
    let candidates: Vec<Candidate> = runners
        .iter()
        .map(|r| {
            let used = usage.get(&r.id).copied().unwrap_or_default();
            Candidate {
                runner_id: r.id,
                runner: r.name.clone(),
                cell_id: r.cell_id,
                cell: cells
                    .get(&r.cell_id)
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
                status: r.status.parse().unwrap_or(RunnerStatus::Lost),
                free_memory_mb: r.memory_mb - used.memory_mb,
                free_cpu_millis: r.cpu_millis - used.cpu_millis,
                free_slots: i64::from(r.slots) - used.allocations,
                same_environment: same_env.get(&r.id).copied().unwrap_or(0),
                same_environment_in_cell: same_cell.get(&r.cell_id).copied().unwrap_or(0),
            }
        })
        .collect();
    let region_name = region.as_ref().map(|r| r.name.as_str());
    let chosen =
        choose(&candidates, placement.need, region_name).map_err(SchemaError::NoCapacity)?;
    let runner = runners[chosen].clone();
    let cell = &cells[&runner.cell_id];
    let row = create_allocation(
        txn,
        NewAllocation {
            id: placement.allocation_id,
            deployment_id: placement.deployment_id,
            artifact_digest: placement.artifact_digest.clone(),
            runner_id: Some(runner.id),
            region_id: cell.region_id,
            cell_id: cell.id,
            memory_mb: placement.need.memory_mb,
            cpu_millis: placement.need.cpu_millis,
        },
    )
    .await?;
    Ok((row, runner))
}
