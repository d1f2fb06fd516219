//! Binding probes: a runtime-service binding is `ready` only once Rhone has reached the
//! service. `error` on `runtime_service_bindings` says why the last probe failed (scrubbed
//! of secret values), `probed_at` when it ran (null for a binding that is not probed).

use sea_orm_migration::{prelude::*, schema::*};

use super::{add_columns, drop_columns};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RuntimeServiceBindings {
    Table,
    Error,
    ProbedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            RuntimeServiceBindings::Table,
            vec![
                text_null(RuntimeServiceBindings::Error).to_owned(),
                timestamp_with_time_zone_null(RuntimeServiceBindings::ProbedAt).to_owned(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(
            manager,
            RuntimeServiceBindings::Table,
            [
                RuntimeServiceBindings::Error,
                RuntimeServiceBindings::ProbedAt,
            ],
        )
        .await
    }
}
