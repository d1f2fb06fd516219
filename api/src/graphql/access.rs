//! The caller (`me`), role grants and API tokens.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use rhone_schema::entity::api_token;
use uuid::Uuid;

use crate::{
    auth::Actor,
    graphql::{
        caller,
        enums::{ActorKind, Role},
        types::{Grant, Operation, User, Workspace},
    },
    service::access,
};

/// A workspace the caller can read and its role there.
#[derive(SimpleObject)]
pub struct Membership {
    pub workspace: Workspace,
    pub role: Role,
}

/// Who the caller is.
#[derive(SimpleObject)]
pub struct Me {
    /// As operations and audit entries name it: `user:<uuid>` or `runtime:<app uuid>`.
    pub actor: String,
    pub kind: ActorKind,
    /// The user, for a user's token.
    pub user: Option<User>,
    /// The app, for an app's runtime identity.
    pub app_id: Option<Uuid>,
    pub memberships: Vec<Membership>,
}

#[derive(Default)]
pub struct AccessQuery;

#[Object]
impl AccessQuery {
    /// The caller's own API tokens, newest first (revoked and expired ones too).
    async fn tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Token>> {
        let (state, actor) = caller(ctx)?;
        Ok(access::tokens(&state.db, actor)
            .await?
            .into_iter()
            .map(Token::from)
            .collect())
    }

    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let (state, actor) = caller(ctx)?;
        let me = access::me(&state.db, actor).await?;
        let (kind, app_id) = match me.actor {
            Actor::User { .. } => (ActorKind::User, None),
            Actor::Runtime { app_id, .. } => (ActorKind::Runtime, Some(app_id)),
        };
        Ok(Me {
            actor: me.actor.subject(),
            kind,
            user: me.user.map(User::from),
            app_id,
            memberships: me
                .memberships
                .into_iter()
                .map(|(w, role)| Membership {
                    workspace: w.into(),
                    role: role.into(),
                })
                .collect(),
        })
    }
}

#[derive(SimpleObject)]
pub struct GrantRolePayload {
    pub grant: Grant,
    pub operation: Operation,
}

/// A new API token. `token` is shown this once and cannot be read again.
#[derive(SimpleObject)]
pub struct CreatedToken {
    pub id: Uuid,
    pub token: String,
    /// The token's first characters, to tell tokens apart.
    pub prefix: String,
    /// After this the token is refused.
    pub expires_at: DateTime<Utc>,
    pub operation: Operation,
}

/// An API token as its owner sees it: never the token itself.
#[derive(SimpleObject)]
pub struct Token {
    pub id: Uuid,
    pub name: String,
    /// The token's first characters, to tell tokens apart.
    pub prefix: String,
    /// `user` (a person's) or `runtime` (an app's).
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// When the API last accepted it (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// After this it is refused.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<api_token::Model> for Token {
    fn from(t: api_token::Model) -> Self {
        Token {
            id: t.id,
            name: t.name,
            prefix: t.prefix,
            kind: t.kind,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct RevokedToken {
    pub token: Token,
    pub operation: Operation,
}

#[derive(Default)]
pub struct AccessMutation;

#[Object]
impl AccessMutation {
    /// Gives the user with `email` a role in a workspace, creating the user if new, or
    /// changes its role. Needs admin; granting or changing the owner role needs owner.
    async fn grant_role(
        &self,
        ctx: &Context<'_>,
        workspace_id: Uuid,
        email: String,
        role: Role,
    ) -> async_graphql::Result<GrantRolePayload> {
        let (state, actor) = caller(ctx)?;
        let granted =
            access::grant_role(&state.db, actor, workspace_id, &email, role.into()).await?;
        Ok(GrantRolePayload {
            grant: Grant::new(granted.grant, granted.user)?,
            operation: Operation::try_from(granted.operation)?,
        })
    }

    /// Creates an API token for the caller, lasting `expiresInDays` (default 90, at most
    /// 365).
    async fn create_token(
        &self,
        ctx: &Context<'_>,
        name: String,
        expires_in_days: Option<i32>,
    ) -> async_graphql::Result<CreatedToken> {
        let (state, actor) = caller(ctx)?;
        let token = access::create_token(&state.db, actor, &name, expires_in_days).await?;
        Ok(CreatedToken {
            id: token.id,
            token: token.clear,
            prefix: token.prefix,
            expires_at: token.expires_at,
            operation: Operation::try_from(token.operation)?,
        })
    }

    /// Revokes one of the caller's tokens, or (as an admin of its workspace) an app's
    /// runtime token. Its requests are refused from now on and its open subscriptions end.
    async fn revoke_token(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<RevokedToken> {
        let (state, actor) = caller(ctx)?;
        let (token, operation) = access::revoke_token(&state.db, actor, id).await?;
        Ok(RevokedToken {
            token: token.into(),
            operation: Operation::try_from(operation)?,
        })
    }
}
