//! The promotion harness: the deploy harness (SQLite control DB, Temporal, worker, in-test
//! runner) plus a production environment of the same app, edges serving from the control
//! DB, and promotions and rollbacks started as the API starts them.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use rhone_activities::WorkerConfig;
use rhone_core::{OperationId, OperationKind, workflow_id};
use rhone_edge::{EdgeConfig, EdgeState};
use rhone_schema::entity::{allocation, deployment, environment, route_change, route_owner};
use rhone_schema::{new_id, ops};
use rhone_workflows::{PromotionInput, PromotionWorkflow};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};
use temporalio_client::WorkflowStartOptions;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::deploy_support::{Deployment, Repo};
use super::harness::{Harness, Seen};

/// One edge serving on loopback.
pub struct Edge {
    pub port: u16,
    /// Its admin listener (`/_rhone/status`), read by the scale-to-zero tests.
    #[allow(dead_code)]
    pub admin_port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<Result<(), rhone_edge::ServeError>>,
}

impl Edge {
    /// Stops the edge as a crash would: its acknowledgement row stays behind.
    pub fn crash(self) {
        self.task.abort();
    }

    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("edge shutdown")???;
        Ok(())
    }
}

/// What `GET /_rhone/stats` of the example app answered through an edge.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Stats {
    pub artifact_digest: String,
    pub allocation_id: Uuid,
}

/// Health window 1 s, drain grace 300 ms, propagation deadline 3 s.
fn short_timings(c: &mut WorkerConfig) {
    c.promotion.health_window = Duration::from_secs(1);
    c.promotion.drain_grace = Duration::from_millis(300);
    c.promotion.propagation_deadline = Duration::from_secs(3);
}

pub struct Prod {
    pub h: Harness,
    pub env: environment::Model,
    pub edges: Vec<Edge>,
    http: reqwest::Client,
}

impl Prod {
    /// A harness with short promotion timings (health window 1 s, drain grace 300 ms,
    /// propagation deadline 3 s), adjusted further by `configure`, and one edge.
    pub async fn start(
        test: &str,
        requires_approval: bool,
        configure: impl FnOnce(&mut WorkerConfig),
    ) -> Result<Prod> {
        let h = Harness::start_configured(test, |c| {
            short_timings(c);
            configure(c);
        })
        .await?;
        Self::on(h, requires_approval).await
    }

    #[allow(dead_code)]
    /// [`Prod::start`] on a harness whose runner registers with an in-test API and reports
    /// its allocations' changes there ([`Harness::start_registered`]).
    pub async fn start_registered(test: &str) -> Result<Prod> {
        let h = Harness::start_registered(test, short_timings).await?;
        Self::on(h, false).await
    }

    async fn on(h: Harness, requires_approval: bool) -> Result<Prod> {
        let preview = &h.fx.env;
        let env = environment::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(preview.workspace_id),
            app_id: Set(preview.app_id),
            name: Set("production".into()),
            kind: Set("production".into()),
            requires_approval: Set(requires_approval),
            self_approval: Set(true),
            scale_to_zero: Set(false),
            wake_budget_ms: Set(environment::DEFAULT_WAKE_BUDGET_MS),
            sleep_after_ms: Set(environment::DEFAULT_SLEEP_AFTER_MS),
            wake_state: Set(environment::WAKE_STATE_HOT.into()),
            created_at: Set(Utc::now()),
        }
        .insert(&h.fx.db)
        .await?;
        let mut prod = Prod {
            h,
            env,
            edges: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        prod.start_edge("edge-a").await?;
        Ok(prod)
    }

    pub async fn start_edge(&mut self, id: &str) -> Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let port = address.port();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let admin_port = admin.local_addr()?.port();
        let state = EdgeState {
            db: self.h.fx.db.clone(),
            config: EdgeConfig {
                edge_id: id.to_owned(),
                ..EdgeConfig::for_address(address)
            },
            wake: Some(rhone_edge::WakeClient::new(
                self.h.client.clone(),
                self.h.queue.clone(),
            )),
            assets: Some(rhone_edge::Assets::new(
                self.h.fx.config.store.clone(),
                rhone_edge::DEFAULT_ASSET_CACHE_BYTES,
            )),
            admin: Some(admin),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(rhone_edge::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        self.edges.push(Edge {
            port,
            admin_port,
            stop,
            task,
        });
        Ok(())
    }

    pub async fn stop(self) -> Result<()> {
        for edge in self.edges {
            edge.stop().await?;
        }
        self.h.stop().await
    }

    /// Deploys `repo` to preview and waits for `preview_ready`; the deployment's digest.
    pub async fn preview(&self, repo: &Repo) -> Result<(Deployment, String)> {
        let d = self.h.deploy(repo).await?;
        let seen = self.h.wait_status(d, "succeeded", 1).await?;
        assert_eq!(seen.op.current_stage, "preview_ready");
        let row = deployment::Entity::find_by_id(d.id)
            .one(&self.h.fx.db)
            .await?
            .context("deployment row")?;
        Ok((d, row.artifact_digest.context("a digest")?))
    }

    /// The production RouteOwner, if any.
    pub async fn owner(&self) -> Result<Option<route_owner::Model>> {
        Ok(route_owner::Entity::find()
            .filter(route_owner::Column::EnvironmentId.eq(self.env.id))
            .one(&self.h.fx.db)
            .await?)
    }

    /// The production route's change log: (seq, epoch, deployment) in seq order.
    pub async fn changes(&self) -> Result<Vec<(i64, i64, Uuid)>> {
        let Some(owner) = self.owner().await? else {
            return Ok(Vec::new());
        };
        Ok(route_change::Entity::find()
            .filter(route_change::Column::RouteKey.eq(owner.route_key))
            .order_by_asc(route_change::Column::Seq)
            .all(&self.h.fx.db)
            .await?
            .into_iter()
            .map(|c| (c.seq, c.epoch, c.deployment_id))
            .collect())
    }

    pub async fn epoch(&self) -> Result<i64> {
        Ok(self.owner().await?.map_or(0, |o| o.epoch))
    }

    /// Promotes the preview deployment `from` as the API does: a new production deployment
    /// of the same artifact, a Promotion operation starting from the current epoch.
    pub async fn promote(&self, from: Deployment, instances: u32) -> Result<Deployment> {
        self.promote_from_epoch(from, instances, self.epoch().await?)
            .await
    }

    /// [`Prod::promote`] as a request that read the route at `epoch`.
    pub async fn promote_from_epoch(
        &self,
        from: Deployment,
        instances: u32,
        epoch: i64,
    ) -> Result<Deployment> {
        let db = &self.h.fx.db;
        let source = deployment::Entity::find_by_id(from.id)
            .one(db)
            .await?
            .context("preview deployment")?;
        let id = new_id();
        let now = Utc::now();
        let operation_id = self
            .operation(OperationKind::Promotion, "deployment", id)
            .await?;
        deployment::ActiveModel {
            id: Set(id),
            workspace_id: Set(self.env.workspace_id),
            app_id: Set(self.env.app_id),
            environment_id: Set(self.env.id),
            artifact_digest: Set(source.artifact_digest.clone()),
            source: Set(source.source.clone()),
            stage: Set("requested".into()),
            operation_id: Set(Some(operation_id.0)),
            promoted_from: Set(Some(from.id)),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(db)
        .await?;
        let d = Deployment { id, operation_id };
        self.start_workflow(d, OperationKind::Promotion, Some(from.id), epoch, instances)
            .await?;
        Ok(d)
    }

    /// Rolls production back to its earlier deployment `to`; the operation, as a
    /// [`Deployment`] naming the target.
    pub async fn rollback(&self, to: Uuid) -> Result<Deployment> {
        let operation_id = self
            .operation(OperationKind::Rollback, "environment", self.env.id)
            .await?;
        let d = Deployment {
            id: to,
            operation_id,
        };
        self.start_workflow(d, OperationKind::Rollback, None, self.epoch().await?, 1)
            .await?;
        Ok(d)
    }

    async fn operation(
        &self,
        kind: OperationKind,
        target_type: &str,
        target: Uuid,
    ) -> Result<OperationId> {
        let operation_id = OperationId(new_id());
        ops::create_operation(
            &self.h.fx.db,
            ops::NewOperation {
                id: operation_id.0,
                workspace_id: Some(self.env.workspace_id),
                kind: kind.as_str(),
                actor: "user:test",
                target_type,
                target_id: &target.to_string(),
                initial_stage: kind.initial_stage(),
                status: "running",
                workflow_id: &workflow_id(kind, operation_id),
            },
        )
        .await?;
        Ok(operation_id)
    }

    async fn start_workflow(
        &self,
        d: Deployment,
        kind: OperationKind,
        source_deployment_id: Option<Uuid>,
        expected_epoch: i64,
        instances: u32,
    ) -> Result<()> {
        let input = PromotionInput {
            operation_id: d.operation_id,
            kind,
            environment_id: self.env.id,
            deployment_id: d.id,
            source_deployment_id,
            expected_epoch,
            instances,
        };
        self.h
            .client
            .start_workflow(
                PromotionWorkflow::run,
                input,
                WorkflowStartOptions::new(self.h.queue.clone(), workflow_id(kind, d.operation_id))
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Waits until the operation has ended (succeeded, failed or aborted).
    pub async fn ended(&self, d: Deployment) -> Result<Seen> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let seen = self.h.seen(d).await?;
            if ["succeeded", "failed", "aborted"].contains(&seen.op.status.as_str()) {
                return Ok(seen);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "operation is {} at {} ({:?})",
                    seen.op.status,
                    seen.op.current_stage,
                    seen.stages
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /_rhone/stats` of the production host through edge `i`: the status, and the
    /// app's stats when it answered 200.
    pub async fn stats(&self, i: usize) -> Result<(u16, Option<Stats>)> {
        let owner = self.owner().await?.context("a production owner")?;
        let edge = self.edges.get(i).context("no such edge")?;
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{}/_rhone/stats", edge.port))
            .header("host", owner.route_key)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Ok((status, None));
        }
        Ok((status, Some(resp.json().await?)))
    }

    /// Polls edge `i` until the production host serves `digest` (the edge applies route
    /// changes within milliseconds, but the promotion's `healthy` comes first).
    pub async fn serves(&self, i: usize, digest: &str) -> Result<Stats> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.stats(i).await?;
            if let (200, Some(stats)) = &got
                && stats.artifact_digest == digest
            {
                return Ok(stats.clone());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("edge {i} answers {got:?}, not {digest}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Allocations of `deployment`.
    pub async fn allocations(&self, deployment: Uuid) -> Result<Vec<allocation::Model>> {
        Ok(allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(deployment))
            .all(&self.h.fx.db)
            .await?)
    }

    /// Waits until every allocation of `deployment` is meant to stop.
    pub async fn drained(&self, deployment: Uuid) -> Result<Vec<allocation::Model>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let allocations = self.allocations(deployment).await?;
            if allocations.iter().all(|a| a.desired == "stop") {
                return Ok(allocations);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("not drained: {allocations:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
