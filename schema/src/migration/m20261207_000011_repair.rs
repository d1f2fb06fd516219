//! Repair: a RouteOwner names how many allocations it is meant to run (`instances`, written
//! by the promotion, rollback or preview that moved it), so the fleet watch can tell a
//! route that lost one (its runner lost, a crash, a host restart) from one that never had
//! more, and start a Repair.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RouteOwners {
    Table,
    Instances,
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
                    .table(RouteOwners::Table)
                    .add_column(integer(RouteOwners::Instances).default(1))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(RouteOwners::Table)
                    .drop_column(RouteOwners::Instances)
                    .to_owned(),
            )
            .await
    }
}
