//! IdempotencyRecord: the stored outcome of a request sent with an idempotency key, so a
//! retry within `expires_at` gets the first answer instead of a second effect.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_records")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub scope: String,
    pub key: String,
    /// Hash of the request, so the same key with a different request is a conflict.
    pub request_hash: String,
    /// Unset while the first request is still in flight.
    pub status_code: Option<i32>,
    #[sea_orm(column_type = "Blob")]
    pub response_body: Option<Vec<u8>>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
