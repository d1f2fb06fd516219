//! User: a human identity; what it may do in a workspace comes from its grants.

use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub email: String,
    pub display_name: String,
    pub created_at: DateTimeUtc,
    /// A platform operator: manages runners and sees the fleet.
    pub operator: bool,
    #[sea_orm(has_many)]
    pub grants: HasMany<super::grant::Entity>,
    #[sea_orm(has_many)]
    pub api_tokens: HasMany<super::api_token::Entity>,
}

impl ActiveModelBehavior for ActiveModel {}
