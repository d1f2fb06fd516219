//! The runner fleet, for platform operators: the runners with their status, capacity and
//! use; adding a runner (its credential is shown once) and revoking one. Each change is an
//! operation and an audit row; anyone else is FORBIDDEN.

use rhone_core::{Name, OperationKind};
use rhone_schema::{
    begin_write,
    entity::{cell, operation, region, runner, user},
    fleet::{self, Usage},
    new_id,
};
use sea_orm::{DatabaseConnection, EntityTrait};
use serde_json::json;

use crate::{
    auth::Actor,
    error::ApiError,
    record::{self, Mutation},
    service::validate,
};

/// Fails unless the actor is a platform operator; `what` names what they manage.
pub(crate) async fn require_operator(
    db: &DatabaseConnection,
    actor: &Actor,
    what: &str,
) -> Result<(), ApiError> {
    let forbidden = || {
        ApiError::Forbidden(format!(
            "{what} are managed by platform operators; you are not one"
        ))
    };
    let Actor::User { user_id, .. } = actor else {
        return Err(forbidden());
    };
    let user = user::Entity::find_by_id(*user_id).one(db).await?;
    if user.is_some_and(|u| u.operator) {
        Ok(())
    } else {
        Err(forbidden())
    }
}

/// Every runner with its cell, region and what is placed on it, by name.
pub(crate) async fn list(
    db: &DatabaseConnection,
    actor: &Actor,
) -> Result<Vec<(runner::Model, cell::Model, region::Model, Usage)>, ApiError> {
    require_operator(db, actor, "runners").await?;
    Ok(fleet::runners_with_usage(db).await?)
}

/// A runner an operator added, with its credential in clear (shown this once).
pub(crate) struct AddedRunner {
    pub runner: runner::Model,
    pub credential: rhone_core::Secret,
    pub operation: operation::Model,
}

pub(crate) async fn add(
    db: &DatabaseConnection,
    actor: &Actor,
    name: &str,
    region_name: &str,
    cell_name: &str,
) -> Result<AddedRunner, ApiError> {
    require_operator(db, actor, "runners").await?;
    let name: Name = validate::name("name", name)?;
    let region_name = validate::name("region", region_name)?;
    let cell_name = validate::name("cell", cell_name)?;
    let txn = begin_write(db).await?;
    let (runner, credential) = fleet::add_runner(
        &txn,
        region_name.as_str(),
        cell_name.as_str(),
        name.as_str(),
    )
    .await
    .map_err(|e| match e {
        rhone_schema::SchemaError::Conflict { .. } => {
            ApiError::Conflict(format!("runner {name} exists"))
        }
        other => other.into(),
    })?;
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::RunnerAdd,
        action: "runner.add",
        actor: actor.subject(),
        workspace_id: None,
        target_type: "runner",
        target_id: runner.name.clone(),
        detail: json!({ "region": region_name.as_str(), "cell": cell_name.as_str() }),
    };
    let operation = record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(runner = %runner.name, "runner added");
    Ok(AddedRunner {
        runner,
        credential,
        operation,
    })
}

pub(crate) async fn revoke(
    db: &DatabaseConnection,
    actor: &Actor,
    name: &str,
) -> Result<runner::Model, ApiError> {
    require_operator(db, actor, "runners").await?;
    let txn = begin_write(db).await?;
    let (runner, from) = fleet::revoke_runner(&txn, name).await?;
    // Nothing of a revoked host stays routable.
    let fenced = fleet::fence_in(
        &txn,
        runner.id,
        &[],
        &format!("runner {} revoked", runner.name),
        &actor.subject(),
    )
    .await?;
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::RunnerRevoke,
        action: "runner.revoke",
        actor: actor.subject(),
        workspace_id: None,
        target_type: "runner",
        target_id: runner.name.clone(),
        detail: json!({
            "from": from,
            "fenced": fenced.iter().map(|a| a.id).collect::<Vec<_>>(),
        }),
    };
    record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(runner = %runner.name, "runner revoked");
    Ok(runner)
}
