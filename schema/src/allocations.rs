//! Allocation rows: desired state written by the control plane, observed state reported by
//! runners and fenced by generation. A report of an older generation than the row's is
//! rejected, and the stage moves only as the core Allocation machine allows.
//!
//! The generation is the control plane's: [`create_allocation`] starts it at 1 and
//! [`set_desired`] bumps it whenever the desired state changes, so a runner still acting on
//! the previous command reports an older generation and [`apply_report`] turns it away.

use chrono::Utc;
use rhone_core::{StageError, StateMachine, stage::AllocationStage};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait, QuerySelect,
    TransactionSession, TransactionTrait,
};
use uuid::Uuid;

use crate::entity::{allocation, audit_log, deployment, runner};
use crate::{SchemaError, begin_write};

/// The desired state of an allocation (`allocations.desired`, stored as
/// [`Desired::as_str`]): the runner protocol's, so the row and the command say the same.
pub use rhone_runner_protocol::Desired;

/// A new allocation of an artifact, placed in a region and cell (and on a runner once
/// scheduled).
#[derive(Debug, Clone)]
pub struct NewAllocation {
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub runner_id: Option<Uuid>,
    pub region_id: Uuid,
    pub cell_id: Uuid,
    /// What it takes of its runner's capacity: the artifact's `[run]` memory and CPU.
    pub memory_mb: i64,
    pub cpu_millis: i64,
}

/// What a runner says about one allocation, as `POST /internal/runner/reports` receives it:
/// the runner protocol's [`StageReport`](rhone_runner_protocol::StageReport).
pub use rhone_runner_protocol::StageReport as RunnerReport;

/// The runner a report comes from: a report is taken only for an allocation placed on it,
/// and only with an address inside its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSource {
    pub runner_id: Uuid,
    pub runner_name: String,
    /// `a.b.c.d/p`; a runner with none recorded may report no address.
    pub subnet: Option<String>,
}

impl ReportSource {
    pub fn of(runner: &runner::Model) -> Self {
        ReportSource {
            runner_id: runner.id,
            runner_name: runner.name.clone(),
            subnet: runner.subnet.clone(),
        }
    }
}

/// `a.b.c.d/p` (p from 16 to 28, host bits clear) as the network and its prefix.
pub fn parse_subnet(text: &str) -> Option<(u32, u8)> {
    let subnet: rhone_core::fleet::Subnet = text.parse().ok()?;
    Some((u32::from(subnet.network), subnet.prefix))
}

/// Whether `address` (`http://a.b.c.d:port`) is an allocation's address inside `subnet`:
/// not its network, its first address (the runner host's) or its broadcast address.
pub fn address_in_subnet(address: &str, subnet: &str) -> bool {
    let Some((network, prefix)) = parse_subnet(subnet) else {
        return false;
    };
    let Some(rest) = address.strip_prefix("http://") else {
        return false;
    };
    let Some((host, port)) = rest.split_once(':') else {
        return false;
    };
    let (Ok(ip), Ok(port)) = (host.parse::<std::net::Ipv4Addr>(), port.parse::<u16>()) else {
        return false;
    };
    let (ip, size) = (u32::from(ip), 1u32 << (32 - prefix));
    port != 0 && ip > network + 1 && ip < network + size - 1
}

/// Why a report from `source` is refused for `row`, if it is.
fn refusal(
    source: &ReportSource,
    row: &allocation::Model,
    report: &RunnerReport,
) -> Option<String> {
    if row.runner_id != Some(source.runner_id) {
        return Some(format!(
            "runner {} reported on allocation {}, which is not placed on it",
            source.runner_name, row.id
        ));
    }
    let address = report.address.as_deref()?;
    match &source.subnet {
        None => Some(format!(
            "runner {} reported address {address:?} but has no recorded subnet",
            source.runner_name
        )),
        Some(subnet) if !address_in_subnet(address, subnet) => Some(format!(
            "runner {} reported address {address:?}, outside its subnet {subnet}",
            source.runner_name
        )),
        Some(_) => None,
    }
}

/// An audit row about a report of `source` on `row` that was not applied.
async fn audit_report<C: ConnectionTrait>(
    txn: &C,
    source: &ReportSource,
    row: &allocation::Model,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), SchemaError> {
    let workspace_id = deployment::Entity::find_by_id(row.deployment_id)
        .one(txn)
        .await?
        .map(|d| d.workspace_id);
    audit_log::ActiveModel {
        id: Set(crate::new_id()),
        workspace_id: Set(workspace_id),
        actor: Set(format!("runner:{}", source.runner_name)),
        action: Set(action.to_owned()),
        target_type: Set("allocation".to_owned()),
        target_id: Set(row.id.to_string()),
        operation_id: Set(None),
        detail: Set(detail),
        created_at: Set(Utc::now()),
    }
    .insert(txn)
    .await?;
    Ok(())
}

/// What [`apply_report`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The row took the report; it is returned as written.
    Applied(allocation::Model),
    /// The report repeats the row's stage at the row's generation: nothing was written.
    Unchanged(allocation::Model),
}

impl ReportOutcome {
    pub fn allocation(&self) -> &allocation::Model {
        match self {
            Self::Applied(m) | Self::Unchanged(m) => m,
        }
    }
}

/// Inserts an allocation at generation 1, desired `run`, stage `planned`.
#[tracing::instrument(skip_all, fields(allocation_id = %new.id))]
pub async fn create_allocation<C: ConnectionTrait>(
    db: &C,
    new: NewAllocation,
) -> Result<allocation::Model, SchemaError> {
    let now = Utc::now();
    Ok(allocation::ActiveModel {
        id: Set(new.id),
        deployment_id: Set(new.deployment_id),
        artifact_digest: Set(new.artifact_digest),
        runner_id: Set(new.runner_id),
        region_id: Set(new.region_id),
        cell_id: Set(new.cell_id),
        generation: Set(1),
        desired: Set(Desired::Run.as_str().to_owned()),
        stage: Set(AllocationStage::INITIAL.as_str().to_owned()),
        address: Set(None),
        exit_status: Set(None),
        last_report_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        memory_mb: Set(new.memory_mb),
        cpu_millis: Set(new.cpu_millis),
        sealed_secrets: Set(None),
    }
    .insert(db)
    .await?)
}

/// Sets the desired state and, when it changes, bumps the generation: the runner gets the
/// new command with the new generation, and reports about the old one become stale.
/// Setting the desired state the row already has writes nothing.
#[tracing::instrument(skip(db), fields(allocation_id = %id))]
pub async fn set_desired<C>(
    db: &C,
    id: Uuid,
    desired: Desired,
) -> Result<allocation::Model, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = begin_write(db).await?;
    let row = locked(&txn, id).await?;
    let row = set_desired_in(&txn, row, desired).await?;
    txn.commit().await?;
    Ok(row)
}

/// [`set_desired`] on a row the caller's transaction already holds (under the route lock,
/// say): a new generation with `desired`, or the row as it is when it already says so.
pub async fn set_desired_in<C: ConnectionTrait>(
    txn: &C,
    row: allocation::Model,
    desired: Desired,
) -> Result<allocation::Model, sea_orm::DbErr> {
    if row.desired == desired.as_str() {
        return Ok(row);
    }
    let generation = row.generation + 1;
    let mut active: allocation::ActiveModel = row.into();
    active.desired = Set(desired.as_str().to_owned());
    active.generation = Set(generation);
    active.updated_at = Set(Utc::now());
    active.update(txn).await
}

/// Applies a runner's report to its allocation, in one transaction holding the row:
///
/// - a report whose generation is lower than the row's is a [`SchemaError::Conflict`]
///   ("stale report from generation N, current is M"), leaves the allocation as it is and
///   writes one `allocation.report_rejected` row to the audit log;
/// - the row's stage repeated at the row's generation is [`ReportOutcome::Unchanged`] (a
///   retried report); repeated at a newer generation, only the generation moves;
/// - any other stage must be a legal move of the core Allocation machine from the row's
///   stage, else [`SchemaError::IllegalTransition`] and nothing is written;
/// - the row takes the stage, the address (while `ready`, cleared otherwise), the exit
///   status, the report time, and the report's generation when it is newer (a runner may
///   report a generation whose row write raced the report; the row keeps the highest it has
///   seen so every later report is fenced against it).
#[tracing::instrument(
    skip_all,
    fields(allocation_id = %report.allocation_id, generation = report.generation, stage = %report.stage)
)]
pub async fn apply_report<C>(
    db: &C,
    source: &ReportSource,
    report: &RunnerReport,
) -> Result<ReportOutcome, SchemaError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = begin_write(db).await?;
    let row = locked(&txn, report.allocation_id).await?;
    if let Some(what) = refusal(source, &row, report) {
        let detail = serde_json::json!({
            "reason": what,
            "runner": source.runner_name,
            "placed_on": row.runner_id,
            "address": report.address,
            "reported_stage": report.stage.as_str(),
        });
        audit_report(&txn, source, &row, "allocation.report_refused", detail).await?;
        txn.commit().await?;
        tracing::warn!(%what, "runner report refused");
        return Err(SchemaError::Forbidden { what });
    }
    if report.generation < row.generation {
        let what = format!(
            "stale report from generation {}, current is {}",
            report.generation, row.generation
        );
        // A late report of a superseded attempt is refused, and on-call can see it was.
        let detail = serde_json::json!({
            "reason": what,
            "report_generation": report.generation,
            "current_generation": row.generation,
            "reported_stage": report.stage.as_str(),
            "current_stage": row.stage,
        });
        audit_report(&txn, source, &row, "allocation.report_rejected", detail).await?;
        txn.commit().await?;
        return Err(SchemaError::Conflict { what });
    }
    let current: AllocationStage = row.stage.parse().map_err(StageError::from)?;
    let now = Utc::now();
    if current == report.stage {
        if report.generation == row.generation {
            txn.rollback().await?;
            return Ok(ReportOutcome::Unchanged(row));
        }
        let mut active: allocation::ActiveModel = row.into();
        active.generation = Set(report.generation);
        active.last_report_at = Set(Some(now));
        active.updated_at = Set(now);
        let row = active.update(&txn).await?;
        txn.commit().await?;
        return Ok(ReportOutcome::Applied(row));
    }
    current.transition(report.stage).map_err(StageError::from)?;
    let generation = row.generation.max(report.generation);
    let mut active: allocation::ActiveModel = row.into();
    active.stage = Set(report.stage.as_str().to_owned());
    active.generation = Set(generation);
    active.address = Set(report
        .address
        .clone()
        .filter(|_| report.stage == AllocationStage::Ready));
    active.exit_status = Set(report.exit_status.clone());
    active.last_report_at = Set(Some(now));
    active.updated_at = Set(now);
    let row = active.update(&txn).await?;
    txn.commit().await?;
    Ok(ReportOutcome::Applied(row))
}

/// The allocation row, locked for update on PostgreSQL (SQLite writers are already
/// serialised by `BEGIN IMMEDIATE`).
async fn locked<C: ConnectionTrait>(txn: &C, id: Uuid) -> Result<allocation::Model, SchemaError> {
    allocation::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "allocation",
            id: id.to_string(),
        })
}
