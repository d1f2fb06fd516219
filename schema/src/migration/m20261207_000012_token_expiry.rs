//! Tokens expire: `expires_at` on `api_tokens`. Every token created from now on has one
//! (`createToken(expiresInDays)`, 90 days by default); a token from before this migration
//! gets 90 days from the migration, time for its owner to replace it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    ExpiresAt,
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
                    .table(ApiTokens::Table)
                    .add_column(timestamp_with_time_zone_null(ApiTokens::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        let grace = chrono::Utc::now() + chrono::TimeDelta::days(90);
        manager
            .exec_stmt(
                Query::update()
                    .table(ApiTokens::Table)
                    .value(ApiTokens::ExpiresAt, grace)
                    .and_where(Expr::col(ApiTokens::ExpiresAt).is_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiTokens::Table)
                    .drop_column(ApiTokens::ExpiresAt)
                    .to_owned(),
            )
            .await
    }
}
