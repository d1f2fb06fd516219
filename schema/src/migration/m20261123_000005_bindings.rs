//! Environment bindings: provider bindings, runtime service bindings and secrets.

use sea_orm_migration::{prelude::*, schema::*};

use super::m20261123_000001_tenancy::Environments;
use super::{create_all, drop_all, fk, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ProviderBindings {
    Table,
    Id,
    EnvironmentId,
    Provider,
    Resource,
    Status,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RuntimeServiceBindings {
    Table,
    Id,
    EnvironmentId,
    Service,
    Status,
    Config,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Secrets {
    Table,
    Id,
    EnvironmentId,
    Name,
    Ciphertext,
    Nonce,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let provider_bindings = Table::create()
            .table(ProviderBindings::Table)
            .col(pk_uuid(ProviderBindings::Id))
            .col(uuid(ProviderBindings::EnvironmentId))
            .col(string(ProviderBindings::Provider))
            .col(string(ProviderBindings::Resource))
            .col(string(ProviderBindings::Status))
            .col(timestamp_with_time_zone(ProviderBindings::CreatedAt))
            .foreign_key(&mut fk(
                ProviderBindings::Table,
                ProviderBindings::EnvironmentId,
                Environments::Table,
                Environments::Id,
            ))
            .to_owned();
        let runtime_service_bindings = Table::create()
            .table(RuntimeServiceBindings::Table)
            .col(pk_uuid(RuntimeServiceBindings::Id))
            .col(uuid(RuntimeServiceBindings::EnvironmentId))
            .col(string(RuntimeServiceBindings::Service))
            .col(string(RuntimeServiceBindings::Status))
            .col(json_binary(RuntimeServiceBindings::Config))
            .col(timestamp_with_time_zone(RuntimeServiceBindings::CreatedAt))
            .foreign_key(&mut fk(
                RuntimeServiceBindings::Table,
                RuntimeServiceBindings::EnvironmentId,
                Environments::Table,
                Environments::Id,
            ))
            .to_owned();
        let secrets = Table::create()
            .table(Secrets::Table)
            .col(pk_uuid(Secrets::Id))
            .col(uuid(Secrets::EnvironmentId))
            .col(string(Secrets::Name))
            .col(blob(Secrets::Ciphertext))
            .col(blob(Secrets::Nonce))
            .col(timestamp_with_time_zone(Secrets::CreatedAt))
            .col(timestamp_with_time_zone(Secrets::UpdatedAt))
            .foreign_key(
                fk(
                    Secrets::Table,
                    Secrets::EnvironmentId,
                    Environments::Table,
                    Environments::Id,
                )
                .on_delete(ForeignKeyAction::Cascade),
            )
            .to_owned();

        create_all(
            manager,
            vec![provider_bindings, runtime_service_bindings, secrets],
            vec![
                index(
                    ProviderBindings::Table,
                    [ProviderBindings::EnvironmentId],
                    false,
                ),
                index(
                    RuntimeServiceBindings::Table,
                    [RuntimeServiceBindings::EnvironmentId],
                    false,
                ),
                index(
                    Secrets::Table,
                    [Secrets::EnvironmentId, Secrets::Name],
                    true,
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_all(
            manager,
            [
                Secrets::Table.into_iden(),
                RuntimeServiceBindings::Table.into_iden(),
                ProviderBindings::Table.into_iden(),
            ],
        )
        .await
    }
}
