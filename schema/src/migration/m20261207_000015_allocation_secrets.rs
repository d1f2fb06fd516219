//! Allocation secrets: the sealed bundle of the environment's secrets an allocation started
//! with, so that every later command for it (a stop, a drain) carries the same ones.

use sea_orm_migration::{prelude::*, schema::*};

use super::{add_columns, drop_columns};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Allocations {
    Table,
    SealedSecrets,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            Allocations::Table,
            vec![text_null(Allocations::SealedSecrets).to_owned()],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(manager, Allocations::Table, [Allocations::SealedSecrets]).await
    }
}
