//! Typed declarations of the activities workflows call. The implementations live in
//! `rhone-activities` (`#[activity(definition = …)]`), so this crate stays free of I/O.

use rhone_core::{OperationId, OperationKind, OperationStatus};
use serde::{Deserialize, Serialize};
use temporalio_common::ActivityError;
use temporalio_macros::activity_definitions;
use uuid::Uuid;

/// One stage transition of an operation, as the workflow asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordStageInput {
    pub operation_id: OperationId,
    pub kind: OperationKind,
    /// Deterministic per (stage, attempt) so a retried activity finds its own earlier write.
    pub record_key: String,
    pub stage: String,
    pub attempt: u32,
    pub evidence: serde_json::Value,
    pub error: Option<String>,
    /// Overrides the status the stage implies (`needs_attention`, `aborted`).
    pub status: Option<OperationStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecorded {
    pub seq: i32,
    /// True when an earlier attempt of the same activity had already written the record.
    pub already_recorded: bool,
}

/// A status change without a stage change (an operation parked for attention, or resumed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetStatusInput {
    pub operation_id: OperationId,
    pub status: OperationStatus,
    pub error: Option<String>,
}

/// A decision that did not come through the API, for the audit log: the input of
/// `record_decision`, which workflows call only when replaying a history recorded before
/// decisions were checked (`audit_decision` since).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordDecisionInput {
    pub operation_id: OperationId,
    pub kind: OperationKind,
    pub decision: crate::DecisionKind,
    /// `temporal:<who>`.
    pub actor: String,
    pub reason: Option<String>,
    /// The stage that waited for it.
    pub stage: String,
    /// Unique per decision of the operation (`decision#<n>`).
    pub key: String,
}

/// A decision a workflow took, for `audit_decision`: which actor it is recorded under and
/// its audit row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditDecisionInput {
    pub operation_id: OperationId,
    pub kind: OperationKind,
    pub decision: crate::DecisionKind,
    /// The actor as sent (trimmed).
    pub actor: String,
    pub reason: Option<String>,
    /// The id of the API's audit row of this decision, as sent. Only the API writes one
    /// (before it sends the decision), so a sender that merely names an id has none to show.
    pub decision_id: Option<Uuid>,
    /// The stage that waited for it.
    pub stage: String,
    /// Unique per decision of the workflow (`decision#<n>@<run id>`): keys the row a retry
    /// finds, and marks the API's row as taken by this decision and no other.
    pub key: String,
}

/// Under which actor a decision is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionAudited {
    /// The actor as sent when the API's audit row of the decision was found (the API checked
    /// the decider's role); otherwise `temporal:<actor as sent>`.
    pub actor: String,
    /// Whether the API's audit row was found and taken.
    pub through_api: bool,
}

/// Creates the environment row chosen by the API; idempotent on `environment_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateEnvironmentInput {
    pub operation_id: OperationId,
    pub environment_id: Uuid,
    pub workspace_id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    pub kind: String,
    pub requires_approval: bool,
    /// Whether the requester of an operation may approve it; `None` (an input recorded
    /// before the setting) takes the kind's default.
    #[serde(default)]
    pub self_approval: Option<bool>,
    pub scale_to_zero: bool,
    pub wake_budget_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentCreated {
    pub environment_id: Uuid,
    /// False when the row was already there from an earlier attempt.
    pub created: bool,
}

pub struct OperationActivities;

#[activity_definitions]
impl OperationActivities {
    #[activity(name = "record_stage")]
    pub fn record_stage(input: RecordStageInput) -> Result<StageRecorded, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "set_status")]
    pub fn set_status(input: SetStatusInput) -> Result<(), ActivityError> {
        unimplemented!()
    }

    #[activity(name = "record_decision")]
    pub fn record_decision(input: RecordDecisionInput) -> Result<(), ActivityError> {
        unimplemented!()
    }

    #[activity(name = "audit_decision")]
    pub fn audit_decision(input: AuditDecisionInput) -> Result<DecisionAudited, ActivityError> {
        unimplemented!()
    }
}

pub struct TenancyActivities;

#[activity_definitions]
impl TenancyActivities {
    #[activity(name = "create_environment")]
    pub fn create_environment(
        input: CreateEnvironmentInput,
    ) -> Result<EnvironmentCreated, ActivityError> {
        unimplemented!()
    }
}

/// Where a deployment's source comes from: a git URL or a local repository path, at a ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub repository: String,
    /// A branch, tag or commit; `HEAD` by default.
    pub git_ref: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloneInput {
    pub operation_id: OperationId,
    pub deployment_id: Uuid,
    pub source: SourceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cloned {
    /// The full commit sha the ref resolved to; every later step uses it, not the ref.
    pub commit_sha: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildInput {
    pub operation_id: OperationId,
    pub deployment_id: Uuid,
    pub source: SourceSpec,
    pub commit_sha: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Built {
    /// `sha256:<hex>` of the artifact archive, as stored.
    pub digest: String,
    pub size_bytes: u64,
    pub build_millis: u64,
    pub log_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidateInput {
    pub operation_id: OperationId,
    pub deployment_id: Uuid,
    pub environment_id: Uuid,
    pub digest: String,
}

/// One gate of validation and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// `generated_artifacts_current`, `vango_state_impact`, `db_impact`, `secrets_bound`,
    /// `providers_bound`.
    pub gate: String,
    pub passed: bool,
    pub evidence: serde_json::Value,
}

/// Why a deploy cannot go to preview yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocker {
    pub gate: String,
    pub reason: String,
    /// True where an explicit approval lets the deploy proceed (a cold state change);
    /// false where something must be fixed first (a missing secret, a migration to run),
    /// after which `retry` validates again.
    pub approvable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub gates: Vec<GateResult>,
    /// Failures no decision can clear (stale generated artifacts): the deploy fails.
    pub fatal: Vec<String>,
    pub blockers: Vec<Blocker>,
    /// The artifact carries migrations and the environment owns a database: a Migration
    /// applies them before the preview starts.
    #[serde(default)]
    pub migrate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewInput {
    pub operation_id: OperationId,
    pub deployment_id: Uuid,
    pub environment_id: Uuid,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    /// The preview host, the route key of the preview RouteOwner.
    pub route_key: String,
    pub url: String,
    pub allocation_id: Uuid,
    /// The RouteOwner epoch the preview was written at.
    pub epoch: i64,
    /// The preview environment scales to zero: the deploy starts a Wake run to watch the
    /// route. Absent from histories recorded before scale to zero (false).
    #[serde(default)]
    pub scale_to_zero: bool,
}

pub struct DeployActivities;

#[activity_definitions]
impl DeployActivities {
    #[activity(name = "clone_source")]
    pub fn clone_source(input: CloneInput) -> Result<Cloned, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "build_artifact")]
    pub fn build_artifact(input: BuildInput) -> Result<Built, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "validate_deployment")]
    pub fn validate_deployment(input: ValidateInput) -> Result<Validation, ActivityError> {
        unimplemented!()
    }
}

pub struct PreviewActivities;

#[activity_definitions]
impl PreviewActivities {
    /// Starts an allocation of the exact artifact on a runner, waits until it is ready and
    /// writes the preview RouteOwner.
    #[activity(name = "start_preview")]
    pub fn start_preview(input: PreviewInput) -> Result<Preview, ActivityError> {
        unimplemented!()
    }
}

/// What a promotion or rollback asks the policy check to confirm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInput {
    pub operation_id: OperationId,
    /// `promotion` or `rollback`.
    pub kind: OperationKind,
    /// The environment whose RouteOwner moves (production).
    pub environment_id: Uuid,
    /// The deployment of that environment the RouteOwner will point at.
    pub deployment_id: Uuid,
    /// For a promotion, the validated preview deployment whose artifact is promoted.
    pub source_deployment_id: Option<Uuid>,
    /// The route epoch the operation started from (0: the route has no owner yet).
    pub expected_epoch: i64,
    /// How many allocations to run.
    pub instances: u32,
}

/// Where a route key pointed, or will point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub epoch: i64,
}

/// The policy check's answer: every gate with its evidence, and what the next steps need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub route_key: String,
    /// The exact artifact to run: the preview's (promotion) or the target's (rollback).
    pub digest: String,
    /// The owner the route key has now, which a failed health window returns to.
    pub previous: Option<RouteTarget>,
    /// The environment requires an approval before the route moves.
    pub approval_required: bool,
    pub gates: Vec<GateResult>,
    /// Timings from the worker's configuration (read here so the workflow stays pure).
    pub health_window_ms: u64,
    pub drain_grace_ms: u64,
    pub propagation_deadline_ms: u64,
    /// The environment scales to zero: a healthy promotion starts a Wake run to watch the
    /// route. Absent from histories recorded before scale to zero (false).
    #[serde(default)]
    pub scale_to_zero: bool,
    /// The artifact carries migrations and the environment owns a database: a Migration
    /// applies them before the route moves (promotions only).
    #[serde(default)]
    pub migrate: bool,
}

/// Start (or find again) the operation's allocations of `digest` and wait until ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationsInput {
    pub operation_id: OperationId,
    pub deployment_id: Uuid,
    pub digest: String,
    pub instances: u32,
    /// Distinguishes sets one operation starts (`route`, `rollback`): allocation ids are
    /// derived from (operation, purpose, index), so a retried activity never duplicates one.
    pub purpose: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationsReady {
    pub allocation_ids: Vec<Uuid>,
    /// Ready allocations of the deployment that were there already and are reused.
    pub reused: Vec<Uuid>,
}

/// Compare-and-swap of the RouteOwner from `expected_epoch` to `expected_epoch + 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRouteInput {
    pub operation_id: OperationId,
    pub route_key: String,
    pub environment_id: Uuid,
    pub deployment_id: Uuid,
    pub digest: String,
    pub expected_epoch: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMoved {
    pub epoch: i64,
    /// The route change log's sequence number of this change, which edges acknowledge.
    pub seq: i64,
}

/// Wait until every live edge acknowledges change `seq`, at most `deadline_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitEdgesInput {
    pub operation_id: OperationId,
    pub route_key: String,
    pub seq: i64,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgesAcked {
    /// Every live edge, each having acknowledged `seq` or later.
    pub edges: Vec<String>,
    pub waited_ms: u64,
}

/// Watch the new allocations for `window_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthInput {
    pub operation_id: OperationId,
    pub allocation_ids: Vec<Uuid>,
    pub window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    /// Why not, naming the allocation (and its last log lines where the runner has them).
    pub reason: Option<String>,
    pub checks: u32,
}

/// Drain (never kill) the allocations of `deployment_id` that no RouteOwner points at any
/// more, or exactly `allocation_ids` when given (a losing operation's own allocations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainInput {
    pub operation_id: OperationId,
    pub deployment_id: Uuid,
    pub allocation_ids: Option<Vec<Uuid>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drained {
    pub allocation_ids: Vec<Uuid>,
    /// Left running because a RouteOwner points at their deployment again.
    pub kept: Vec<Uuid>,
}

pub struct PromotionActivities;

#[activity_definitions]
impl PromotionActivities {
    /// The gates: exact preview artifact (or a safe rollback target), route epoch still
    /// current, approval rule, runtime services ready for more than one allocation.
    #[activity(name = "check_promotion_policy")]
    pub fn check_policy(input: PolicyInput) -> Result<Policy, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "start_allocations")]
    pub fn start_allocations(input: AllocationsInput) -> Result<AllocationsReady, ActivityError> {
        unimplemented!()
    }

    /// A stale epoch is a non-retryable route-epoch conflict, also written to the audit log.
    #[activity(name = "move_route")]
    pub fn move_route(input: MoveRouteInput) -> Result<RouteMoved, ActivityError> {
        unimplemented!()
    }

    /// A deadline passed with live edges behind is a non-retryable edge replay gap naming them.
    #[activity(name = "await_edges")]
    pub fn await_edges(input: AwaitEdgesInput) -> Result<EdgesAcked, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "watch_health")]
    pub fn watch_health(input: HealthInput) -> Result<Health, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "drain_allocations")]
    pub fn drain_allocations(input: DrainInput) -> Result<Drained, ActivityError> {
        unimplemented!()
    }
}

/// Opens (or, for a continued run, finds again) the operation of a Wake run and reads what
/// the run needs about the route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeOpenInput {
    pub operation_id: OperationId,
    /// `<workflow id>/<run id>`, stored as `operations.workflow_id`; a continued run writes
    /// its own, so signals reach the run that is alive.
    pub workflow_ref: String,
    pub route_key: String,
    pub epoch: i64,
    /// `system` or `edge:<edge id>`.
    pub actor: String,
    /// The run's trigger, as evidence.
    pub trigger: serde_json::Value,
}

/// What a Wake run knows about its route when it opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeOpened {
    /// The owner's epoch when it is not the run's: the run ends failed.
    pub superseded_by: Option<i64>,
    pub environment_id: Option<Uuid>,
    pub deployment_id: Option<Uuid>,
    pub digest: Option<String>,
    pub scale_to_zero: bool,
    pub sleep_after_ms: u64,
    /// The owner's artifact's `readiness_timeout_secs`.
    pub readiness_timeout_secs: u64,
    /// How often the idle watch checks the route (worker configuration).
    pub idle_check_ms: u64,
    /// Ready allocations of the owner's deployment and digest, meant to run.
    pub ready_allocations: Vec<Uuid>,
    /// The operation that last moved the route (the promotion or deploy that made it hot).
    pub owner_operation_id: Option<Uuid>,
}

/// One request an edge held (or answered) while the route was waking, recorded as evidence
/// on the wake's operation (an audit row `wake.request`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeEvidenceInput {
    pub operation_id: OperationId,
    pub route_key: String,
    pub edge_id: String,
    /// Unique per request within the operation (`trigger`, `attach#N` …): the audit row's
    /// id is derived from it, so a retried activity writes it once.
    pub request_key: String,
    pub request: serde_json::Value,
}

/// The environment's `wake_state`, written only while `epoch` is the route's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeStateInput {
    pub route_key: String,
    pub epoch: i64,
    pub state: String,
}

/// Starts the wake's one allocation of the owner's exact deployment and digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeStartInput {
    pub operation_id: OperationId,
    pub route_key: String,
    pub epoch: i64,
    pub deployment_id: Uuid,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeStarted {
    pub allocation_id: Uuid,
    pub runner: String,
}

/// Waits until the wake's allocation is ready, the readiness timeout passes, or the route
/// moves on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeReadyInput {
    pub operation_id: OperationId,
    pub route_key: String,
    pub epoch: i64,
    pub allocation_id: Uuid,
    pub readiness_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeReady {
    pub ready: bool,
    /// The owner's epoch when the route moved on meanwhile.
    pub superseded_by: Option<i64>,
    /// Why not ready: the allocation's stage, the runner's reason and its last log lines.
    pub reason: Option<String>,
    /// The allocation's last log lines (at most 20) when it did not become ready.
    pub log_lines: Vec<String>,
    /// From the operation's creation (the request that woke the route) to ready.
    pub since_request_ms: u64,
}

/// Drains exactly these allocations (the wake's own, after a failure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeStopInput {
    pub operation_id: OperationId,
    pub allocation_ids: Vec<Uuid>,
}

/// Whether the route at `epoch` is idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteIdleInput {
    pub route_key: String,
    pub epoch: i64,
    /// When the run saw the route hot (Unix ms, workflow time): the idle time of a route no
    /// edge has reported a request for counts from here.
    pub hot_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    /// The route moved past `epoch` (or has no owner): the run stops watching.
    pub superseded: bool,
    /// The environment still scales to zero; when it does not, the run stops watching.
    pub scale_to_zero: bool,
    pub sleep_after_ms: u64,
    pub idle_ms: u64,
    /// Open WebSockets reported by live edges.
    pub open_sockets: u64,
    /// Ready allocations of the owner meant to run (`None` from a worker that did not count
    /// them). None left while hot: the app stopped or failed, the route is asleep in effect.
    #[serde(default)]
    pub ready_allocations: Option<u64>,
}

/// Puts the route to sleep if it is still at `epoch` and idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SleepInput {
    pub operation_id: OperationId,
    pub route_key: String,
    pub epoch: i64,
    pub hot_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slept {
    /// False when the re-check under the route lock found traffic, a moved route or a
    /// setting turned off; `reason` says which.
    pub slept: bool,
    pub reason: Option<String>,
    pub idle_ms: u64,
    /// The allocations told to drain.
    pub allocation_ids: Vec<Uuid>,
    /// Allocations whose runner could not be told to drain (told again when it reports;
    /// they no longer serve): `<id>: <why>`.
    #[serde(default)]
    pub undrained: Vec<String>,
}

pub struct WakeActivities;

#[activity_definitions]
impl WakeActivities {
    #[activity(name = "wake_open")]
    pub fn wake_open(input: WakeOpenInput) -> Result<WakeOpened, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "record_wake_request")]
    pub fn record_wake_request(input: WakeEvidenceInput) -> Result<(), ActivityError> {
        unimplemented!()
    }

    #[activity(name = "set_wake_state")]
    pub fn set_wake_state(input: WakeStateInput) -> Result<bool, ActivityError> {
        unimplemented!()
    }

    /// A route that moved past the run's epoch is a non-retryable "route epoch superseded".
    #[activity(name = "start_wake_allocation")]
    pub fn start_wake_allocation(input: WakeStartInput) -> Result<WakeStarted, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "await_wake_ready")]
    pub fn await_wake_ready(input: WakeReadyInput) -> Result<WakeReady, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "stop_wake_allocations")]
    pub fn stop_wake_allocations(input: WakeStopInput) -> Result<Vec<Uuid>, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "route_idle")]
    pub fn route_idle(input: RouteIdleInput) -> Result<IdleReport, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "sleep_route")]
    pub fn sleep_route(input: SleepInput) -> Result<Slept, ActivityError> {
        unimplemented!()
    }
}

/// Declares lost the runners unseen for longer than the lost-after time (the sweeping
/// worker's own setting; `lost_after_ms` is the one the watch was started with).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepInput {
    pub lost_after_ms: u64,
}

/// The operations the fleet watch ended because their workflow had closed without them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrphansEnded {
    pub operation_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swept {
    /// The runners declared lost by this sweep.
    pub lost: Vec<String>,
    /// When to sweep next, as the sweeping worker is configured (the input's interval when
    /// absent).
    #[serde(default)]
    pub next_sweep_ms: Option<u64>,
    /// The route owners that lost allocations and are due a Repair (absent from histories
    /// recorded before repairs: none).
    #[serde(default)]
    pub repairs: Vec<rhone_core::fleet::RepairNeed>,
}

pub struct FleetActivities;

#[activity_definitions]
impl FleetActivities {
    #[activity(name = "sweep_runners")]
    pub fn sweep_runners(input: SweepInput) -> Result<Swept, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "end_orphaned_operations")]
    pub fn end_orphaned_operations(input: ()) -> Result<OrphansEnded, ActivityError> {
        unimplemented!()
    }
}

/// Opens a Repair's operation in `detected`, with what the fleet watch found as evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairOpenInput {
    pub operation_id: OperationId,
    /// `<workflow id>/<run id>`, stored as the operation's workflow id.
    pub workflow_ref: String,
    pub need: rhone_core::fleet::RepairNeed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairOpened {
    /// The route's epoch when it moved past the need's (or 0: no owner any more).
    pub superseded_by: Option<i64>,
    /// The worker's health window, through which replacements must stay healthy.
    pub health_window_ms: u64,
}

/// Whether the route is still at `epoch`, and where `allocation_ids` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairCheckInput {
    pub route_key: String,
    pub epoch: i64,
    pub allocation_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairCheck {
    pub superseded_by: Option<i64>,
    pub placed: Vec<PlacedAllocation>,
}

/// Where an allocation went: the evidence of a repair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacedAllocation {
    pub allocation_id: Uuid,
    pub runner: Option<String>,
    pub cell: Option<String>,
    pub address: Option<String>,
    pub stage: String,
}

pub struct RepairActivities;

#[activity_definitions]
impl RepairActivities {
    #[activity(name = "open_repair")]
    pub fn open_repair(input: RepairOpenInput) -> Result<RepairOpened, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "check_repair")]
    pub fn check_repair(input: RepairCheckInput) -> Result<RepairCheck, ActivityError> {
        unimplemented!()
    }
}

/// Provisions what binding `binding_id` asks for on its provider: the database and role,
/// and the environment's `DATABASE_URL` secret. Idempotent: a retry sets the role's
/// password again and the secret with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionDatabaseInput {
    pub operation_id: OperationId,
    pub binding_id: Uuid,
}

/// What was provisioned; names and a version, never a password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseProvisioned {
    pub provider: String,
    pub database: String,
    pub role: String,
    pub access: String,
    /// Whether this attempt created the database (false: it existed).
    pub created: bool,
    /// The version of the environment's `DATABASE_URL` now set.
    pub url_version: i64,
}

/// One step of a Migration: which environment's database, with the migrations of which
/// artifact. Activities read the files from the artifact store and the database from the
/// environment's binding, so no SQL text nor URL passes through a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationStepInput {
    pub operation_id: OperationId,
    pub environment_id: Uuid,
    /// The artifact whose migrations are applied.
    pub digest: String,
    /// Which of its pending migrations.
    #[serde(default)]
    pub phase: MigrationPhase,
}

/// Which of an artifact's pending migrations a Migration applies. A release's contract
/// migration can only be applied once what serves carries it (*old artifact compatibility*),
/// and what serves moves only after the release's migrations ran: so a deploy or promotion
/// applies the pending files up to the first contract one before its route moves, and the
/// rest once the route moved and the old allocations drained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// Every pending file: a Migration started on its own (`rhone migrate`).
    #[default]
    All,
    /// Before the route moves: the pending files before the first contract (or
    /// irreversible) one.
    BeforeRoute,
    /// After the route moved: every pending file, contract ones included.
    AfterRoute,
}

/// Creates the operation row of a Migration that another operation started (a deploy), in
/// `classified`, acting for that operation's actor; idempotent on `operation_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenMigrationInput {
    pub operation_id: OperationId,
    pub parent_operation_id: Uuid,
    pub environment_id: Uuid,
    pub deployment_id: Uuid,
    pub digest: String,
}

/// A statement a contract migration would run, named for its approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractStatement {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub rule: String,
    pub reason: String,
    pub sql: String,
}

/// An artifact serving a route of the environment that lacks a contract migration about to
/// run: it still needs the old shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingArtifact {
    pub route_key: String,
    pub deployment_id: Uuid,
    pub digest: String,
    /// The contract migrations it does not carry.
    pub lacks: Vec<String>,
}

/// What `plan_migration` found: the target database, the files still to apply with their
/// classification, and the gates' facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationPlan {
    pub provider: String,
    pub database: String,
    /// Paths of the files not applied yet, in order.
    pub pending: Vec<String>,
    /// Per pending file: its class, statements and rollback plan (evidence as recorded).
    pub classification: serde_json::Value,
    /// Statements of contract class, which need an approval.
    pub contract: Vec<ContractStatement>,
    /// Pending files declared irreversible (no down migration), which need an approval.
    pub irreversible: Vec<String>,
    /// Artifacts serving a route that still need the old shape.
    pub incompatible: Vec<ServingArtifact>,
    /// The provider keeps point-in-time recovery (else the dry run takes a dump).
    pub point_in_time_recovery: bool,
    /// Pending files this phase leaves for after the route moves ([`MigrationPhase::BeforeRoute`]):
    /// the first contract file and every file after it.
    #[serde(default)]
    pub deferred: Vec<String>,
}

/// What `dry_run_migration` did: the pending files applied to a scratch copy of the
/// database's schema, timed, and the backup taken (or the declared recovery).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRunReport {
    pub evidence: serde_json::Value,
}

/// What `apply_migration` did. `lock` is set once the lock was held; `failure` says why it
/// stopped (the lock not granted within the timeout, a statement refused), in which case
/// the transaction rolled back and nothing was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub lock: Option<serde_json::Value>,
    pub applied: serde_json::Value,
    pub failure: Option<String>,
    pub failure_evidence: serde_json::Value,
}

/// What `verify_migration` read back and recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub evidence: serde_json::Value,
}

pub struct DatabaseActivities;

#[activity_definitions]
impl DatabaseActivities {
    #[activity(name = "provision_database")]
    pub fn provision_database(
        input: ProvisionDatabaseInput,
    ) -> Result<DatabaseProvisioned, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "open_migration")]
    pub fn open_migration(input: OpenMigrationInput) -> Result<(), ActivityError> {
        unimplemented!()
    }

    #[activity(name = "plan_migration")]
    pub fn plan_migration(input: MigrationStepInput) -> Result<MigrationPlan, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "dry_run_migration")]
    pub fn dry_run_migration(input: MigrationStepInput) -> Result<DryRunReport, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "apply_migration")]
    pub fn apply_migration(input: MigrationStepInput) -> Result<ApplyReport, ActivityError> {
        unimplemented!()
    }

    #[activity(name = "verify_migration")]
    pub fn verify_migration(input: MigrationStepInput) -> Result<VerifyReport, ActivityError> {
        unimplemented!()
    }
}

/// The marker types, named so the implementing crate can point at them.
pub mod defs {
    pub use super::database_activities::{
        ApplyMigration, DryRunMigration, OpenMigration, PlanMigration, ProvisionDatabase,
        VerifyMigration,
    };
    pub use super::deploy_activities::{BuildArtifact, CloneSource, ValidateDeployment};
    pub use super::fleet_activities::{EndOrphanedOperations, SweepRunners};
    pub use super::operation_activities::{AuditDecision, RecordDecision, RecordStage, SetStatus};
    pub use super::preview_activities::StartPreview;
    pub use super::promotion_activities::{
        AwaitEdges, CheckPolicy, DrainAllocations, MoveRoute, StartAllocations, WatchHealth,
    };
    pub use super::repair_activities::{CheckRepair, OpenRepair};
    pub use super::tenancy_activities::CreateEnvironment;
    pub use super::wake_activities::{
        AwaitWakeReady, RecordWakeRequest, RouteIdle, SetWakeState, SleepRoute,
        StartWakeAllocation, StopWakeAllocations, WakeOpen,
    };
}
