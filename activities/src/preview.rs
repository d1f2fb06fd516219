//! The preview step of a deploy: start an allocation of the exact validated artifact on a
//! runner, wait until the runner reports it ready, and point the preview RouteOwner at the
//! deployment. Idempotent: a retry reuses the deployment's allocation (the runner takes the
//! same spec and generation again) and rewriting the same owner is a no-op.

use std::{sync::Arc, time::Duration};

use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_manifest::artifact::ArtifactManifest;
use rhone_runner::{AllocationSpec, AllocationStatus, Desired, ProcessSpec};
use rhone_schema::{
    SchemaError,
    allocations::{self, NewAllocation, RunnerReport},
    entity::{
        allocation, app, artifact, cell, deployment, environment, project, runner, workspace,
    },
    new_id,
    routes::{self, OwnerWrite},
};
use rhone_workflows::activities::{Preview, PreviewInput, defs};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::error::activity_error;

/// Where previews are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewConfig {
    /// Preview hosts are `<env>.<app>.<project>.<workspace>.<domain>`. Default
    /// `rhone.localhost`, which browsers and curl resolve to the loopback address.
    pub domain: String,
    /// The edge's public origin suffix, e.g. `:8081` in `rhone dev`; empty behind port 80.
    pub port_suffix: String,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        Self {
            domain: "rhone.localhost".to_owned(),
            port_suffix: String::new(),
        }
    }
}

pub struct PreviewActivities {
    pub db: DatabaseConnection,
    pub config: PreviewConfig,
    pub http: reqwest::Client,
}

/// A refusal no retry can fix.
fn refuse(message: impl Into<String>) -> ActivityError {
    let message = message.into();
    tracing::warn!(%message, "preview refused");
    ActivityError::application(ApplicationFailure::non_retryable(message))
}

/// Something a later attempt may get past (a runner restarting, a slow start).
fn transient(message: impl Into<String>) -> ActivityError {
    ActivityError::application(ApplicationFailure::new(message.into()))
}

fn db_err(e: impl Into<SchemaError>) -> ActivityError {
    activity_error(e.into())
}

#[activities]
impl PreviewActivities {
    #[activity(definition = defs::StartPreview)]
    pub async fn start_preview(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PreviewInput,
    ) -> Result<Preview, ActivityError> {
        let span = tracing::info_span!("start_preview", operation_id = %input.operation_id, deployment_id = %input.deployment_id);
        let _guard = span.enter();
        self.preview(input).await
    }
}

impl PreviewActivities {
    async fn preview(&self, input: PreviewInput) -> Result<Preview, ActivityError> {
        let db = &self.db;
        let dep = deployment::Entity::find_by_id(input.deployment_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("deployment {} not found", input.deployment_id)))?;
        if dep.artifact_digest.as_deref() != Some(input.digest.as_str()) {
            return Err(refuse(format!(
                "deployment {} records artifact {:?}, not the validated {}",
                dep.id, dep.artifact_digest, input.digest
            )));
        }
        let art = artifact::Entity::find_by_id(input.digest.clone())
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("artifact {} is not recorded", input.digest)))?;
        let manifest: ArtifactManifest = serde_json::from_value(art.manifest).map_err(|e| {
            refuse(format!(
                "artifact {} has an unreadable manifest: {e}",
                input.digest
            ))
        })?;
        let route_key = self.route_key(&dep).await?;

        let (alloc, runner) = self.allocation(&dep, &input.digest).await?;
        let process = &manifest.app.process;
        let spec = AllocationSpec {
            allocation_id: alloc.id,
            generation: alloc.generation,
            artifact_digest: input.digest.parse().map_err(|e| refuse(format!("{e}")))?,
            process: ProcessSpec {
                command: process.command.clone(),
                health_path: process.health_path.clone(),
                readiness_timeout_ms: process.readiness_timeout_secs.saturating_mul(1000),
                drain_timeout_ms: None,
            },
            env: Default::default(),
            secrets: Default::default(),
            desired: Desired::Run,
        };
        let status = self
            .run_on(&runner, &spec, process.readiness_timeout_secs)
            .await?;
        let address = status
            .address
            .clone()
            .ok_or_else(|| transient("the runner reported ready without an address"))?;
        // The runner reports `pulling` and `starting` to the API on its own, possibly after
        // it answers ready here, or never (no report URL): record the steps it has evidently
        // passed, so the move to `ready` is a legal one. A step a concurrent report already
        // recorded is skipped; the `ready` report below decides.
        for step in [AllocationStage::Pulling, AllocationStage::Starting] {
            let row = allocation::Entity::find_by_id(alloc.id)
                .one(db)
                .await
                .map_err(db_err)?
                .ok_or_else(|| transient(format!("allocation {} is gone", alloc.id)))?;
            let behind = row
                .stage
                .parse::<AllocationStage>()
                .is_ok_and(|current| current.can_transition_to(step));
            if !behind {
                continue;
            }
            let report = RunnerReport {
                allocation_id: alloc.id,
                generation: status.generation,
                stage: step,
                address: None,
                exit_status: None,
                message: None,
                last_log_lines: Vec::new(),
            };
            if let Err(e) = allocations::apply_report(db, &report).await {
                tracing::debug!(error = %e, %step, "a concurrent report got there first");
            }
        }
        allocations::apply_report(
            db,
            &RunnerReport {
                allocation_id: alloc.id,
                generation: status.generation,
                stage: AllocationStage::Ready,
                address: Some(address),
                exit_status: None,
                message: None,
                last_log_lines: Vec::new(),
            },
        )
        .await
        .map_err(db_err)?;

        let owner = routes::write_owner(
            db,
            OwnerWrite {
                route_key: route_key.clone(),
                environment_id: dep.environment_id,
                deployment_id: dep.id,
                artifact_digest: input.digest.clone(),
                region_id: alloc.region_id,
                cell_id: alloc.cell_id,
                operation_id: Some(input.operation_id.0),
                expected_epoch: None,
            },
        )
        .await
        .map_err(db_err)?;
        let url = format!("http://{route_key}{}/", self.config.port_suffix);
        tracing::info!(%url, epoch = owner.epoch, allocation_id = %alloc.id, "preview ready");
        Ok(Preview {
            route_key,
            url,
            allocation_id: alloc.id,
            epoch: owner.epoch,
        })
    }

    /// The environment's host ([`rhone_core::environment_route_key`]).
    async fn route_key(&self, dep: &deployment::Model) -> Result<String, ActivityError> {
        let db = &self.db;
        let missing = |what: &str| refuse(format!("the {what} of deployment {} is gone", dep.id));
        let env = environment::Entity::find_by_id(dep.environment_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| missing("environment"))?;
        let app = app::Entity::find_by_id(dep.app_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| missing("app"))?;
        let project = project::Entity::find_by_id(app.project_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| missing("project"))?;
        let ws = workspace::Entity::find_by_id(dep.workspace_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| missing("workspace"))?;
        Ok(rhone_core::environment_route_key(
            &env.name,
            &env.kind,
            &app.name,
            &project.name,
            &ws.name,
            &self.config.domain,
        ))
    }

    /// The deployment's allocation of this digest, created on a ready runner the first time.
    async fn allocation(
        &self,
        dep: &deployment::Model,
        digest: &str,
    ) -> Result<(allocation::Model, runner::Model), ActivityError> {
        let db = &self.db;
        let existing = allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(dep.id))
            .filter(allocation::Column::ArtifactDigest.eq(digest))
            .filter(allocation::Column::Desired.eq(allocations::Desired::Run.as_str()))
            .order_by_desc(allocation::Column::CreatedAt)
            .one(db)
            .await
            .map_err(db_err)?;
        if let Some(a) = existing
            && let Some(runner_id) = a.runner_id
            && let Some(r) = runner::Entity::find_by_id(runner_id)
                .one(db)
                .await
                .map_err(db_err)?
        {
            return Ok((a, r));
        }
        let runner = runner::Entity::find()
            .filter(runner::Column::Status.eq("ready"))
            .order_by_asc(runner::Column::Name)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| {
                transient("no ready runner is registered; start one (`rhone serve runner`)")
            })?;
        let cell = cell::Entity::find_by_id(runner.cell_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("runner {} has no cell", runner.name)))?;
        let alloc = allocations::create_allocation(
            db,
            NewAllocation {
                id: new_id(),
                deployment_id: dep.id,
                artifact_digest: digest.to_owned(),
                runner_id: Some(runner.id),
                region_id: cell.region_id,
                cell_id: cell.id,
            },
        )
        .await
        .map_err(db_err)?;
        Ok((alloc, runner))
    }

    /// Sends the spec and polls the runner until the allocation is ready or failed.
    async fn run_on(
        &self,
        runner: &runner::Model,
        spec: &AllocationSpec,
        readiness_secs: u64,
    ) -> Result<AllocationStatus, ActivityError> {
        let url = format!(
            "{}/v1/allocations/{}",
            runner.address.trim_end_matches('/'),
            spec.allocation_id
        );
        let resp = self
            .http
            .put(&url)
            .json(spec)
            .send()
            .await
            .map_err(|e| transient(format!("runner {} unreachable: {e}", runner.name)))?;
        let code = resp.status();
        if code.is_client_error() {
            let body = resp.text().await.unwrap_or_default();
            return Err(refuse(format!(
                "runner {} refused the allocation ({code}): {body}",
                runner.name
            )));
        }
        if !code.is_success() {
            return Err(transient(format!("runner {} answered {code}", runner.name)));
        }
        // Pulling and unpacking come before the app's own readiness time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(readiness_secs + 120);
        loop {
            let status: AllocationStatus = self
                .http
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| transient(format!("runner {} status: {e}", runner.name)))?
                .json()
                .await
                .map_err(|e| transient(format!("runner {} status unreadable: {e}", runner.name)))?;
            match status.stage {
                AllocationStage::Ready => return Ok(status),
                AllocationStage::Failed | AllocationStage::Stopped | AllocationStage::Draining => {
                    let lines = status
                        .last_log_lines
                        .iter()
                        .rev()
                        .take(10)
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n");
                    return Err(refuse(format!(
                        "the preview allocation {} {}: {}{}{}",
                        spec.allocation_id,
                        status.stage,
                        status.message.as_deref().unwrap_or("no reason given"),
                        status
                            .exit_status
                            .as_deref()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default(),
                        if lines.is_empty() {
                            String::new()
                        } else {
                            format!("; last log lines:\n{lines}")
                        },
                    )));
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(transient(format!(
                        "allocation {} is still {} on runner {}",
                        spec.allocation_id, status.stage, runner.name
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
