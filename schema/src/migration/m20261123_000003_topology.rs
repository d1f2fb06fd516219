//! Topology: regions, cells and runners.

use sea_orm_migration::{prelude::*, schema::*};

use super::{create_all, drop_all, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
pub(super) enum Regions {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
pub(super) enum Cells {
    Table,
    Id,
    RegionId,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
pub(super) enum Runners {
    Table,
    Id,
    CellId,
    Name,
    Address,
    Status,
    LastSeenAt,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let regions = Table::create()
            .table(Regions::Table)
            .col(pk_uuid(Regions::Id))
            .col(string_uniq(Regions::Name))
            .col(timestamp_with_time_zone(Regions::CreatedAt))
            .to_owned();
        let cells = Table::create()
            .table(Cells::Table)
            .col(pk_uuid(Cells::Id))
            .col(uuid(Cells::RegionId))
            .col(string(Cells::Name))
            .col(timestamp_with_time_zone(Cells::CreatedAt))
            .foreign_key(&mut fk(
                Cells::Table,
                Cells::RegionId,
                Regions::Table,
                Regions::Id,
            ))
            .to_owned();
        let runners = Table::create()
            .table(Runners::Table)
            .col(pk_uuid(Runners::Id))
            .col(uuid(Runners::CellId))
            .col(string_uniq(Runners::Name))
            .col(string(Runners::Address))
            .col(string(Runners::Status))
            .col(timestamp_with_time_zone_null(Runners::LastSeenAt))
            .col(timestamp_with_time_zone(Runners::CreatedAt))
            .foreign_key(&mut fk(
                Runners::Table,
                Runners::CellId,
                Cells::Table,
                Cells::Id,
            ))
            .to_owned();

        create_all(
            manager,
            vec![regions, cells, runners],
            vec![
                index(Cells::Table, [Cells::RegionId, Cells::Name], true),
                index(Runners::Table, [Runners::CellId], false),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(
            manager,
            [
                Runners::Table.into_iden(),
                Cells::Table.into_iden(),
                Regions::Table.into_iden(),
            ],
        )
        .await
    }
}
