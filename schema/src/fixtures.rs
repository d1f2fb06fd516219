//! Rows tests build on: a workspace down to an environment, artifacts, deployments and a
//! placed allocation, with every reference consistent. Behind the `fixtures` feature, which
//! only test builds turn on (`rhone-schema = { features = ["fixtures"] }` in
//! `[dev-dependencies]`).

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait};
use serde_json::json;

use crate::{
    SchemaError,
    allocations::{NewAllocation, create_allocation},
    entity::{allocation, app, artifact, cell, deployment, environment, project, workspace},
    new_id,
    topology::ensure_runner,
};

/// A workspace with one project (`shop`), one app (`web`) and one environment.
#[derive(Debug, Clone)]
pub struct Tenancy {
    pub workspace: workspace::Model,
    pub project: project::Model,
    pub app: app::Model,
    pub environment: environment::Model,
}

/// Creates workspace `name` with `shop/web` and an environment named and kinded `env`.
pub async fn tenancy<C: ConnectionTrait>(
    db: &C,
    name: &str,
    env: &str,
) -> Result<Tenancy, SchemaError> {
    let now = Utc::now();
    let workspace = workspace::ActiveModel {
        id: Set(new_id()),
        name: Set(name.to_owned()),
        display_name: Set(name.to_uppercase()),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    let project = project::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(workspace.id),
        name: Set("shop".into()),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    let app = app::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(workspace.id),
        project_id: Set(project.id),
        name: Set("web".into()),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    let environment = environment::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(workspace.id),
        app_id: Set(app.id),
        name: Set(env.to_owned()),
        kind: Set(env.to_owned()),
        requires_approval: Set(env == "production"),
        self_approval: Set(true),
        scale_to_zero: Set(false),
        wake_budget_ms: Set(environment::DEFAULT_WAKE_BUDGET_MS),
        sleep_after_ms: Set(environment::DEFAULT_SLEEP_AFTER_MS),
        wake_state: Set(environment::WAKE_STATE_HOT.into()),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    Ok(Tenancy {
        workspace,
        project,
        app,
        environment,
    })
}

/// The digest made from `n`: `sha256:` and `n` in 64 hex digits.
pub fn digest(n: u64) -> String {
    format!("sha256:{n:064x}")
}

/// Records an artifact row for `digest` with an empty manifest.
pub async fn artifact<C: ConnectionTrait>(
    db: &C,
    digest: &str,
) -> Result<artifact::Model, SchemaError> {
    Ok(artifact::ActiveModel {
        digest: Set(digest.to_owned()),
        size_bytes: Set(1),
        manifest: Set(json!({})),
        store_uri: Set(format!("local://{digest}")),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await?)
}

/// A deployment of `digest` (recorded already) to the tenancy's environment, in `stage`.
pub async fn deployment<C: ConnectionTrait>(
    db: &C,
    t: &Tenancy,
    digest: &str,
    stage: &str,
) -> Result<deployment::Model, SchemaError> {
    let now = Utc::now();
    Ok(deployment::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(t.workspace.id),
        app_id: Set(t.app.id),
        environment_id: Set(t.environment.id),
        artifact_digest: Set(Some(digest.to_owned())),
        source: Set(json!({ "repository": "test", "ref": "main" })),
        stage: Set(stage.to_owned()),
        operation_id: Set(None),
        promoted_from: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await?)
}

/// The cell of runner `r1` in `local/local-a` (registered if new).
pub async fn local_cell<C: ConnectionTrait>(
    db: &C,
) -> Result<(cell::Model, uuid::Uuid), SchemaError> {
    let runner = ensure_runner(db, "local", "local-a", "r1", "http://127.0.0.1:1").await?;
    let cell = cell::Entity::find_by_id(runner.cell_id)
        .one(db)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "cell",
            id: runner.cell_id.to_string(),
        })?;
    Ok((cell, runner.id))
}

/// An allocation of the deployment's artifact on runner `r1`, at generation 1, planned.
pub async fn allocation<C: ConnectionTrait>(
    db: &C,
    d: &deployment::Model,
) -> Result<allocation::Model, SchemaError> {
    let (cell, runner_id) = local_cell(db).await?;
    create_allocation(
        db,
        NewAllocation {
            id: new_id(),
            deployment_id: d.id,
            artifact_digest: d.artifact_digest.clone().unwrap_or_default(),
            runner_id: Some(runner_id),
            region_id: cell.region_id,
            cell_id: cell.id,
            memory_mb: 512,
            cpu_millis: 1000,
        },
    )
    .await
}
