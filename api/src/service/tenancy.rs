//! Workspaces, projects and apps: reads scoped by the caller's grants, and the synchronous
//! create mutations, each one transaction with its operation and audit row.

use chrono::Utc;
use rhone_core::{OperationKind, Role};
use rhone_schema::{
    begin_write,
    entity::{app, grant, operation, project, workspace},
    new_id,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    auth::Actor,
    error::ApiError,
    rbac::{self, Target},
    record::{self, Mutation},
    service::{conflict_as, validate},
};

/// The workspace `id` if the actor holds at least `needed` there.
pub(crate) async fn workspace_for<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
    needed: Role,
) -> Result<workspace::Model, ApiError> {
    let target = Target {
        what: "workspace",
        id,
    };
    rbac::require(db, actor, id, needed, target).await?;
    workspace::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace", id))
}

/// The project `id` if the actor holds at least `needed` in its workspace.
pub(crate) async fn project_for<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
    needed: Role,
) -> Result<project::Model, ApiError> {
    let project = project::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("project", id))?;
    let target = Target {
        what: "project",
        id,
    };
    rbac::require(db, actor, project.workspace_id, needed, target).await?;
    Ok(project)
}

/// The app `id` if the actor holds at least `needed` in its workspace.
pub(crate) async fn app_for<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
    needed: Role,
) -> Result<app::Model, ApiError> {
    let app = app::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("app", id))?;
    let target = Target { what: "app", id };
    rbac::require(db, actor, app.workspace_id, needed, target).await?;
    Ok(app)
}

/// The workspaces the actor can read, by name.
pub(crate) async fn workspaces(
    db: &DatabaseConnection,
    actor: &Actor,
) -> Result<Vec<workspace::Model>, ApiError> {
    let ids: Vec<Uuid> = rbac::memberships(db, actor)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    Ok(workspace::Entity::find()
        .filter(workspace::Column::Id.is_in(ids))
        .order_by_asc(workspace::Column::Name)
        .all(db)
        .await?)
}

pub(crate) async fn workspace(
    db: &DatabaseConnection,
    actor: &Actor,
    id: Uuid,
) -> Result<workspace::Model, ApiError> {
    workspace_for(db, actor, id, Role::Viewer).await
}

pub(crate) async fn projects(
    db: &DatabaseConnection,
    actor: &Actor,
    workspace_id: Uuid,
) -> Result<Vec<project::Model>, ApiError> {
    workspace_for(db, actor, workspace_id, Role::Viewer).await?;
    Ok(project::Entity::find()
        .filter(project::Column::WorkspaceId.eq(workspace_id))
        .order_by_asc(project::Column::Name)
        .all(db)
        .await?)
}

pub(crate) async fn apps(
    db: &DatabaseConnection,
    actor: &Actor,
    project_id: Uuid,
) -> Result<Vec<app::Model>, ApiError> {
    project_for(db, actor, project_id, Role::Viewer).await?;
    Ok(app::Entity::find()
        .filter(app::Column::ProjectId.eq(project_id))
        .order_by_asc(app::Column::Name)
        .all(db)
        .await?)
}

/// Writes a created row (by `insert`) and its applied operation, stage records and audit row
/// in one transaction; a unique-key violation of the insert answers `taken()` and writes
/// nothing. The database's unique keys are the duplicate check: no lookup before.
async fn create_applied<T>(
    db: &DatabaseConnection,
    m: &Mutation,
    taken: impl Fn() -> ApiError,
    insert: impl AsyncFnOnce(&DatabaseTransaction) -> Result<T, DbErr>,
) -> Result<(T, operation::Model), ApiError> {
    let txn = begin_write(db).await?;
    let row = insert(&txn)
        .await
        .map_err(|e| conflict_as(e.into(), &taken))?;
    let op = record::applied(&txn, m).await?;
    txn.commit().await?;
    Ok((row, op))
}

/// Creates a workspace; the creator becomes its owner. Any user may; no runtime identity.
pub(crate) async fn create_workspace(
    db: &DatabaseConnection,
    actor: &Actor,
    name: &str,
    display_name: Option<&str>,
) -> Result<(workspace::Model, operation::Model), ApiError> {
    let user_id = actor.user_id()?;
    let name = validate::name("name", name)?;
    let display_name = match display_name {
        Some(d) => validate::display_name("displayName", d)?,
        None => name.to_string(),
    };
    let taken = || {
        ApiError::Conflict(format!(
            "a workspace named {:?} already exists",
            name.as_str()
        ))
    };
    let id = new_id();
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::WorkspaceCreate,
        action: "workspace.create",
        actor: actor.subject(),
        workspace_id: Some(id),
        target_type: "workspace",
        target_id: id.to_string(),
        detail: json!({ "name": name.as_str(), "display_name": display_name }),
    };
    let span =
        tracing::info_span!("create_workspace", operation_id = %m.operation_id, workspace_id = %id);
    async {
        let created = create_applied(db, &m, taken, async |txn| {
            let now = Utc::now();
            let row = workspace::ActiveModel {
                id: Set(id),
                name: Set(name.to_string()),
                display_name: Set(display_name.clone()),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            grant::ActiveModel {
                id: Set(new_id()),
                workspace_id: Set(id),
                user_id: Set(user_id),
                role: Set(Role::Owner.as_str().to_owned()),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            Ok(row)
        })
        .await?;
        tracing::info!("workspace created");
        Ok(created)
    }
    .instrument(span)
    .await
}

/// Creates a project in a workspace; needs admin.
pub(crate) async fn create_project(
    db: &DatabaseConnection,
    actor: &Actor,
    workspace_id: Uuid,
    name: &str,
) -> Result<(project::Model, operation::Model), ApiError> {
    let ws = workspace_for(db, actor, workspace_id, Role::Admin).await?;
    let name = validate::name("name", name)?;
    let taken = || {
        ApiError::Conflict(format!(
            "a project named {:?} already exists in workspace {:?}",
            name.as_str(),
            ws.name
        ))
    };
    let id = new_id();
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::ProjectCreate,
        action: "project.create",
        actor: actor.subject(),
        workspace_id: Some(workspace_id),
        target_type: "project",
        target_id: id.to_string(),
        detail: json!({ "name": name.as_str() }),
    };
    let span =
        tracing::info_span!("create_project", operation_id = %m.operation_id, project_id = %id);
    async {
        let created = create_applied(db, &m, taken, async |txn| {
            project::ActiveModel {
                id: Set(id),
                workspace_id: Set(workspace_id),
                name: Set(name.to_string()),
                created_at: Set(Utc::now()),
            }
            .insert(txn)
            .await
        })
        .await?;
        tracing::info!("project created");
        Ok(created)
    }
    .instrument(span)
    .await
}

/// Creates an app in a project; needs developer.
pub(crate) async fn create_app(
    db: &DatabaseConnection,
    actor: &Actor,
    project_id: Uuid,
    name: &str,
) -> Result<(app::Model, operation::Model), ApiError> {
    let project = project_for(db, actor, project_id, Role::Developer).await?;
    let name = validate::name("name", name)?;
    let taken = || {
        ApiError::Conflict(format!(
            "an app named {:?} already exists in project {:?}",
            name.as_str(),
            project.name
        ))
    };
    let id = new_id();
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::AppCreate,
        action: "app.create",
        actor: actor.subject(),
        workspace_id: Some(project.workspace_id),
        target_type: "app",
        target_id: id.to_string(),
        detail: json!({ "name": name.as_str(), "project_id": project_id }),
    };
    let span = tracing::info_span!("create_app", operation_id = %m.operation_id, app_id = %id);
    async {
        let created = create_applied(db, &m, taken, async |txn| {
            app::ActiveModel {
                id: Set(id),
                workspace_id: Set(project.workspace_id),
                project_id: Set(project_id),
                name: Set(name.to_string()),
                created_at: Set(Utc::now()),
            }
            .insert(txn)
            .await
        })
        .await?;
        tracing::info!("app created");
        Ok(created)
    }
    .instrument(span)
    .await
}
