//! The activities of Promotion and Rollback (`rhone_workflows::PromotionWorkflow`): the
//! policy gates (`policy.rs`), allocations of the exact artifact started, watched and
//! drained (`allocations.rs`), and the RouteOwner compare-and-swap with the wait for the
//! edges' acknowledgements (`route.rs`).
//!
//! Every activity is safe to retry from any point: allocation and audit row ids are derived
//! from the operation, a route move already made by this operation is found again, and
//! deadlines are measured from durable timestamps, not from the attempt's start. Each
//! activity's logic is a public method (`policy`, `allocations`, `route`, `edges`, `health`,
//! `drain`) so it can be tested without Temporal.

mod allocations;
mod policy;
mod route;

use std::{sync::Arc, time::Duration};

use rhone_schema::entity::{deployment, environment};
use rhone_workflows::activities::{
    AllocationsInput, AllocationsReady, AwaitEdgesInput, DrainInput, Drained, EdgesAcked, Health,
    HealthInput, MoveRouteInput, Policy, PolicyInput, RouteMoved, defs,
};
use sea_orm::{DatabaseConnection, EntityTrait};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument;
use uuid::Uuid;

use crate::allocate::{Heartbeat, db_err, refuse};

/// Timings of promotions, handed to the workflow by the policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionConfig {
    /// How long the new allocations must stay healthy after the edges switched before the
    /// promotion succeeds. Default 5 s.
    pub health_window: Duration,
    /// How long the previous owner's allocations keep finishing their requests and
    /// sessions after a healthy promotion before they drain. Default 30 s.
    pub drain_grace: Duration,
    /// How long every live edge has to acknowledge a route change, from the change's
    /// commit. Default 10 s.
    pub propagation_deadline: Duration,
    /// An edge seen (`edge_acks.seen_at`) within this long is live and must acknowledge
    /// a change; others are not waited for. Default 30 s.
    pub edge_liveness: Duration,
}

impl Default for PromotionConfig {
    fn default() -> Self {
        Self {
            health_window: Duration::from_secs(5),
            drain_grace: Duration::from_secs(30),
            propagation_deadline: Duration::from_secs(10),
            edge_liveness: Duration::from_secs(30),
        }
    }
}

pub struct PromotionActivities {
    pub db: DatabaseConnection,
    pub config: PromotionConfig,
    /// The domain environment hosts are under (`PreviewConfig::domain`).
    pub domain: String,
    /// Calls to runners, with each runner's call token.
    pub runners: crate::allocate::RunnerClient,
}

#[activities]
impl PromotionActivities {
    #[activity(definition = defs::CheckPolicy)]
    pub async fn check_policy(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PolicyInput,
    ) -> Result<Policy, ActivityError> {
        let span = tracing::info_span!("check_promotion_policy", operation_id = %input.operation_id, deployment_id = %input.deployment_id);
        self.policy(&input).instrument(span).await
    }

    #[activity(definition = defs::StartAllocations)]
    pub async fn start_allocations(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: AllocationsInput,
    ) -> Result<AllocationsReady, ActivityError> {
        let span = tracing::info_span!("start_allocations", operation_id = %input.operation_id, deployment_id = %input.deployment_id, purpose = %input.purpose);
        self.allocations(&input, Heartbeat::of(&ctx))
            .instrument(span)
            .await
    }

    #[activity(definition = defs::MoveRoute)]
    pub async fn move_route(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: MoveRouteInput,
    ) -> Result<RouteMoved, ActivityError> {
        let span = tracing::info_span!("move_route", operation_id = %input.operation_id, route_key = %input.route_key, expected_epoch = input.expected_epoch);
        self.route(&input).instrument(span).await
    }

    #[activity(definition = defs::AwaitEdges)]
    pub async fn await_edges(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: AwaitEdgesInput,
    ) -> Result<EdgesAcked, ActivityError> {
        let span = tracing::info_span!("await_edges", operation_id = %input.operation_id, route_key = %input.route_key, seq = input.seq);
        self.edges(&input, Heartbeat::of(&ctx))
            .instrument(span)
            .await
    }

    #[activity(definition = defs::WatchHealth)]
    pub async fn watch_health(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: HealthInput,
    ) -> Result<Health, ActivityError> {
        let span = tracing::info_span!("watch_health", operation_id = %input.operation_id);
        self.health(&input, Heartbeat::of(&ctx))
            .instrument(span)
            .await
    }

    #[activity(definition = defs::DrainAllocations)]
    pub async fn drain_allocations(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: DrainInput,
    ) -> Result<Drained, ActivityError> {
        let span = tracing::info_span!("drain_allocations", operation_id = %input.operation_id, deployment_id = %input.deployment_id);
        self.drain(&input, Heartbeat::of(&ctx))
            .instrument(span)
            .await
    }
}

impl PromotionActivities {
    async fn deployment(&self, id: Uuid) -> Result<deployment::Model, ActivityError> {
        deployment::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("deployment {id} not found")))
    }

    async fn environment(&self, id: Uuid) -> Result<environment::Model, ActivityError> {
        environment::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| refuse(format!("environment {id} not found")))
    }

    /// The environment's host, the route key its RouteOwner serves.
    async fn route_key(&self, env: &environment::Model) -> Result<String, ActivityError> {
        crate::allocate::environment_host(&self.db, env, &self.domain).await
    }
}

/// A UUID (version 8) derived from `parts`: the same parts give the same id on every
/// attempt, so a retried activity finds the row its earlier attempt wrote.
pub fn derived_id(parts: &[&str]) -> Uuid {
    let hex = rhone_manifest::vango::sha256_hex(parts.join("\u{1f}").as_bytes());
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        // `sha256_hex` is 64 lowercase hex digits, so every pair parses.
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or_default();
    }
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// `a, b, c`.
fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
