//! Role checks. A user's role in a workspace comes from its grant; an app's runtime identity
//! reads its own workspace and changes nothing. Without any access to a workspace, its
//! objects answer NOT_FOUND, so their existence is not leaked; with access but too weak a
//! role, FORBIDDEN.

use rhone_core::Role;
use rhone_schema::entity::grant;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::{
    auth::{Actor, runtime_forbidden},
    error::ApiError,
};

/// The object a check is about, named in a NOT_FOUND answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub what: &'static str,
    pub id: Uuid,
}

/// The actor's role in `workspace_id`, if it has any access there.
pub(crate) async fn role_in<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    workspace_id: Uuid,
) -> Result<Option<Role>, ApiError> {
    match actor {
        Actor::User { user_id, .. } => {
            let row = grant::Entity::find()
                .filter(grant::Column::WorkspaceId.eq(workspace_id))
                .filter(grant::Column::UserId.eq(*user_id))
                .one(db)
                .await?;
            row.map(|g| parse_role(&g.role)).transpose()
        }
        Actor::Runtime {
            workspace_id: own, ..
        } => Ok((*own == workspace_id).then_some(Role::Viewer)),
    }
}

/// Checks that the actor holds at least `needed` in `workspace_id`, where `target` lives.
/// Returns the actor's role.
pub(crate) async fn require<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    workspace_id: Uuid,
    needed: Role,
    target: Target,
) -> Result<Role, ApiError> {
    let Some(role) = role_in(db, actor, workspace_id).await? else {
        return Err(ApiError::not_found(target.what, target.id));
    };
    if needed > Role::Viewer && matches!(actor, Actor::Runtime { .. }) {
        return Err(runtime_forbidden());
    }
    if !role.allows(needed) {
        return Err(ApiError::Forbidden(format!(
            "this needs the {needed} role in the workspace of {} {}; you are {role}",
            target.what, target.id
        )));
    }
    Ok(role)
}

/// The workspaces the actor can read, with its role in each.
pub(crate) async fn memberships<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
) -> Result<Vec<(Uuid, Role)>, ApiError> {
    match actor {
        Actor::User { user_id, .. } => grant::Entity::find()
            .filter(grant::Column::UserId.eq(*user_id))
            .all(db)
            .await?
            .into_iter()
            .map(|g| Ok((g.workspace_id, parse_role(&g.role)?)))
            .collect(),
        Actor::Runtime { workspace_id, .. } => Ok(vec![(*workspace_id, Role::Viewer)]),
    }
}

pub(crate) fn parse_role(text: &str) -> Result<Role, ApiError> {
    text.parse()
        .map_err(|e| ApiError::internal("reading a grant's role", e))
}
