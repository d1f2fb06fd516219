//! The caller (`me`), role grants and API tokens.

use async_graphql::{Context, Object, SimpleObject};
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
    pub token: String,
    /// The token's first characters, to tell tokens apart.
    pub prefix: String,
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

    /// Creates an API token for the caller.
    async fn create_token(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<CreatedToken> {
        let (state, actor) = caller(ctx)?;
        let token = access::create_token(&state.db, actor, &name).await?;
        Ok(CreatedToken {
            token: token.clear,
            prefix: token.prefix,
            operation: Operation::try_from(token.operation)?,
        })
    }
}
