//! Control DB rows the edge reads: a fresh SQLite file per test with one workspace, project,
//! app, environment, region and cell, and helpers for deployments, owners and allocations.

use anyhow::Result;
use chrono::Utc;
use rhone_schema::{
    entity::{
        allocation, app, artifact, cell, deployment, environment, project, region, route_owner,
        workspace,
    },
    new_id,
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
        let now = Utc::now();
        let ws = workspace::ActiveModel {
            id: Set(new_id()),
            name: Set("acme".into()),
            display_name: Set("Acme".into()),
            created_at: Set(now),
        }
        .insert(&conn)
        .await?;
        let project = project::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(ws.id),
            name: Set("shop".into()),
            created_at: Set(now),
        }
        .insert(&conn)
        .await?;
        let app = app::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(ws.id),
            project_id: Set(project.id),
            name: Set("web".into()),
            created_at: Set(now),
        }
        .insert(&conn)
        .await?;
        let environment = environment::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(ws.id),
            app_id: Set(app.id),
            name: Set("preview".into()),
            kind: Set("preview".into()),
            requires_approval: Set(false),
            scale_to_zero: Set(false),
            wake_budget_ms: Set(10_000),
            created_at: Set(now),
        }
        .insert(&conn)
        .await?;
        let region = region::ActiveModel {
            id: Set(new_id()),
            name: Set("local".into()),
            created_at: Set(now),
        }
        .insert(&conn)
        .await?;
        let cell = cell::ActiveModel {
            id: Set(new_id()),
            region_id: Set(region.id),
            name: Set("cell-1".into()),
            created_at: Set(now),
        }
        .insert(&conn)
        .await?;
        Ok(Self {
            conn,
            workspace: ws.id,
            app: app.id,
            environment: environment.id,
            region: region.id,
            cell: cell.id,
            _dir: dir,
        })
    }

    /// An artifact whose digest is made from `n`.
    pub async fn artifact(&self, n: u64) -> Result<String> {
        let digest = format!("sha256:{n:064x}");
        artifact::ActiveModel {
            digest: Set(digest.clone()),
            size_bytes: Set(1),
            manifest: Set(json!({})),
            store_uri: Set(format!("local://{digest}")),
            created_at: Set(Utc::now()),
        }
        .insert(&self.conn)
        .await?;
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
