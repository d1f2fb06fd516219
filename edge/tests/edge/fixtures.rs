//! Control DB rows the edge reads: a fresh SQLite file per test with one workspace, project,
//! app, environment, region and cell, and helpers for deployments, owners and allocations.

use anyhow::Result;
use chrono::Utc;
use rhone_schema::{
    entity::{allocation, deployment, route_owner},
    fixtures, new_id,
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

pub struct Db {
    pub conn: DatabaseConnection,
    workspace: Uuid,
    app: Uuid,
    environment: Uuid,
    region: Uuid,
    cell: Uuid,
    _dir: TempDir,
}

/// A deployment of an artifact.
#[derive(Clone)]
pub struct Deployment {
    pub id: Uuid,
    pub digest: String,
}

impl Db {
    pub async fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("control.db").display()
        );
        let conn = rhone_schema::connect(&url).await?;
        rhone_schema::migrate(&conn).await?;
        let t = fixtures::tenancy(&conn, "acme", "preview").await?;
        let (cell, _) = fixtures::local_cell(&conn).await?;
        Ok(Self {
            conn,
            workspace: t.workspace.id,
            app: t.app.id,
            environment: t.environment.id,
            region: cell.region_id,
            cell: cell.id,
            _dir: dir,
        })
    }

    /// An artifact whose digest is made from `n`.
    pub async fn artifact(&self, n: u64) -> Result<String> {
        let digest = fixtures::digest(n);
        fixtures::artifact(&self.conn, &digest).await?;
        Ok(digest)
    }

    pub async fn deployment(&self, digest: &str) -> Result<Deployment> {
        let now = Utc::now();
        let d = deployment::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(self.workspace),
            app_id: Set(self.app),
            environment_id: Set(self.environment),
            artifact_digest: Set(Some(digest.to_owned())),
            source: Set(json!({"repo": "test", "ref": "main", "commit": "0"})),
            stage: Set("preview_ready".into()),
            operation_id: Set(None),
            promoted_from: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&self.conn)
        .await?;
        Ok(Deployment {
            id: d.id,
            digest: digest.to_owned(),
        })
    }

    /// Makes `deployment` the owner of `route_key` at `epoch`.
    pub async fn owner(&self, route_key: &str, deployment: &Deployment, epoch: i64) -> Result<()> {
        route_owner::ActiveModel {
            route_key: Set(route_key.to_owned()),
            environment_id: Set(self.environment),
            deployment_id: Set(deployment.id),
            artifact_digest: Set(deployment.digest.clone()),
            region_id: Set(self.region),
            cell_id: Set(self.cell),
            epoch: Set(epoch),
            operation_id: Set(None),
            promoted_from: Set(None),
            updated_at: Set(Utc::now()),
        }
        .insert(&self.conn)
        .await?;
        Ok(())
    }

    /// An allocation of `deployment` running `digest`, in `stage`, desired `desired`.
    pub async fn allocation(
        &self,
        deployment: &Deployment,
        digest: &str,
        stage: &str,
        desired: &str,
        address: Option<&str>,
    ) -> Result<Uuid> {
        let now = Utc::now();
        let a = allocation::ActiveModel {
            id: Set(new_id()),
            deployment_id: Set(deployment.id),
            artifact_digest: Set(digest.to_owned()),
            runner_id: Set(None),
            region_id: Set(self.region),
            cell_id: Set(self.cell),
            generation: Set(1),
            desired: Set(desired.to_owned()),
            stage: Set(stage.to_owned()),
            address: Set(address.map(str::to_owned)),
            exit_status: Set(None),
            last_report_at: Set(Some(now)),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&self.conn)
        .await?;
        Ok(a.id)
    }

    /// A ready allocation of `deployment`'s own artifact at `address`.
    pub async fn ready(&self, deployment: &Deployment, address: &str) -> Result<Uuid> {
        self.allocation(
            deployment,
            &deployment.digest,
            "ready",
            "run",
            Some(address),
        )
        .await
    }
}
