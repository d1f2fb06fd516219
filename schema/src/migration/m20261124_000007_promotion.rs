//! Promotion and route authority: a production deployment remembers the preview deployment
//! it was promoted from; each edge keeps one acknowledgement row (the change-log sequence
//! number it serves, and when it was last seen, so a promotion waits only for live edges);
//! allocations are found by `updated_at` by edges that follow allocation changes.

use sea_orm_migration::{prelude::*, schema::*};

use super::index;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Deployments {
    Table,
    PromotedFrom,
}

#[derive(DeriveIden)]
enum EdgeAcks {
    Table,
    EdgeId,
    Address,
    AckedSeq,
    AckedAt,
    SeenAt,
    StartedAt,
}

#[derive(DeriveIden)]
enum Allocations {
    Table,
    UpdatedAt,
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
                    .table(Deployments::Table)
                    .add_column(uuid_null(Deployments::PromotedFrom))
                    .to_owned(),
            )
            .await?;
        // No edge acknowledged anything before this migration: the table is remade with the
        // columns liveness needs.
        manager
            .drop_table(Table::drop().table(EdgeAcks::Table).to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EdgeAcks::Table)
                    .col(string(EdgeAcks::EdgeId).primary_key())
                    .col(string_null(EdgeAcks::Address))
                    .col(big_integer(EdgeAcks::AckedSeq))
                    .col(timestamp_with_time_zone(EdgeAcks::AckedAt))
                    .col(timestamp_with_time_zone(EdgeAcks::SeenAt))
                    .col(timestamp_with_time_zone(EdgeAcks::StartedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(Allocations::Table, [Allocations::UpdatedAt], false))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_allocations_updated_at")
                    .table(Allocations::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(EdgeAcks::Table).to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EdgeAcks::Table)
                    .col(string(EdgeAcks::EdgeId).primary_key())
                    .col(big_integer(EdgeAcks::AckedSeq))
                    .col(timestamp_with_time_zone(EdgeAcks::AckedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Deployments::Table)
                    .drop_column(Deployments::PromotedFrom)
                    .to_owned(),
            )
            .await
    }
}
