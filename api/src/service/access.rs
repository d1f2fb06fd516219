//! Who the caller is (`me`), role grants and the caller's own API tokens.

use chrono::Utc;
use rhone_core::{OperationKind, Role};
use rhone_schema::{
    begin_write,
    entity::{api_token, app, grant, operation, user, workspace},
    new_id,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    auth::{self, Actor, NewToken, TokenOwner},
    error::ApiError,
    rbac,
    record::{self, Mutation},
    service::{tenancy::workspace_for, validate},
};

/// The caller as `me` shows it.
pub(crate) struct Me {
    pub actor: Actor,
    pub user: Option<user::Model>,
    pub memberships: Vec<(workspace::Model, Role)>,
}

pub(crate) async fn me(db: &DatabaseConnection, actor: &Actor) -> Result<Me, ApiError> {
    let user = match actor {
        Actor::User { user_id, .. } => Some(
            user::Entity::find_by_id(*user_id)
                .one(db)
                .await?
                .ok_or_else(|| {
                    ApiError::internal("reading the caller", "token of a missing user")
                })?,
        ),
        Actor::Runtime { .. } => None,
    };
    let roles = rbac::memberships(db, actor).await?;
    let ids: Vec<Uuid> = roles.iter().map(|(id, _)| *id).collect();
    let workspaces = workspace::Entity::find()
        .filter(workspace::Column::Id.is_in(ids))
        .order_by_asc(workspace::Column::Name)
        .all(db)
        .await?;
    let memberships = workspaces
        .into_iter()
        .filter_map(|w| {
            let role = roles.iter().find(|(id, _)| *id == w.id)?.1;
            Some((w, role))
        })
        .collect();
    Ok(Me {
        actor: actor.clone(),
        user,
        memberships,
    })
}

/// A grant as `grantRole` answers it.
pub(crate) struct Granted {
    pub grant: grant::Model,
    pub user: user::Model,
    pub operation: operation::Model,
}

/// Gives the user with `email` (created if new) `role` in a workspace. Needs admin, and
/// owner to grant or change an owner. The last owner cannot be demoted.
pub(crate) async fn grant_role(
    db: &DatabaseConnection,
    actor: &Actor,
    workspace_id: Uuid,
    email: &str,
    role: Role,
) -> Result<Granted, ApiError> {
    let ws = workspace_for(db, actor, workspace_id, Role::Admin).await?;
    let mine = rbac::role_in(db, actor, workspace_id)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace", workspace_id))?;
    let owner_only = || {
        ApiError::Forbidden(format!(
            "only an owner of workspace {:?} may grant or change the owner role",
            ws.name
        ))
    };
    if role == Role::Owner && mine != Role::Owner {
        return Err(owner_only());
    }
    let email = validate::email(email)?;
    let operation_id = new_id();
    let span = tracing::info_span!("grant_role", operation_id = %operation_id, %workspace_id, role = role.as_str());
    async {
        let txn = begin_write(db).await?;
        let existing_user = user::Entity::find()
            .filter(user::Column::Email.eq(email.as_str()))
            .one(&txn)
            .await?;
        let existing_grant = match &existing_user {
            Some(u) => {
                grant::Entity::find()
                    .filter(grant::Column::WorkspaceId.eq(workspace_id))
                    .filter(grant::Column::UserId.eq(u.id))
                    .one(&txn)
                    .await?
            }
            None => None,
        };
        let now = Utc::now();
        let user = match existing_user {
            Some(u) => u,
            None => {
                user::ActiveModel {
                    id: Set(new_id()),
                    email: Set(email.clone()),
                    display_name: Set(email.clone()),
                    created_at: Set(now),
                    operator: Set(false),
                }
                .insert(&txn)
                .await?
            }
        };
        let (grant, action, previous) = match existing_grant {
            Some(g) => {
                let previous = rbac::parse_role(&g.role)?;
                if previous == role {
                    return Err(ApiError::Conflict(format!(
                        "{email} already holds the {role} role in workspace {:?}",
                        ws.name
                    )));
                }
                if previous == Role::Owner {
                    if mine != Role::Owner {
                        return Err(owner_only());
                    }
                    let owners = grant::Entity::find()
                        .filter(grant::Column::WorkspaceId.eq(workspace_id))
                        .filter(grant::Column::Role.eq(Role::Owner.as_str()))
                        .count(&txn)
                        .await?;
                    if owners <= 1 {
                        return Err(ApiError::Conflict(format!(
                            "{email} is the last owner of workspace {:?}; grant another owner first",
                            ws.name
                        )));
                    }
                }
                let mut g: grant::ActiveModel = g.into();
                g.role = Set(role.as_str().to_owned());
                (g.update(&txn).await?, "grant.update", Some(previous))
            }
            None => {
                let g = grant::ActiveModel {
                    id: Set(new_id()),
                    workspace_id: Set(workspace_id),
                    user_id: Set(user.id),
                    role: Set(role.as_str().to_owned()),
                    created_at: Set(now),
                }
                .insert(&txn)
                .await?;
                (g, "grant.create", None)
            }
        };
        let m = Mutation {
            operation_id,
            kind: OperationKind::GrantCreate,
            action,
            actor: actor.subject(),
            workspace_id: Some(workspace_id),
            target_type: "grant",
            target_id: grant.id.to_string(),
            detail: json!({
                "user_id": user.id,
                "email": email,
                "role": role.as_str(),
                "previous_role": previous.map(Role::as_str),
            }),
        };
        let operation = record::applied(&txn, &m).await?;
        txn.commit().await?;
        tracing::info!(user_id = %user.id, "role granted");
        Ok(Granted {
            grant,
            user,
            operation,
        })
    }
    .instrument(span)
    .await
}

/// Creates an API token for the calling user, lasting `expires_in_days` (default
/// [`auth::DEFAULT_TOKEN_DAYS`], at most [`auth::MAX_TOKEN_DAYS`]). Runtime identities
/// cannot create tokens.
pub(crate) async fn create_token(
    db: &DatabaseConnection,
    actor: &Actor,
    name: &str,
    expires_in_days: Option<i32>,
) -> Result<NewToken, ApiError> {
    let user_id = actor.user_id()?;
    let days = auth::lifetime_days(expires_in_days)?;
    auth::create_token(db, actor.subject(), TokenOwner::User(user_id), name, days).await
}

/// The calling user's tokens, newest first (names, prefixes and dates; never a token).
pub(crate) async fn tokens(
    db: &DatabaseConnection,
    actor: &Actor,
) -> Result<Vec<api_token::Model>, ApiError> {
    let user_id = actor.user_id()?;
    Ok(api_token::Entity::find()
        .filter(api_token::Column::UserId.eq(user_id))
        .order_by_desc(api_token::Column::CreatedAt)
        .all(db)
        .await?)
}

/// Revokes a token: one of the caller's own, or, for an admin of its workspace, an app's
/// runtime token. From the commit on, its requests are refused and its open subscriptions
/// end at their next poll. Another user's token is NOT_FOUND.
pub(crate) async fn revoke_token(
    db: &DatabaseConnection,
    actor: &Actor,
    token_id: Uuid,
) -> Result<(api_token::Model, operation::Model), ApiError> {
    let caller = actor.user_id()?;
    let not_found = || ApiError::not_found("token", token_id);
    let row = api_token::Entity::find_by_id(token_id)
        .one(db)
        .await?
        .ok_or_else(not_found)?;
    let workspace_id = match (row.user_id, row.app_id) {
        (Some(owner), None) if owner == caller => None,
        (None, Some(app_id)) => {
            let app = app::Entity::find_by_id(app_id)
                .one(db)
                .await?
                .ok_or_else(not_found)?;
            let target = rbac::Target {
                what: "token",
                id: token_id,
            };
            rbac::require(db, actor, app.workspace_id, Role::Admin, target).await?;
            Some(app.workspace_id)
        }
        _ => return Err(not_found()),
    };
    if let Some(at) = row.revoked_at {
        return Err(ApiError::Conflict(format!(
            "token {} ({}…) was already revoked at {at}",
            row.name, row.prefix
        )));
    }
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::TokenRevoke,
        action: "token.revoke",
        actor: actor.subject(),
        workspace_id,
        target_type: "api_token",
        target_id: token_id.to_string(),
        detail: json!({ "name": row.name, "prefix": row.prefix, "kind": row.kind }),
    };
    let txn = begin_write(db).await?;
    let now = Utc::now();
    let changed = api_token::Entity::update_many()
        .col_expr(
            api_token::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(now),
        )
        .filter(api_token::Column::Id.eq(token_id))
        .filter(api_token::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if changed.rows_affected == 0 {
        return Err(ApiError::Conflict(format!(
            "token {} ({}…) was revoked meanwhile",
            row.name, row.prefix
        )));
    }
    let operation = record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(%token_id, prefix = %row.prefix, "token revoked");
    let row = api_token::Model {
        revoked_at: Some(now),
        ..row
    };
    Ok((row, operation))
}
