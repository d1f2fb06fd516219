//! Migrations of the control DB, written with the sea-query schema builder so the same
//! statements run on SQLite and PostgreSQL. Each migration runs in a transaction on both
//! backends, so a failed one leaves nothing half-made. Migrations are frozen once shipped:
//! a change to the model is a new migration, never an edit here.

use sea_orm_migration::prelude::*;

mod m20261123_000001_tenancy;
mod m20261123_000002_operations;
mod m20261123_000003_topology;
mod m20261123_000004_release;
mod m20261123_000005_bindings;
mod m20261123_000006_build_logs;
mod m20261124_000007_promotion;
mod m20261124_000008_wake;
mod m20261207_000009_runner_network;
mod m20261207_000010_runner_fleet;
mod m20261207_000011_repair;
mod m20261207_000012_token_expiry;
mod m20261207_000013_self_approval;
mod m20261207_000014_secret_versions;
mod m20261207_000015_allocation_secrets;
mod m20261207_000016_database_providers;
mod m20261207_000017_binding_probes;

/// Every migration of the control DB, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_tenancy::Migration),
            Box::new(m20261123_000002_operations::Migration),
            Box::new(m20261123_000003_topology::Migration),
            Box::new(m20261123_000004_release::Migration),
            Box::new(m20261123_000005_bindings::Migration),
            Box::new(m20261123_000006_build_logs::Migration),
            Box::new(m20261124_000007_promotion::Migration),
            Box::new(m20261124_000008_wake::Migration),
            Box::new(m20261207_000009_runner_network::Migration),
            Box::new(m20261207_000010_runner_fleet::Migration),
            Box::new(m20261207_000011_repair::Migration),
            Box::new(m20261207_000012_token_expiry::Migration),
            Box::new(m20261207_000013_self_approval::Migration),
            Box::new(m20261207_000014_secret_versions::Migration),
            Box::new(m20261207_000015_allocation_secrets::Migration),
            Box::new(m20261207_000016_database_providers::Migration),
            Box::new(m20261207_000017_binding_probes::Migration),
        ]
    }
}

/// A foreign key from `table.column` to `to_table.to_column`, named `fk_<table>_<column>`.
fn fk(
    table: impl IntoIden,
    column: impl IntoIden,
    to_table: impl IntoIden,
    to_column: impl IntoIden,
) -> ForeignKeyCreateStatement {
    let (table, column) = (table.into_iden(), column.into_iden());
    ForeignKey::create()
        .name(format!("fk_{table}_{column}"))
        .from(table, column)
        .to(to_table, to_column)
        .to_owned()
}

/// An index on `columns` of `table`, named `idx_<table>_<columns>` (`uq_…` when unique).
fn index<C: IntoIden>(
    table: impl IntoIden,
    columns: impl IntoIterator<Item = C>,
    unique: bool,
) -> IndexCreateStatement {
    let table = table.into_iden();
    let columns: Vec<DynIden> = columns.into_iter().map(IntoIden::into_iden).collect();
    let names: Vec<String> = columns.iter().map(ToString::to_string).collect();
    let prefix = if unique { "uq" } else { "idx" };
    let mut stmt = Index::create();
    stmt.name(format!("{prefix}_{table}_{}", names.join("_")))
        .table(table);
    for column in columns {
        stmt.col(column);
    }
    if unique {
        stmt.unique();
    }
    stmt
}

/// Creates `tables` in order, then `indexes`.
async fn create_all(
    manager: &SchemaManager<'_>,
    tables: Vec<TableCreateStatement>,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    for table in tables {
        manager.create_table(table).await?;
    }
    for index in indexes {
        manager.create_index(index).await?;
    }
    Ok(())
}

/// Drops `tables` in order (children first).
async fn drop_all(
    manager: &SchemaManager<'_>,
    tables: impl IntoIterator<Item = DynIden>,
) -> Result<(), DbErr> {
    for table in tables {
        manager
            .drop_table(Table::drop().table(table).to_owned())
            .await?;
    }
    Ok(())
}

/// Adds `columns` to `table`, one statement each (SQLite alters one column at a time).
async fn add_columns(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    columns: Vec<ColumnDef>,
) -> Result<(), DbErr> {
    let table = table.into_iden();
    for mut column in columns {
        manager
            .alter_table(
                Table::alter()
                    .table(table.clone())
                    .add_column(&mut column)
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}

/// Drops `columns` of `table`, one statement each.
async fn drop_columns<C: IntoIden>(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    columns: impl IntoIterator<Item = C>,
) -> Result<(), DbErr> {
    let table = table.into_iden();
    for column in columns {
        manager
            .alter_table(
                Table::alter()
                    .table(table.clone())
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}
