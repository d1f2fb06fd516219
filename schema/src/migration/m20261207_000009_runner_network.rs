//! A runner's network: the subnet of its allocations' addresses (`runners.subnet`, as
//! `a.b.c.d/p`), recorded at the control plane's first contact with the runner. A report
//! from a runner is taken only for allocations placed on it and only with an address inside
//! this subnet, so no runner can point the edge at anything else.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Runners {
    Table,
    Subnet,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Runners::Table)
                    .add_column(text_null(Runners::Subnet))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Runners::Table)
                    .drop_column(Runners::Subnet)
                    .to_owned(),
            )
            .await
    }
}
