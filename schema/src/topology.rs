//! Regions, cells and runners: the placement identity every allocation names, kept from day
//! one even with one region, one cell and one runner.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};
use uuid::Uuid;

use rhone_core::RunnerStatus;

use crate::{SchemaError, entity::runner, new_id};

/// Capacity [`ensure_runner`] gives a runner: far more than a test or `rhone dev` places.
pub const AMPLE: rhone_runner_protocol::fleet::Capacity = rhone_runner_protocol::fleet::Capacity {
    memory_mb: 1 << 20,
    cpu_millis: 1 << 20,
    slots: 10_000,
};

/// A ready runner in `region`/`cell` (both made if new) at `address`, with [`AMPLE`]
/// capacity and no credential: for fixtures and tests, which talk to the runner without the
/// registration a real one makes. An existing runner of that name is moved and made ready.
/// Safe to repeat.
pub async fn ensure_runner<C: ConnectionTrait>(
    db: &C,
    region_name: &str,
    cell_name: &str,
    runner_name: &str,
    address: &str,
) -> Result<runner::Model, SchemaError> {
    let now = Utc::now();
    let cell = crate::fleet::ensure_cell(db, region_name, cell_name).await?;
    let existing = runner::Entity::find()
        .filter(runner::Column::Name.eq(runner_name))
        .one(db)
        .await?;
    Ok(match existing {
        Some(r) => {
            let mut r: runner::ActiveModel = r.into();
            r.cell_id = Set(cell.id);
            r.address = Set(address.to_owned());
            r.status = Set(RunnerStatus::Ready.as_str().to_owned());
            r.last_seen_at = Set(Some(now));
            r.update(db).await?
        }
        None => {
            runner::ActiveModel {
                id: Set(new_id()),
                cell_id: Set(cell.id),
                name: Set(runner_name.to_owned()),
                address: Set(address.to_owned()),
                status: Set(RunnerStatus::Ready.as_str().to_owned()),
                last_seen_at: Set(Some(now)),
                subnet: Set(None),
                created_at: Set(now),
                credential_sha256: Set(None),
                revoked_at: Set(None),
                memory_mb: Set(AMPLE.memory_mb),
                cpu_millis: Set(AMPLE.cpu_millis),
                slots: Set(AMPLE.slots),
                agent_version: Set(None),
                status_changed_at: Set(Some(now)),
            }
            .insert(db)
            .await?
        }
    })
}

/// Records the subnet of runner `runner_id`'s allocations (`a.b.c.d/p`) if none is yet: the
/// first one the control plane learns stays, and reports are checked against it. Returns
/// the runner as stored.
pub async fn record_runner_subnet<C: ConnectionTrait>(
    db: &C,
    runner_id: Uuid,
    subnet: &str,
) -> Result<runner::Model, SchemaError> {
    if crate::allocations::parse_subnet(subnet).is_none() {
        return Err(SchemaError::Conflict {
            what: format!("runner subnet {subnet:?} is not a.b.c.d/p with p from 16 to 28"),
        });
    }
    runner::Entity::update_many()
        .col_expr(
            runner::Column::Subnet,
            sea_orm::sea_query::Expr::value(subnet),
        )
        .filter(runner::Column::Id.eq(runner_id))
        .filter(runner::Column::Subnet.is_null())
        .exec(db)
        .await?;
    runner::Entity::find_by_id(runner_id)
        .one(db)
        .await?
        .ok_or(SchemaError::NotFound {
            what: "runner",
            id: runner_id.to_string(),
        })
}
