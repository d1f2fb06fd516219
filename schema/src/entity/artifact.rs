//! Artifact: immutable build output, keyed by its content digest (`sha256:<hex>`); the bytes
//! live in the artifact store at `store_uri`, the manifest here.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "artifacts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub digest: String,
    pub size_bytes: i64,
    #[sea_orm(column_type = "JsonBinary")]
    pub manifest: Json,
    pub store_uri: String,
    pub created_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
