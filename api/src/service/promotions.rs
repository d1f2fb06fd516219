//! Promotion and rollback: `promote` records a new deployment of a validated preview's exact
//! artifact in the target environment and its operation (stage `requested`) with the audit
//! row in one transaction; `rollback` records an operation pointing the environment's route
//! back at a deployment that owned it before. Both then start `PromotionWorkflow`, which
//! checks the gates (approval, the route epoch, a safe rollback target) and moves the route.

use chrono::Utc;
use rhone_core::{
    OperationId, OperationKind, OperationStatus, Role, StateMachine, stage::DeployStage,
};
use rhone_schema::{
    begin_write,
    entity::{allocation, deployment, environment, operation, route_change, route_owner},
    new_id,
};
use rhone_workflows::{PromotionInput, PromotionWorkflow};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder,
};
use serde_json::json;
use temporalio_client::WorkflowStartOptions;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    rbac,
    record::{self, Mutation},
    service::{environments::start_failed, tenancy::app_for},
};

/// The most allocations one promotion starts.
pub(crate) const MAX_INSTANCES: u32 = 20;

/// Checks the number of allocations a promotion asks for.
pub(crate) fn instance_count(n: i32) -> Result<u32, ApiError> {
    match u32::try_from(n) {
        Ok(n @ 1..=MAX_INSTANCES) => Ok(n),
        _ => Err(ApiError::invalid(
            "instances",
            format!("must be from 1 to {MAX_INSTANCES}, got {n}"),
        )),
    }
}

/// The environment `id` and the actor's standing to move its route (developer, as for a
/// deploy; an environment that requires approval also waits for one in the workflow).
pub(crate) async fn environment_for<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
) -> Result<environment::Model, ApiError> {
    let env = environment::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("environment", id))?;
    // Answers NOT_FOUND, not FORBIDDEN, where the caller has no access to the workspace:
    // for the environment asked about, so the app's id is not told either.
    app_for(db, actor, env.app_id, Role::Developer)
        .await
        .map_err(|e| match e {
            ApiError::NotFound { .. } => ApiError::not_found("environment", id),
            other => other,
        })?;
    Ok(env)
}

/// The RouteOwner of an environment, if its route has one. An environment has one route key
/// ([`rhone_core::environment_route_key`]); should a domain change have left an older key
/// behind, the newest owner is the environment's.
pub(crate) async fn owner_of<C: ConnectionTrait>(
    db: &C,
    environment_id: Uuid,
) -> Result<Option<route_owner::Model>, ApiError> {
    Ok(route_owner::Entity::find()
        .filter(route_owner::Column::EnvironmentId.eq(environment_id))
        .order_by_desc(route_owner::Column::UpdatedAt)
        .one(db)
        .await?)
}

/// Why `dep` is not a validated preview a promotion may take its artifact from, if it is not.
async fn not_promotable<C: ConnectionTrait>(
    db: &C,
    dep: &deployment::Model,
    target: &environment::Model,
) -> Result<Option<String>, ApiError> {
    let id = dep.id;
    if dep.environment_id == target.id {
        return Ok(Some(format!(
            "deployment {id} is already in environment {:?}; promote it to another environment of the app",
            target.name
        )));
    }
    if let Some(preview) = dep.promoted_from {
        return Ok(Some(format!(
            "deployment {id} is itself a promotion of deployment {preview}; promote the validated preview deployment {preview}"
        )));
    }
    let preview_ready = DeployStage::PreviewReady.as_str();
    let deploy_op = match dep.operation_id {
        Some(op) => operation::Entity::find_by_id(op).one(db).await?,
        None => None,
    };
    let validated = dep.stage == preview_ready
        || deploy_op.as_ref().is_some_and(|op| {
            op.current_stage == preview_ready && op.status == OperationStatus::Succeeded.as_str()
        });
    if !validated {
        let why = match &deploy_op {
            Some(op) => {
                let error = op
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                format!(
                    "its deploy operation {} is {} at {}{error}",
                    op.id, op.status, op.current_stage
                )
            }
            None => format!("it is at stage {}", dep.stage),
        };
        return Ok(Some(format!(
            "deployment {id} is not a validated preview ({why}); only a deployment whose deploy reached {preview_ready} can be promoted"
        )));
    }
    if dep.artifact_digest.is_none() {
        return Ok(Some(format!("deployment {id} has no artifact")));
    }
    Ok(None)
}

/// How many allocations a rollback starts: as many as the current owner is meant to run, at
/// least one and at most [`MAX_INSTANCES`].
async fn serving_instances<C: ConnectionTrait>(
    db: &C,
    deployment_id: Uuid,
) -> Result<u32, ApiError> {
    let running = allocation::Entity::find()
        .filter(allocation::Column::DeploymentId.eq(deployment_id))
        .filter(allocation::Column::Desired.eq(rhone_schema::allocations::Desired::Run.as_str()))
        .count(db)
        .await?;
    Ok(u32::try_from(running).map_or(MAX_INSTANCES, |n| n.clamp(1, MAX_INSTANCES)))
}

/// What a started promotion or rollback needs beside its [`Mutation`].
struct Start {
    input: PromotionInput,
    /// The new deployment row of a promotion, inserted after the operation it refers to.
    deployment: Option<deployment::ActiveModel>,
}

pub(crate) async fn promote(
    state: &ApiState,
    actor: &Actor,
    deployment_id: Uuid,
    environment_id: Uuid,
    instances: i32,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let env = environment_for(db, actor, environment_id).await?;
    let instances = instance_count(instances)?;
    let source = deployment::Entity::find_by_id(deployment_id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("deployment", deployment_id))?;
    if source.app_id != env.app_id {
        // A deployment of a workspace the caller cannot see does not exist for it.
        if rbac::role_in(db, actor, source.workspace_id)
            .await?
            .is_none()
        {
            return Err(ApiError::not_found("deployment", deployment_id));
        }
        return Err(ApiError::invalid(
            "deploymentId",
            format!(
                "deployment {deployment_id} belongs to another app than environment {:?}; promote a preview deployment of the same app",
                env.name
            ),
        ));
    }
    if let Some(why) = not_promotable(db, &source, &env).await? {
        return Err(ApiError::invalid("deploymentId", why));
    }
    if env.kind == environment::KIND_PREVIEW {
        return Err(ApiError::invalid(
            "environmentId",
            format!(
                "environment {:?} is a preview environment, which deploys serve; promote to a staging or production environment",
                env.name
            ),
        ));
    }

    let operation_id = new_id();
    let new_deployment = new_id();
    let now = Utc::now();
    let row = deployment::ActiveModel {
        id: Set(new_deployment),
        workspace_id: Set(env.workspace_id),
        app_id: Set(env.app_id),
        environment_id: Set(env.id),
        artifact_digest: Set(source.artifact_digest.clone()),
        source: Set(source.source.clone()),
        stage: Set(OperationKind::Promotion.initial_stage().to_owned()),
        operation_id: Set(Some(operation_id)),
        promoted_from: Set(Some(source.id)),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let m = Mutation {
        operation_id,
        kind: OperationKind::Promotion,
        action: "deployment.promote",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "deployment",
        target_id: new_deployment.to_string(),
        detail: json!({
            "environment_id": env.id,
            "app_id": env.app_id,
            "promoted_from": source.id,
            "artifact_digest": source.artifact_digest,
            "instances": instances,
        }),
    };
    let input = PromotionInput {
        operation_id: OperationId(operation_id),
        kind: OperationKind::Promotion,
        environment_id: env.id,
        deployment_id: new_deployment,
        source_deployment_id: Some(source.id),
        expected_epoch: 0,
        instances,
    };
    let start = Start {
        input,
        deployment: Some(row),
    };
    let span = tracing::info_span!(
        "promote",
        operation_id = %operation_id,
        deployment_id = %new_deployment,
        promoted_from = %source.id
    );
    run(state, m, start).instrument(span).await
}

/// The deployment a rollback of `env` returns to: `to`, checked, or by default the last
/// deployment before the current owner that owned the route.
async fn rollback_target<C: ConnectionTrait>(
    db: &C,
    env: &environment::Model,
    owner: &route_owner::Model,
    to: Option<Uuid>,
) -> Result<Uuid, ApiError> {
    let changes =
        || route_change::Entity::find().filter(route_change::Column::RouteKey.eq(&owner.route_key));
    let Some(to) = to else {
        let earlier = changes()
            .filter(route_change::Column::DeploymentId.ne(owner.deployment_id))
            .order_by_desc(route_change::Column::Seq)
            .one(db)
            .await?;
        return earlier.map(|c| c.deployment_id).ok_or_else(|| {
            ApiError::invalid(
                "environmentId",
                format!(
                    "no deployment owned the route of environment {:?} ({}) before the current one ({}); there is nothing to roll back to",
                    env.name, owner.route_key, owner.deployment_id
                ),
            )
        });
    };
    if to == owner.deployment_id {
        return Err(ApiError::invalid(
            "to",
            format!(
                "deployment {to} already owns the route of environment {:?} (epoch {})",
                env.name, owner.epoch
            ),
        ));
    }
    let dep = deployment::Entity::find_by_id(to).one(db).await?;
    let owned = changes()
        .filter(route_change::Column::DeploymentId.eq(to))
        .one(db)
        .await?
        .is_some();
    if dep.is_none_or(|d| d.environment_id != env.id) || !owned {
        return Err(ApiError::invalid(
            "to",
            format!(
                "deployment {to} never owned the route of environment {:?} ({}); roll back to a deployment of this environment that served it before",
                env.name, owner.route_key
            ),
        ));
    }
    Ok(to)
}

pub(crate) async fn rollback(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    to: Option<Uuid>,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let env = environment_for(db, actor, environment_id).await?;
    let Some(owner) = owner_of(db, env.id).await? else {
        return Err(ApiError::invalid(
            "environmentId",
            format!(
                "environment {:?} has no route owner: nothing serves it, so there is nothing to roll back",
                env.name
            ),
        ));
    };
    let target = rollback_target(db, &env, &owner, to).await?;
    let instances = serving_instances(db, owner.deployment_id).await?;
    let operation_id = new_id();
    let m = Mutation {
        operation_id,
        kind: OperationKind::Rollback,
        action: "environment.rollback",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "deployment",
        target_id: target.to_string(),
        detail: json!({
            "environment_id": env.id,
            "app_id": env.app_id,
            "route_key": owner.route_key,
            "from_deployment_id": owner.deployment_id,
            "from_epoch": owner.epoch,
            "to_deployment_id": target,
        }),
    };
    let input = PromotionInput {
        operation_id: OperationId(operation_id),
        kind: OperationKind::Rollback,
        environment_id: env.id,
        deployment_id: target,
        source_deployment_id: None,
        expected_epoch: owner.epoch,
        instances,
    };
    let start = Start {
        input,
        deployment: None,
    };
    let span = tracing::info_span!(
        "rollback",
        operation_id = %operation_id,
        deployment_id = %target,
        route_key = %owner.route_key
    );
    run(state, m, start).instrument(span).await
}

/// Records the operation (and a promotion's deployment) with the audit row in one
/// transaction, reading the epoch the operation starts from inside it, then starts the
/// workflow.
async fn run(
    state: &ApiState,
    m: Mutation,
    mut start: Start,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let txn = begin_write(db).await?;
    if start.input.kind == OperationKind::Promotion {
        start.input.expected_epoch = owner_of(&txn, start.input.environment_id)
            .await?
            .map_or(0, |o| o.epoch);
    }
    // The operation first: the deployment row refers to it.
    let op = record::requested(&txn, &m).await?;
    if let Some(row) = start.deployment.take() {
        row.insert(&txn).await?;
    }
    txn.commit().await?;

    let input = start.input;
    let epoch = input.expected_epoch;
    let options = WorkflowStartOptions::new(state.task_queue.clone(), m.workflow_id()).build();
    match state
        .temporal
        .start_workflow(PromotionWorkflow::run, input, options)
        .await
    {
        Ok(_) => {
            tracing::info!(workflow_id = %op.workflow_id, epoch, "{} started", m.kind);
            Ok(op)
        }
        Err(err) => Err(start_failed(db, &m, err).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_bounds() {
        for ok in [1, 2, 20] {
            assert_eq!(instance_count(ok).ok(), Some(ok as u32), "{ok}");
        }
        for bad in [0, -1, 21, i32::MIN, i32::MAX] {
            assert!(instance_count(bad).is_err(), "{bad}");
        }
    }
}
