//! `migrate`: a Migration operation applying the migrations of a deployment's artifact to
//! its environment's own database. The API checks what it can read in the control DB (the
//! deployment is the environment's app's, built, and carries migrations) and records the
//! operation in `classified` with the files it names; the workflow classifies, gates, dry
//! runs, locks, applies and verifies.

use rhone_core::{OperationId, OperationKind};
use rhone_schema::{
    begin_write,
    entity::{artifact, deployment, operation},
    new_id,
};
use rhone_workflows::{MigrationInput, MigrationWorkflow};
use sea_orm::EntityTrait;
use serde_json::json;
use temporalio_client::WorkflowStartOptions;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    record::{self, Mutation},
    service::{environments::start_failed, promotions},
};

/// Starts the Migration of `environment_id`'s database to deployment `deployment_id`'s
/// migrations; needs developer.
pub(crate) async fn migrate(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    deployment_id: Uuid,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let txn = begin_write(db).await?;
    let env = promotions::environment_for(&txn, actor, environment_id).await?;
    let dep = deployment::Entity::find_by_id(deployment_id)
        .one(&txn)
        .await?
        .filter(|d| d.app_id == env.app_id)
        .ok_or_else(|| ApiError::not_found("deployment", deployment_id))?;
    let Some(digest) = dep.artifact_digest.clone() else {
        return Err(ApiError::Conflict(format!(
            "deployment {deployment_id} has no artifact yet (stage {})",
            dep.stage
        )));
    };
    let row = artifact::Entity::find_by_id(digest.clone())
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("artifact", &digest))?;
    // The recorded manifest's `migrations` (path, sha256), as `rhone-manifest` writes it.
    let files: Vec<&str> = row.manifest["migrations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["path"].as_str())
        .collect();
    if files.is_empty() {
        return Err(ApiError::Conflict(format!(
            "deployment {deployment_id}'s artifact {digest} carries no migrations ([migrations] dir of rhone.toml)"
        )));
    }
    let operation_id = new_id();
    let m = Mutation {
        operation_id,
        kind: OperationKind::Migration,
        action: "environment.migrate",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "environment",
        target_id: env.id.to_string(),
        detail: json!({ "deployment_id": deployment_id, "digest": digest }),
    };
    let evidence = json!({ "deployment_id": deployment_id, "digest": digest, "files": files });
    let op = record::requested_with(&txn, &m, evidence).await?;
    txn.commit().await?;
    let input = MigrationInput {
        operation_id: OperationId(operation_id),
        environment_id: env.id,
        digest,
        opened_by: None,
        phase: Default::default(),
    };
    let options = WorkflowStartOptions::new(state.task_queue.clone(), m.workflow_id()).build();
    match state
        .temporal
        .start_workflow(MigrationWorkflow::run, input, options)
        .await
    {
        Ok(_) => {
            tracing::info!(workflow_id = %op.workflow_id, "migration started");
            Ok(op)
        }
        Err(err) => Err(start_failed(db, &m, err).await),
    }
}
