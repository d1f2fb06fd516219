//! Secret: one named secret of an environment, stored only as ciphertext and nonce.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "secrets", model_ex_attrs(derive(Debug)))]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    #[sea_orm(column_type = "Blob")]
    pub ciphertext: Vec<u8>,
    #[sea_orm(column_type = "Blob")]
    pub nonce: Vec<u8>,
    /// 1 for the first value, one more at each change.
    pub version: i64,
    /// Who set this version (`user:<uuid>`, `token:<uuid>`).
    pub set_by: String,
    /// The id of the key that sealed it ([`crate::secrets::Keyring`]).
    pub key_id: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    #[sea_orm(belongs_to, from = "environment_id", to = "id")]
    pub environment: BelongsTo<super::environment::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Leaves the ciphertext and nonce out, so a logged model shows which secret, not its bytes.
impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("secret::Model")
            .field("id", &self.id)
            .field("environment_id", &self.environment_id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("set_by", &self.set_by)
            .field("key_id", &self.key_id)
            .field(
                "ciphertext",
                &format_args!("<{} bytes>", self.ciphertext.len()),
            )
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}
