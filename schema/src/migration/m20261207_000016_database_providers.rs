//! Database providers: PostgreSQL servers an operator registers (the admin URL sealed under
//! the secrets key), what each provider binding provisioned on one (its database, role and
//! access), and the migrations applied to each database, once.

use sea_orm_migration::{prelude::*, schema::*};

use super::{add_columns, create_all, drop_all, drop_columns, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DatabaseProviders {
    Table,
    Id,
    Name,
    Kind,
    Host,
    SealedAdminUrl,
    PointInTimeRecovery,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ProviderBindings {
    Table,
    Role,
    Access,
    Error,
}

#[derive(DeriveIden)]
enum AppliedMigrations {
    Table,
    Id,
    ProviderId,
    Database,
    Path,
    Sha256,
    Class,
    OperationId,
    AppliedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let providers = Table::create()
            .table(DatabaseProviders::Table)
            .col(pk_uuid(DatabaseProviders::Id))
            .col(string(DatabaseProviders::Name))
            .col(string(DatabaseProviders::Kind))
            .col(string(DatabaseProviders::Host))
            .col(text(DatabaseProviders::SealedAdminUrl))
            .col(boolean(DatabaseProviders::PointInTimeRecovery))
            .col(string(DatabaseProviders::CreatedBy))
            .col(timestamp_with_time_zone(DatabaseProviders::CreatedAt))
            .to_owned();
        let applied = Table::create()
            .table(AppliedMigrations::Table)
            .col(pk_uuid(AppliedMigrations::Id))
            .col(uuid(AppliedMigrations::ProviderId))
            .col(string(AppliedMigrations::Database))
            .col(string(AppliedMigrations::Path))
            .col(string(AppliedMigrations::Sha256))
            .col(string(AppliedMigrations::Class))
            .col(uuid(AppliedMigrations::OperationId))
            .col(timestamp_with_time_zone(AppliedMigrations::AppliedAt))
            .foreign_key(&mut fk(
                AppliedMigrations::Table,
                AppliedMigrations::ProviderId,
                DatabaseProviders::Table,
                DatabaseProviders::Id,
            ))
            .to_owned();
        create_all(
            manager,
            vec![providers, applied],
            vec![
                index(DatabaseProviders::Table, [DatabaseProviders::Name], true),
                index(
                    AppliedMigrations::Table,
                    [
                        AppliedMigrations::ProviderId,
                        AppliedMigrations::Database,
                        AppliedMigrations::Path,
                    ],
                    true,
                ),
            ],
        )
        .await?;
        add_columns(
            manager,
            ProviderBindings::Table,
            vec![
                string(ProviderBindings::Role).default("").to_owned(),
                string(ProviderBindings::Access)
                    .default("read_write")
                    .to_owned(),
                text_null(ProviderBindings::Error).to_owned(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(
            manager,
            ProviderBindings::Table,
            [
                ProviderBindings::Role,
                ProviderBindings::Access,
                ProviderBindings::Error,
            ],
        )
        .await?;
        drop_all(
            manager,
            [
                AppliedMigrations::Table.into_iden(),
                DatabaseProviders::Table.into_iden(),
            ],
        )
        .await
    }
}
