//! Secret versions: each secret carries the version its value is at (1 for the first set,
//! one more at each change), who set it, and the id of the key that sealed it, so a key
//! rotation knows which rows to seal again.

use sea_orm_migration::{prelude::*, schema::*};

use super::{add_columns, drop_columns};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Secrets {
    Table,
    Version,
    SetBy,
    KeyId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            Secrets::Table,
            vec![
                big_integer(Secrets::Version).default(1).to_owned(),
                string(Secrets::SetBy).default("").to_owned(),
                string(Secrets::KeyId).default("").to_owned(),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_columns(
            manager,
            Secrets::Table,
            [Secrets::Version, Secrets::SetBy, Secrets::KeyId],
        )
        .await
    }
}
