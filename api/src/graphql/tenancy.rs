//! Workspaces, projects and apps.

use async_graphql::{Context, Object, SimpleObject};
use uuid::Uuid;

use crate::{
    graphql::{
        caller,
        types::{App, Operation, Project, Workspace},
    },
    service::tenancy,
};

#[derive(Default)]
pub struct TenancyQuery;

#[Object]
impl TenancyQuery {
    /// The workspaces the caller can read.
    async fn workspaces(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Workspace>> {
        let (state, actor) = caller(ctx)?;
        let rows = tenancy::workspaces(&state.db, actor).await?;
        Ok(rows.into_iter().map(Workspace::from).collect())
    }

    async fn workspace(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Workspace> {
        let (state, actor) = caller(ctx)?;
        Ok(tenancy::workspace(&state.db, actor, id).await?.into())
    }

    /// The projects of a workspace, by name.
    async fn projects(
        &self,
        ctx: &Context<'_>,
        workspace_id: Uuid,
    ) -> async_graphql::Result<Vec<Project>> {
        let (state, actor) = caller(ctx)?;
        let rows = tenancy::projects(&state.db, actor, workspace_id).await?;
        Ok(rows.into_iter().map(Project::from).collect())
    }

    /// The apps of a project, by name.
    async fn apps(&self, ctx: &Context<'_>, project_id: Uuid) -> async_graphql::Result<Vec<App>> {
        let (state, actor) = caller(ctx)?;
        let rows = tenancy::apps(&state.db, actor, project_id).await?;
        Ok(rows.into_iter().map(App::from).collect())
    }
}

#[derive(SimpleObject)]
pub struct CreateWorkspacePayload {
    pub workspace: Workspace,
    pub operation: Operation,
}

#[derive(SimpleObject)]
pub struct CreateProjectPayload {
    pub project: Project,
    pub operation: Operation,
}

#[derive(SimpleObject)]
pub struct CreateAppPayload {
    pub app: App,
    pub operation: Operation,
}

#[derive(Default)]
pub struct TenancyMutation;

#[Object]
impl TenancyMutation {
    /// Creates a workspace; the caller becomes its owner.
    async fn create_workspace(
        &self,
        ctx: &Context<'_>,
        name: String,
        display_name: Option<String>,
    ) -> async_graphql::Result<CreateWorkspacePayload> {
        let (state, actor) = caller(ctx)?;
        let (row, op) =
            tenancy::create_workspace(&state.db, actor, &name, display_name.as_deref()).await?;
        Ok(CreateWorkspacePayload {
            workspace: row.into(),
            operation: Operation::try_from(op)?,
        })
    }

    /// Creates a project in a workspace. Needs admin.
    async fn create_project(
        &self,
        ctx: &Context<'_>,
        workspace_id: Uuid,
        name: String,
    ) -> async_graphql::Result<CreateProjectPayload> {
        let (state, actor) = caller(ctx)?;
        let (row, op) = tenancy::create_project(&state.db, actor, workspace_id, &name).await?;
        Ok(CreateProjectPayload {
            project: row.into(),
            operation: Operation::try_from(op)?,
        })
    }

    /// Creates an app in a project. Needs developer.
    async fn create_app(
        &self,
        ctx: &Context<'_>,
        project_id: Uuid,
        name: String,
    ) -> async_graphql::Result<CreateAppPayload> {
        let (state, actor) = caller(ctx)?;
        let (row, op) = tenancy::create_app(&state.db, actor, project_id, &name).await?;
        Ok(CreateAppPayload {
            app: row.into(),
            operation: Operation::try_from(op)?,
        })
    }
}
