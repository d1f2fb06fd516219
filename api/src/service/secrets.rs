//! An environment's secrets: `setSecret`, `unsetSecret` and `Environment.secrets`. A value
//! goes in and never comes out: it is sealed under the operator's key before it is written
//! (`rhone_schema::secrets`), answers and audit rows name the secret and its version, and
//! only the allocation start of the worker opens it, inside the runner's sandbox. A change
//! takes effect at the next allocation start (a deploy, a promotion, a wake, a repair):
//! running allocations keep the value they started with.

use rhone_core::{OperationKind, secret::Secret};
use rhone_schema::{
    begin_write,
    entity::{environment, operation, secret},
    new_id,
    secrets::{self, MAX_VALUE_BYTES, SecretsError},
};
use sea_orm::{ColumnTrait, EntityTrait, ModelTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    record::{self, Mutation},
    service::promotions,
};

/// What `setSecret` and `unsetSecret` did.
pub(crate) struct Changed {
    pub secret: Option<secret::Model>,
    pub environment: environment::Model,
    pub operation: operation::Model,
}

/// `DATABASE_URL` of an environment bound to a database is the binding's: set by its
/// provisioning, never by hand (a hand-set one could point a preview at production).
async fn check_not_bound<C: sea_orm::ConnectionTrait>(
    db: &C,
    env: &environment::Model,
    name: &str,
) -> Result<(), ApiError> {
    if name != "DATABASE_URL" {
        return Ok(());
    }
    if let Some(b) = rhone_schema::providers::bindings_of(db, env.id)
        .await?
        .into_iter()
        .next()
    {
        return Err(ApiError::Conflict(format!(
            "DATABASE_URL of environment {:?} belongs to its database binding (database {} on {}); bind again (`rhone databases bind`) to renew it",
            env.name, b.resource, b.provider
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ApiError> {
    match rhone_runner_protocol::variable_name_problem(name) {
        Some(problem) => Err(ApiError::invalid("name", format!("{name:?} {problem}"))),
        None if name.len() > 128 => Err(ApiError::invalid("name", "is longer than 128 bytes")),
        None => Ok(()),
    }
}

/// Sets secret `name` of an environment to `value` (version 1, or one more); needs
/// developer. Applied at once: the sealed row, its `environment_update` operation and the
/// audit row (name and version, never the value) in one transaction.
pub(crate) async fn set(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    name: &str,
    value: Secret,
) -> Result<Changed, ApiError> {
    check_name(name)?;
    if value.expose().is_empty() {
        return Err(ApiError::invalid("value", "is empty"));
    }
    if value.expose().len() > MAX_VALUE_BYTES {
        return Err(ApiError::invalid(
            "value",
            format!("is longer than {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let Some(keys) = &state.secrets else {
        return Err(ApiError::Conflict(format!(
            "this API has no secrets key, so it cannot store a secret: its operator sets {} (or {}); `rhone dev` makes one",
            secrets::KEY_VAR,
            secrets::KEY_FILE_VAR
        )));
    };
    let txn = begin_write(&state.db).await?;
    let env = promotions::environment_for(&txn, actor, environment_id).await?;
    check_not_bound(&txn, &env, name).await?;
    let row = secrets::set(&txn, keys, env.id, name, &value, &actor.subject())
        .await
        .map_err(secrets_error)?;
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::EnvironmentUpdate,
        action: "environment.set_secret",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "environment",
        target_id: env.id.to_string(),
        detail: json!({ "name": row.name, "version": row.version, "key_id": row.key_id }),
    };
    let op = record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(environment_id = %env.id, name, version = row.version, "secret set");
    Ok(Changed {
        secret: Some(row),
        environment: env,
        operation: op,
    })
}

/// Removes secret `name` of an environment; needs developer. NOT_FOUND when it is not set.
pub(crate) async fn unset(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    name: &str,
) -> Result<Changed, ApiError> {
    check_name(name)?;
    let txn = begin_write(&state.db).await?;
    let env = promotions::environment_for(&txn, actor, environment_id).await?;
    check_not_bound(&txn, &env, name).await?;
    let Some(row) = secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(env.id))
        .filter(secret::Column::Name.eq(name))
        .one(&txn)
        .await?
    else {
        return Err(ApiError::NotFound {
            what: "secret",
            id: format!("{name} of environment {:?}", env.name),
        });
    };
    let version = row.version;
    row.delete(&txn).await?;
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::EnvironmentUpdate,
        action: "environment.unset_secret",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "environment",
        target_id: env.id.to_string(),
        detail: json!({ "name": name, "version": version }),
    };
    let op = record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(environment_id = %env.id, name, "secret unset");
    Ok(Changed {
        secret: None,
        environment: env,
        operation: op,
    })
}

fn secrets_error(err: SecretsError) -> ApiError {
    match err {
        SecretsError::Schema(e) => e.into(),
        other => ApiError::internal("sealing a secret", other),
    }
}
