//! Bearer-token authentication. A token is `rhone_` followed by 43 random base62
//! characters (about 256 bits); only its SHA-256 is stored, with a short display prefix.
//! A token belongs to a human user or to an app's runtime identity, which becomes the
//! request's [`Actor`].

use std::fmt;

use chrono::Utc;
use rand::{Rng, distr::Alphanumeric};
use rhone_core::{Name, OperationKind};
use rhone_schema::{
    begin_write,
    entity::{api_token, app, user},
    new_id,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, PaginatorTrait, QueryFilter, TransactionTrait, sea_query::Expr,
};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    error::ApiError,
    record::{self, Mutation},
};

/// Every clear token starts with this.
pub const TOKEN_PREFIX: &str = "rhone_";
/// Random characters after [`TOKEN_PREFIX`].
const TOKEN_RANDOM_LEN: usize = 43;
/// Characters of the clear token kept in `prefix` for display: `rhone_` and six more.
const DISPLAY_PREFIX_LEN: usize = 12;
/// How long a new token lasts unless its creator says otherwise.
pub const DEFAULT_TOKEN_DAYS: u32 = 90;
/// The longest a token may last.
pub const MAX_TOKEN_DAYS: u32 = 365;
/// `last_used_at` is written when it is older than this (one write a minute per token at
/// most, not one per request).
const LAST_USED_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Who is calling: a user, or an app's runtime identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    User {
        user_id: Uuid,
        token_id: Uuid,
    },
    /// An app's runtime identity. It belongs to the app's workspace and may read it, but
    /// never changes tenancy.
    Runtime {
        app_id: Uuid,
        workspace_id: Uuid,
        token_id: Uuid,
    },
}

impl Actor {
    /// The `actor` of operations and audit rows: `user:<uuid>` or `runtime:<app uuid>`.
    pub fn subject(&self) -> String {
        self.to_string()
    }

    /// The token the actor called with.
    pub(crate) fn token_id(&self) -> Uuid {
        match self {
            Actor::User { token_id, .. } | Actor::Runtime { token_id, .. } => *token_id,
        }
    }

    /// The user behind the actor, or FORBIDDEN for a runtime identity.
    pub(crate) fn user_id(&self) -> Result<Uuid, ApiError> {
        match self {
            Actor::User { user_id, .. } => Ok(*user_id),
            Actor::Runtime { .. } => Err(runtime_forbidden()),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User { user_id, .. } => write!(f, "user:{user_id}"),
            Actor::Runtime { app_id, .. } => write!(f, "runtime:{app_id}"),
        }
    }
}

pub(crate) fn runtime_forbidden() -> ApiError {
    ApiError::Forbidden(
        "app runtime identities cannot change workspaces, projects, apps, environments, grants, tokens or operations"
            .to_owned(),
    )
}

/// The actor of an `Authorization` header. No header is `Ok(None)` (the caller decides
/// what an anonymous request may do); a malformed, unknown or revoked token is
/// UNAUTHENTICATED.
pub(crate) async fn authenticate(
    db: &DatabaseConnection,
    header: Option<&str>,
) -> Result<Option<Actor>, ApiError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| well_formed(t))
        .ok_or(ApiError::Unauthenticated)?;
    let row = api_token::Entity::find()
        .filter(api_token::Column::TokenHash.eq(api_token::hash_token(token)))
        .one(db)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    usable(&row)?;
    let now = Utc::now();
    if row
        .last_used_at
        .is_none_or(|at| now - at >= LAST_USED_EVERY)
    {
        api_token::Entity::update_many()
            .col_expr(api_token::Column::LastUsedAt, Expr::value(now))
            .filter(api_token::Column::Id.eq(row.id))
            .exec(db)
            .await?;
    }
    let actor = match (row.kind.as_str(), row.user_id, row.app_id) {
        (api_token::KIND_USER, Some(user_id), None) => Actor::User {
            user_id,
            token_id: row.id,
        },
        (api_token::KIND_RUNTIME, None, Some(app_id)) => {
            let app = app::Entity::find_by_id(app_id)
                .one(db)
                .await?
                .ok_or(ApiError::Unauthenticated)?;
            Actor::Runtime {
                app_id,
                workspace_id: app.workspace_id,
                token_id: row.id,
            }
        }
        (kind, _, _) => {
            tracing::warn!(token_id = %row.id, kind, "token with an unknown owner refused");
            return Err(ApiError::Unauthenticated);
        }
    };
    Ok(Some(actor))
}

/// Refuses a revoked or expired token.
fn usable(row: &api_token::Model) -> Result<(), ApiError> {
    if row.revoked_at.is_some() {
        return Err(ApiError::TokenRevoked);
    }
    match row.expires_at {
        Some(at) if at <= Utc::now() => Err(ApiError::TokenExpired(at)),
        _ => Ok(()),
    }
}

/// Whether the token `token_id` is still accepted: what a long-lived stream (a
/// subscription) checks as it goes, so a revoked or expired token's streams end.
pub(crate) async fn still_usable(db: &DatabaseConnection, token_id: Uuid) -> Result<(), ApiError> {
    let row = api_token::Entity::find_by_id(token_id)
        .one(db)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    usable(&row)
}

/// A token's lifetime in days, checked: `None` is [`DEFAULT_TOKEN_DAYS`].
pub(crate) fn lifetime_days(days: Option<i32>) -> Result<u32, ApiError> {
    match days {
        None => Ok(DEFAULT_TOKEN_DAYS),
        Some(d) if (1..=MAX_TOKEN_DAYS as i32).contains(&d) => Ok(d as u32),
        Some(_) => Err(ApiError::invalid(
            "expiresInDays",
            format!("must be between 1 and {MAX_TOKEN_DAYS}"),
        )),
    }
}

fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == TOKEN_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// A fresh clear token. It is returned to its owner once and never stored.
fn generate() -> String {
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(TOKEN_RANDOM_LEN)
        .map(char::from)
        .collect();
    format!("{TOKEN_PREFIX}{random}")
}

/// Whose token to create.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TokenOwner {
    User(Uuid),
    Runtime { app_id: Uuid, workspace_id: Uuid },
}

/// A created token: the clear value (shown once) and what may be shown again.
pub(crate) struct NewToken {
    pub id: Uuid,
    pub clear: String,
    pub prefix: String,
    pub expires_at: chrono::DateTime<Utc>,
    pub operation: rhone_schema::entity::operation::Model,
}

/// Creates a token with its operation and audit row, in one transaction.
pub(crate) async fn create_token(
    db: &DatabaseConnection,
    actor: String,
    owner: TokenOwner,
    name: &str,
    days: u32,
) -> Result<NewToken, ApiError> {
    let txn = begin_write(db).await?;
    let token = insert_token(&txn, actor, owner, name, days).await?;
    txn.commit().await?;
    Ok(token)
}

/// Writes a token, its operation and its audit row in `txn`; the caller commits.
async fn insert_token<C>(
    txn: &C,
    actor: String,
    owner: TokenOwner,
    name: &str,
    days: u32,
) -> Result<NewToken, ApiError>
where
    C: ConnectionTrait + TransactionTrait,
{
    let name = Name::parse(name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    let clear = generate();
    let prefix = clear[..DISPLAY_PREFIX_LEN].to_owned();
    let token_id = new_id();
    let (kind, user_id, app_id, workspace_id) = match owner {
        TokenOwner::User(user_id) => (api_token::KIND_USER, Some(user_id), None, None),
        TokenOwner::Runtime {
            app_id,
            workspace_id,
        } => (
            api_token::KIND_RUNTIME,
            None,
            Some(app_id),
            Some(workspace_id),
        ),
    };
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::TokenCreate,
        action: "token.create",
        actor,
        workspace_id,
        target_type: "api_token",
        target_id: token_id.to_string(),
        detail: json!({ "name": name.as_str(), "prefix": prefix, "kind": kind, "expires_in_days": days }),
    };
    let expires_at = Utc::now() + chrono::TimeDelta::days(i64::from(days));
    let span = tracing::info_span!("create_token", operation_id = %m.operation_id, %token_id);
    async {
        api_token::ActiveModel {
            id: Set(token_id),
            user_id: Set(user_id),
            app_id: Set(app_id),
            kind: Set(kind.to_owned()),
            name: Set(name.to_string()),
            token_hash: Set(api_token::hash_token(&clear)),
            prefix: Set(prefix.clone()),
            created_at: Set(Utc::now()),
            last_used_at: Set(None),
            revoked_at: Set(None),
            expires_at: Set(Some(expires_at)),
        }
        .insert(txn)
        .await?;
        let operation = record::applied(txn, &m).await?;
        tracing::info!(%prefix, "token created");
        Ok(NewToken {
            id: token_id,
            clear,
            prefix,
            expires_at,
            operation,
        })
    }
    .instrument(span)
    .await
}

/// On a fresh control DB (no user yet), creates the user `email` and a token for it and
/// returns the clear token, once. Otherwise returns `None` and changes nothing. `rhone dev`
/// calls this on first start and prints the token.
///
/// The user gets no workspace: it creates its own with `createWorkspace` and becomes its
/// owner. It is the platform's first operator (it manages runners).
pub async fn bootstrap_admin(
    db: &DatabaseConnection,
    email: &str,
) -> Result<Option<String>, ApiError> {
    let email = crate::service::validate::email(email)?;
    // One writer at a time: two concurrent first starts create one user.
    let txn = begin_write(db).await?;
    if user::Entity::find().count(&txn).await? > 0 {
        return Ok(None);
    }
    let user_id = new_id();
    user::ActiveModel {
        id: Set(user_id),
        email: Set(email.clone()),
        display_name: Set(email),
        created_at: Set(Utc::now()),
        operator: Set(true),
    }
    .insert(&txn)
    .await?;
    let token = insert_token(
        &txn,
        "system".to_owned(),
        TokenOwner::User(user_id),
        "bootstrap",
        MAX_TOKEN_DAYS,
    )
    .await?;
    txn.commit().await?;
    Ok(Some(token.clear))
}

/// `clear` if the API still accepts it; else, for a revoked or expired token of a user, a
/// fresh token of the same user (named like the old one) in clear, once. `rhone dev` keeps
/// its admin token in its data directory and renews it this way at start.
pub async fn usable_or_renewed(db: &DatabaseConnection, clear: &str) -> Result<String, ApiError> {
    let row = api_token::Entity::find()
        .filter(api_token::Column::TokenHash.eq(api_token::hash_token(clear)))
        .one(db)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if usable(&row).is_ok() {
        return Ok(clear.to_owned());
    }
    let user_id = row.user_id.ok_or(ApiError::Unauthenticated)?;
    issue_token(db, user_id, &row.name).await
}

/// Creates a token for an existing user and returns it in clear, once (an operator's
/// command; the operation and audit rows name `system` as the actor).
pub async fn issue_token(
    db: &DatabaseConnection,
    user_id: Uuid,
    name: &str,
) -> Result<String, ApiError> {
    user::Entity::find_by_id(user_id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("user", user_id))?;
    let token = create_token(
        db,
        "system".to_owned(),
        TokenOwner::User(user_id),
        name,
        MAX_TOKEN_DAYS,
    )
    .await?;
    Ok(token.clear)
}

/// Creates a runtime-identity token for an app and returns it in clear, once. The
/// deployment pipeline hands it to the app's allocations.
pub async fn issue_runtime_token(
    db: &DatabaseConnection,
    app_id: Uuid,
    name: &str,
) -> Result<String, ApiError> {
    let app = app::Entity::find_by_id(app_id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("app", app_id))?;
    let owner = TokenOwner::Runtime {
        app_id,
        workspace_id: app.workspace_id,
    };
    let token = create_token(db, "system".to_owned(), owner, name, DEFAULT_TOKEN_DAYS).await?;
    Ok(token.clear)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + TOKEN_RANDOM_LEN);
        assert!(well_formed(&a), "{a}");
        assert!(!well_formed("rhone_short"));
        assert!(!well_formed(&a.replace(TOKEN_PREFIX, "other_")));
        assert!(!well_formed(&format!("{}!", &a[..a.len() - 1])));
    }

    #[test]
    fn actor_subjects() {
        let id = Uuid::nil();
        let user = Actor::User {
            user_id: id,
            token_id: id,
        };
        assert_eq!(user.subject(), format!("user:{id}"));
        let runtime = Actor::Runtime {
            app_id: id,
            workspace_id: id,
            token_id: id,
        };
        assert_eq!(runtime.subject(), format!("runtime:{id}"));
        assert!(runtime.user_id().is_err());
    }
}
