//! API token: a bearer credential of either a human user (`kind = "user"`, `user_id` set) or
//! an app's runtime identity (`kind = "runtime"`, `app_id` set), never both; the migration
//! enforces that with a CHECK. Only the SHA-256 of the token is stored.

use sea_orm::entity::prelude::*;
use sha2::{Digest, Sha256};

/// `kind` of a token held by a human user.
pub const KIND_USER: &str = "user";
/// `kind` of a token held by an app's runtime identity.
pub const KIND_RUNTIME: &str = "runtime";

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub app_id: Option<Uuid>,
    pub kind: String,
    pub name: String,
    /// Lowercase hex SHA-256 of the clear token, see [`hash_token`].
    #[sea_orm(unique)]
    pub token_hash: String,
    /// The first characters of the clear token, so a user can tell tokens apart.
    pub prefix: String,
    pub created_at: DateTimeUtc,
    /// When the API last accepted the token (written at most once a minute).
    pub last_used_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    /// After this the token is refused (migration 12 gave older tokens 90 days).
    pub expires_at: Option<DateTimeUtc>,
    #[sea_orm(belongs_to, from = "user_id", to = "id")]
    pub user: BelongsTo<Option<super::user::Entity>>,
    #[sea_orm(belongs_to, from = "app_id", to = "id")]
    pub app: BelongsTo<Option<super::app::Entity>>,
}

impl ActiveModelBehavior for ActiveModel {}

/// The value stored in `token_hash` for a clear token: lowercase hex of its SHA-256.
pub fn hash_token(clear: &str) -> String {
    hex::encode(Sha256::digest(clear.as_bytes()))
}
