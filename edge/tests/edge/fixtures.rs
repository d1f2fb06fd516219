//! Control DB rows the edge reads: a fresh SQLite file or PostgreSQL database per test with
//! one workspace, project, app, environment, region and cell, and helpers for deployments,
//! owners (through the real writer, `routes::write_owner`), allocations, and the raw rows a
//! test needs to break the change log on purpose.

use anyhow::{Context, Result};
use chrono::Utc;
use rhone_schema::{
    entity::{allocation, deployment, edge_ack, route_change, route_owner},
    fixtures, new_id,
    routes::{OwnerWrite, write_owner},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
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
    _dir: Option<TempDir>,
}

/// A deployment of an artifact.
#[derive(Clone)]
pub struct Deployment {
    pub id: Uuid,
    pub digest: String,
}

impl Db {
    /// A migrated SQLite file in a temporary directory.
    pub async fn sqlite() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("control.db").display()
        );
        Self::open(&url, Some(dir)).await
    }

    /// A fresh, migrated PostgreSQL database named after `test`.
    pub async fn postgres(test: &str) -> Result<Self> {
        let url = rhone_testkit::postgres::database(&rhone_testkit::unique_name(test)).await?;
        Self::open(&url, None).await
    }

    async fn open(url: &str, dir: Option<TempDir>) -> Result<Self> {
        let conn = rhone_schema::connect(url).await?;
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

    /// Makes `deployment` the owner of `route_key` at the next epoch, as promotion and
    /// preview do: the owner row and its change-log row in one transaction. Returns the
    /// epoch and the change's sequence number.
    pub async fn owner(&self, route_key: &str, deployment: &Deployment) -> Result<(i64, i64)> {
        let owner = write_owner(
            &self.conn,
            OwnerWrite {
                instances: 1,
                route_key: route_key.to_owned(),
                environment_id: self.environment,
                deployment_id: deployment.id,
                artifact_digest: deployment.digest.clone(),
                region_id: self.region,
                cell_id: self.cell,
                operation_id: None,
                expected_epoch: None,
            },
        )
        .await?;
        let change = route_change::Entity::find()
            .filter(route_change::Column::RouteKey.eq(route_key))
            .filter(route_change::Column::Epoch.eq(owner.epoch))
            .one(&self.conn)
            .await?
            .context("write_owner logged no change")?;
        Ok((owner.epoch, change.seq))
    }

    /// Points the owner row of `route_key` at `deployment` and `epoch` without logging a
    /// change: what a writer that bypasses `write_owner` would leave behind.
    pub async fn owner_row_only(
        &self,
        route_key: &str,
        deployment: &Deployment,
        epoch: i64,
    ) -> Result<()> {
        route_owner::ActiveModel {
            route_key: Set(route_key.to_owned()),
            deployment_id: Set(deployment.id),
            artifact_digest: Set(deployment.digest.clone()),
            epoch: Set(epoch),
            updated_at: Set(Utc::now()),
            ..Default::default()
        }
        .update(&self.conn)
        .await?;
        Ok(())
    }

    /// Appends a change-log row for `route_key`, at sequence number `seq` when given (which
    /// may skip numbers), else at the next one.
    pub async fn change_row_only(
        &self,
        seq: Option<i64>,
        route_key: &str,
        deployment: &Deployment,
        epoch: i64,
    ) -> Result<i64> {
        let mut row = route_change::ActiveModel {
            route_key: Set(route_key.to_owned()),
            epoch: Set(epoch),
            deployment_id: Set(deployment.id),
            artifact_digest: Set(deployment.digest.clone()),
            operation_id: Set(None),
            created_at: Set(Utc::now()),
            ..Default::default()
        };
        if let Some(seq) = seq {
            row.seq = Set(seq);
        }
        Ok(row.insert(&self.conn).await?.seq)
    }

    /// The change log's head, 0 when empty.
    pub async fn head(&self) -> Result<i64> {
        Ok(route_change::Entity::find()
            .order_by_desc(route_change::Column::Seq)
            .one(&self.conn)
            .await?
            .map_or(0, |c| c.seq))
    }

    /// Allocations the edge may route to: ready, meant to run, with an address.
    pub async fn routable_allocations(&self) -> Result<usize> {
        Ok(allocation::Entity::find()
            .filter(allocation::Column::Stage.eq("ready"))
            .filter(allocation::Column::Desired.eq("run"))
            .filter(allocation::Column::Address.is_not_null())
            .count(&self.conn)
            .await?
            .try_into()?)
    }

    /// The acknowledgement row of `edge_id`, if it has one.
    pub async fn ack(&self, edge_id: &str) -> Result<Option<edge_ack::Model>> {
        Ok(edge_ack::Entity::find_by_id(edge_id.to_owned())
            .one(&self.conn)
            .await?)
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
            memory_mb: Set(512),
            cpu_millis: Set(1000),
            sealed_secrets: Set(None),
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
