//! The runner fleet: runners an operator adds (`credential_sha256`, revocable with
//! `revoked_at`) and that register themselves with their capacity (`memory_mb`,
//! `cpu_millis`, `slots`) and agent version; `status_changed_at` dates the last move between
//! `registered`, `ready`, `lost` and `revoked`. Allocations keep the memory and CPU they
//! were placed with, which placement counts against a runner's capacity. Users get an
//! `operator` flag: platform operators manage runners; the first user (the bootstrap
//! admin) is one.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Runners {
    Table,
    CredentialSha256,
    RevokedAt,
    MemoryMb,
    CpuMillis,
    Slots,
    AgentVersion,
    StatusChangedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Allocations {
    Table,
    MemoryMb,
    CpuMillis,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
    Operator,
    CreatedAt,
}

/// SQLite alters one column per statement.
fn columns<T: IntoIden + Copy>(table: T, cols: Vec<ColumnDef>) -> Vec<TableAlterStatement> {
    cols.into_iter()
        .map(|mut c| Table::alter().table(table).add_column(&mut c).to_owned())
        .collect()
}

fn drops<T: IntoIden + Copy, C: IntoIden>(table: T, cols: Vec<C>) -> Vec<TableAlterStatement> {
    cols.into_iter()
        .map(|c| Table::alter().table(table).drop_column(c).to_owned())
        .collect()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut alters = columns(
            Runners::Table,
            vec![
                text_null(Runners::CredentialSha256),
                timestamp_with_time_zone_null(Runners::RevokedAt),
                big_integer(Runners::MemoryMb).default(0).to_owned(),
                big_integer(Runners::CpuMillis).default(0).to_owned(),
                integer(Runners::Slots).default(0).to_owned(),
                text_null(Runners::AgentVersion),
                timestamp_with_time_zone_null(Runners::StatusChangedAt),
            ],
        );
        alters.extend(columns(
            Allocations::Table,
            vec![
                big_integer(Allocations::MemoryMb).default(0).to_owned(),
                big_integer(Allocations::CpuMillis).default(0).to_owned(),
            ],
        ));
        alters.extend(columns(
            Users::Table,
            vec![boolean(Users::Operator).default(false).to_owned()],
        ));
        for alter in alters {
            manager.alter_table(alter).await?;
        }
        // The first user is the bootstrap admin: the platform's first operator.
        let first = Query::select()
            .column(Users::Id)
            .from(Users::Table)
            .order_by(Users::CreatedAt, Order::Asc)
            .limit(1)
            .to_owned();
        manager
            .exec_stmt(
                Query::update()
                    .table(Users::Table)
                    .value(Users::Operator, true)
                    .and_where(Expr::col(Users::Id).in_subquery(first))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut alters = drops(
            Runners::Table,
            vec![
                Runners::CredentialSha256,
                Runners::RevokedAt,
                Runners::MemoryMb,
                Runners::CpuMillis,
                Runners::Slots,
                Runners::AgentVersion,
                Runners::StatusChangedAt,
            ],
        );
        alters.extend(drops(
            Allocations::Table,
            vec![Allocations::MemoryMb, Allocations::CpuMillis],
        ));
        alters.extend(drops(Users::Table, vec![Users::Operator]));
        for alter in alters {
            manager.alter_table(alter).await?;
        }
        Ok(())
    }
}
