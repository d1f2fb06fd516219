//! The preview step of a deploy: start an allocation of the exact validated artifact on a
//! runner, wait until the runner reports it ready, and point the preview RouteOwner at the
//! deployment. Idempotent: a retry reuses the deployment's allocation (the runner takes the
//! same spec and generation again) and rewriting the same owner is a no-op. The start itself
//! (spec, PUT, poll until ready, reports) is `allocate.rs`, shared with promotion.

use std::sync::Arc;

use rhone_schema::{
    allocations,
    entity::{allocation, deployment, environment, runner},
    new_id,
    routes::{self, OwnerWrite},
};
use rhone_workflows::activities::{Preview, PreviewInput, defs};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument;

use crate::allocate::{self, Heartbeat, db_err, refuse};

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
    /// Calls to runners, with each runner's call token.
    pub runners: crate::allocate::RunnerClient,
}

#[activities]
impl PreviewActivities {
    #[activity(definition = defs::StartPreview)]
    pub async fn start_preview(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: PreviewInput,
    ) -> Result<Preview, ActivityError> {
        let span = tracing::info_span!("start_preview", operation_id = %input.operation_id, deployment_id = %input.deployment_id);
        // Beats throughout (placement, the runner's pull), not only while it polls readiness.
        Heartbeat::of(&ctx)
            .during(self.preview(input, Heartbeat::of(&ctx)))
            .instrument(span)
            .await
    }
}

impl PreviewActivities {
    async fn preview(
        &self,
        input: PreviewInput,
        heartbeat: Heartbeat<'_>,
    ) -> Result<Preview, ActivityError> {
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
        let manifest = allocate::manifest(db, &input.digest).await?;
        let route_key = self.route_key(&dep).await?;

        let (alloc, runner) = self.allocation(&dep, &input.digest).await?;
        let alloc = allocate::start(
            db,
            &self.runners,
            &runner,
            &alloc,
            &manifest,
            "preview",
            heartbeat,
        )
        .await?;

        let owner = routes::write_owner(
            db,
            OwnerWrite {
                instances: 1,
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
        crate::wake::set_state(db, dep.environment_id, environment::WAKE_STATE_HOT).await?;
        let scale_to_zero = environment::Entity::find_by_id(dep.environment_id)
            .one(db)
            .await
            .map_err(db_err)?
            .is_some_and(|e| e.scale_to_zero);
        Ok(Preview {
            route_key,
            url,
            allocation_id: alloc.id,
            epoch: owner.epoch,
            scale_to_zero,
        })
    }

    /// The host of the deployment's environment.
    async fn route_key(&self, dep: &deployment::Model) -> Result<String, ActivityError> {
        let env = environment::Entity::find_by_id(dep.environment_id)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("the environment of deployment {} is gone", dep.id)))?;
        // The one route this writer moves without a compare-and-swap is a preview's: a
        // workflow started around the API (the Temporal UI, a script) still cannot move a
        // staging or production route past its promotion.
        if env.kind != environment::KIND_PREVIEW {
            return Err(refuse(format!(
                "environment {:?} is a {} environment: a deploy serves preview environments only; staging and production move through a promotion (`rhone promote`)",
                env.name, env.kind
            )));
        }
        crate::allocate::environment_host(&self.db, &env, &self.config.domain).await
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
        let placement = allocate::placement(db, new_id(), dep.id, digest).await?;
        allocate::place(db, &self.runners, &placement, allocate::NoRoom::Retry).await
    }
}
