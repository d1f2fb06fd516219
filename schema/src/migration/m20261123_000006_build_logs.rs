//! Build logs: the output of each build attempt of an operation, kept as ordered chunks so
//! the API can stream it while the build runs and serve it after.

use sea_orm_migration::{prelude::*, schema::*};

use super::m20261123_000002_operations::Operations;
use super::{create_all, drop_all, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum BuildLogs {
    Table,
    Id,
    OperationId,
    Attempt,
    Seq,
    Chunk,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let build_logs = Table::create()
            .table(BuildLogs::Table)
            .col(big_pk_auto(BuildLogs::Id))
            .col(uuid(BuildLogs::OperationId))
            .col(integer(BuildLogs::Attempt))
            .col(integer(BuildLogs::Seq))
            .col(text(BuildLogs::Chunk))
            .col(timestamp_with_time_zone(BuildLogs::CreatedAt))
            .foreign_key(
                fk(
                    BuildLogs::Table,
                    BuildLogs::OperationId,
                    Operations::Table,
                    Operations::Id,
                )
                .on_delete(ForeignKeyAction::Cascade),
            )
            .to_owned();
        create_all(
            manager,
            vec![build_logs],
            // `seq` numbers the chunks of one operation across all its attempts, so a reader
            // that resumes after a seq never misses or repeats a chunk.
            vec![index(
                BuildLogs::Table,
                [BuildLogs::OperationId, BuildLogs::Seq],
                true,
            )],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(manager, [BuildLogs::Table.into_iden()]).await
    }
}
