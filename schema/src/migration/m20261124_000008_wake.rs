//! Scale to zero: an environment sleeps after `sleep_after_ms` without requests and keeps the
//! Wake machine's stage its route is in (`wake_state`: `hot`, `wake_requested`, `starting`,
//! `readiness_wait`, `failed`, `sleeping`), which the Wake workflow writes; the edges report
//! traffic per route key (`route_activity`: the last request each edge saw, and its open
//! WebSockets), which the Wake workflow reads to decide that a route is idle.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Environments {
    Table,
    SleepAfterMs,
    WakeState,
}

#[derive(DeriveIden)]
enum RouteActivity {
    Table,
    RouteKey,
    EdgeId,
    LastRequestAt,
    OpenSockets,
    UpdatedAt,
}

/// An environment sleeps after five minutes without a request, unless told otherwise.
const DEFAULT_SLEEP_AFTER_MS: i64 = 300_000;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Environments::Table)
                    .add_column(
                        big_integer(Environments::SleepAfterMs).default(DEFAULT_SLEEP_AFTER_MS),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Environments::Table)
                    .add_column(text(Environments::WakeState).default("hot"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RouteActivity::Table)
                    .col(string(RouteActivity::RouteKey))
                    .col(string(RouteActivity::EdgeId))
                    .col(timestamp_with_time_zone_null(RouteActivity::LastRequestAt))
                    .col(integer(RouteActivity::OpenSockets).default(0))
                    .col(timestamp_with_time_zone(RouteActivity::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(RouteActivity::RouteKey)
                            .col(RouteActivity::EdgeId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RouteActivity::Table).to_owned())
            .await?;
        for column in [Environments::WakeState, Environments::SleepAfterMs] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Environments::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
