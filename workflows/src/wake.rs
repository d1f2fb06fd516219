//! Wake: one awake period of a route key at one route epoch. `cold → wake_requested →
//! starting → readiness_wait → hot`, or `failed`; `hot → sleeping` after the idle period;
//! `cold → hot` when the route is hot already (a promotion, deploy or setting started the
//! run to watch it, or edges raced).
//!
//! The workflow id is [`rhone_core::wake_workflow_id`]`(route key, epoch)`: every edge that
//! finds the route asleep calls `attach` by update-with-start on that id (conflict policy
//! use-existing, reuse policy allow-duplicate), so concurrent requests coalesce into one run,
//! and a later awake period of the same epoch is a new run. Each run is one Operation, whose
//! id is the run id (a UUID; [`operation_id_of_run`]); `operations.workflow_id` is
//! `<workflow id>/<run id>`, the Temporal UI's path of the run.
//!
//! - `wake_open` creates the operation (stage `cold`) and reads the route owner: an owner at
//!   another epoch ends the run `failed` ("route epoch superseded").
//! - A request trigger starts ONE allocation of the owner's exact deployment and digest,
//!   waits for it within the artifact's readiness timeout (a miss drains it and ends `failed`
//!   with its last log lines) and goes `hot`.
//! - Hot, the run watches the route (`route_idle` every `min(sleep_after / 4, idle check)`,
//!   at least 250 ms): no request for `sleep_after_ms` and no open WebSocket puts the route
//!   to sleep (`sleep_route`: the owner's allocations drain, never killed mid-request) and
//!   the run ends `sleeping`. A route that moved on, or an environment that no longer
//!   scales to zero, ends the watch with the run still `hot`. Long watches continue as new
//!   with the same operation.
//! - `environments.wake_state` follows every stage while the run's epoch is the route's.

use std::time::Duration;

use rhone_core::{OperationId, OperationKind, StateMachine, stage::WakeStage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{
    ActivityOptions, ChildWorkflowOptions, ContinueAsNewOptions, ParentClosePolicy,
    SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowIdReusePolicy,
    WorkflowResult, WorkflowTermination,
};
use uuid::Uuid;

use crate::{
    activities::{
        RouteIdleInput, SleepInput, WakeActivities, WakeEvidenceInput, WakeOpenInput, WakeOpened,
        WakeReadyInput, WakeStartInput, WakeStateInput, WakeStopInput,
    },
    stages::{
        Decision, DecisionKind, DecisionSlot, DecisionTaken, Operation, Refusal, StepFailure,
        quick, step, watched,
    },
};

/// What starts a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WakeInput {
    pub route_key: String,
    pub epoch: i64,
    pub trigger: WakeTrigger,
}

/// Why a run started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WakeTrigger {
    /// An edge holds (or answered) a request for the sleeping route.
    Request(WakeRequest),
    /// A healthy promotion made the route hot: watch it.
    Promotion { operation_id: Uuid },
    /// A deploy's preview went ready: watch its route.
    Deploy { operation_id: Uuid },
    /// Scale to zero was turned on for a hot route: watch it.
    Setting { operation_id: Uuid },
    /// The same operation's watch, continued as new so its history stays short.
    Continued {
        operation_id: Uuid,
        /// When the route went hot (Unix ms, workflow time).
        hot_at_ms: i64,
    },
}

/// A request an edge received for the route, recorded as evidence on the operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WakeRequest {
    /// `read`, `idempotent_write`, `unsafe_write`, `webhook` or `websocket`.
    pub class: String,
    pub method: String,
    pub path: String,
    pub edge_id: String,
    /// What the edge does with it or answers, for people.
    pub decision: String,
    /// E.g. `{"provider":"stripe","delivery":"evt_1"}`.
    pub detail: serde_json::Value,
}

/// What `attach` answers: the run's operation, its stage, and its error once failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WakeStatus {
    pub operation_id: Uuid,
    pub stage: String,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WakeOutcome {
    pub operation_id: Uuid,
    /// `hot` (the watch ended: the route moved on or stopped scaling to zero) or `sleeping`.
    pub stage: String,
    /// The allocations this run started (a wake) or drained (a sleep).
    pub allocation_ids: Vec<Uuid>,
}

/// The operation id of a run: the run id (Temporal run ids are UUIDs), or, for a run id
/// that is not one, a UUID (version 8) derived from it.
pub fn operation_id_of_run(run_id: &str) -> Uuid {
    if let Ok(id) = Uuid::parse_str(run_id) {
        return id;
    }
    // FNV-1a, twice with different offsets: deterministic, no dependency.
    let fnv = |offset: u64| {
        run_id.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Watch checks in one run before it continues as new.
const CHECKS_PER_RUN: u32 = 500;
/// The idle watch never checks more often than this.
const MIN_CHECK: Duration = Duration::from_millis(250);
/// Pulling the artifact comes before the app's readiness time.
const PULL_ALLOWANCE: Duration = Duration::from_secs(120);

#[workflow]
#[derive(Default)]
pub struct WakeWorkflow {
    decisions: DecisionSlot,
    route_key: String,
    operation_id: Option<Uuid>,
    stage: String,
    error: Option<String>,
    /// The trigger's request until the `attach` that carries it arrives (update-with-start
    /// sends both): the run records it once.
    trigger_request: Option<WakeRequest>,
    attaches: u32,
    /// `attach` handlers running: the run does not end (or continue) before they answer.
    in_flight: u32,
}

crate::decisions_in_slot!(WakeWorkflow);

/// How a run ended when it did not end hot or asleep.
struct Ending {
    failure: StepFailure,
    evidence: serde_json::Value,
}

impl From<StepFailure> for Ending {
    fn from(failure: StepFailure) -> Self {
        Ending {
            failure,
            evidence: json!({}),
        }
    }
}

type Flow<T> = Result<Result<T, Ending>, WorkflowTermination>;

/// `route epoch superseded: …`, the failure of a wake whose route moved on.
pub fn superseded(key: &str, epoch: i64, owner_epoch: i64) -> String {
    if owner_epoch == 0 {
        format!(
            "route epoch superseded: this wake was for epoch {epoch} of {key}, which has no owner any more"
        )
    } else {
        format!(
            "route epoch superseded: this wake was for epoch {epoch} of {key}, the owner is at epoch {owner_epoch}"
        )
    }
}

/// The run's time in Unix milliseconds (workflow time: the same on replay).
fn now_ms<W>(ctx: &WorkflowContext<W>) -> i64 {
    ctx.workflow_time()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[workflow_methods]
impl WakeWorkflow {
    #[run(name = "wake")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: WakeInput,
    ) -> WorkflowResult<WakeOutcome> {
        let operation_id = match &input.trigger {
            WakeTrigger::Continued { operation_id, .. } => *operation_id,
            _ => operation_id_of_run(ctx.run_id()),
        };
        let trigger_request = match &input.trigger {
            WakeTrigger::Request(r) => Some(r.clone()),
            _ => None,
        };
        let key = input.route_key.clone();
        ctx.state_mut(|w| {
            w.route_key = key;
            w.trigger_request = trigger_request;
        });
        let mut op = Operation::new(OperationId(operation_id), OperationKind::Wake);
        let ended = match Self::pipeline(ctx, &mut op, &input).await? {
            Ok(outcome) => Ok(outcome),
            Err(Ending { failure, evidence }) => {
                let message = match &failure {
                    StepFailure::Rejected(m) => m.clone(),
                    StepFailure::Aborted(d) => format!("aborted by {}", d.actor),
                };
                ctx.state_mut(|w| {
                    // `attach` waits for the operation; it answers the failure.
                    w.operation_id = Some(operation_id);
                    w.stage = WakeStage::Failed.as_str().to_owned();
                    w.error = Some(message);
                });
                Self::wake_state(ctx, &op, &input, WakeStage::Failed).await?;
                let ended = op.end_with(ctx, WakeStage::Failed, failure, evidence).await;
                Self::handlers_done(ctx).await?;
                return ended;
            }
        };
        Self::handlers_done(ctx).await?;
        ended
    }

    async fn pipeline(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        input: &WakeInput,
    ) -> Flow<WakeOutcome> {
        let key = &input.route_key;
        let actor = match &input.trigger {
            WakeTrigger::Request(r) => format!("edge:{}", r.edge_id),
            _ => "system".to_owned(),
        };
        let continued = match &input.trigger {
            WakeTrigger::Continued { hot_at_ms, .. } => Some(*hot_at_ms),
            _ => None,
        };
        let opened: WakeOpened = step!(
            op,
            ctx,
            WakeActivities::wake_open,
            WakeOpenInput {
                operation_id: op.id,
                workflow_ref: format!("{}/{}", ctx.workflow_id(), ctx.run_id()),
                route_key: key.clone(),
                epoch: input.epoch,
                actor,
                trigger: serde_json::to_value(&input.trigger).unwrap_or_default(),
            },
            quick()
        );
        let initial = if continued.is_some() {
            WakeStage::Hot
        } else {
            WakeStage::Cold
        };
        let op_id = op.id.0;
        ctx.state_mut(|w| {
            w.operation_id = Some(op_id);
            w.stage = initial.as_str().to_owned();
        });
        if let Some(owner_epoch) = opened.superseded_by {
            return Ok(Err(StepFailure::Rejected(superseded(
                key,
                input.epoch,
                owner_epoch,
            ))
            .into()));
        }
        if let Some(hot_at_ms) = continued {
            return Self::watch(ctx, op, input, &opened, hot_at_ms, Vec::new()).await;
        }
        let (Some(deployment_id), Some(digest)) = (opened.deployment_id, opened.digest.clone())
        else {
            return Ok(Err(StepFailure::Rejected(format!(
                "route {key} at epoch {} names no deployment to wake",
                input.epoch
            ))
            .into()));
        };

        if !opened.ready_allocations.is_empty() {
            if let WakeTrigger::Request(request) = &input.trigger {
                Self::record_request(ctx, op.id, key, "trigger".to_owned(), request).await?;
            }
            let made_hot_by = match &input.trigger {
                WakeTrigger::Promotion { operation_id }
                | WakeTrigger::Deploy { operation_id }
                | WakeTrigger::Setting { operation_id } => Some(*operation_id),
                _ => opened.owner_operation_id,
            };
            Self::enter(
                ctx,
                op,
                input,
                WakeStage::Hot,
                json!({
                    "already_hot": true, "trigger": input.trigger, "epoch": input.epoch,
                    "deployment_id": deployment_id, "digest": digest,
                    "allocation_ids": opened.ready_allocations, "made_hot_by": made_hot_by,
                }),
            )
            .await?;
            return Self::watch(ctx, op, input, &opened, now_ms(ctx), Vec::new()).await;
        }
        if !matches!(input.trigger, WakeTrigger::Request(_)) {
            return Ok(Err(StepFailure::Rejected(format!(
                "nothing to watch: {key} at epoch {} has no ready allocation of deployment {deployment_id}",
                input.epoch
            ))
            .into()));
        }

        // The allocation starts first: the app boots while the stages are recorded (each a
        // round trip to the control DB), which is what a request held for it waits on.
        let started = step!(
            op,
            ctx,
            WakeActivities::start_wake_allocation,
            WakeStartInput {
                operation_id: op.id,
                route_key: key.clone(),
                epoch: input.epoch,
                deployment_id,
                digest: digest.clone(),
            },
            watched(Duration::from_secs(120))
        );
        if let WakeTrigger::Request(request) = &input.trigger {
            Self::record_request(ctx, op.id, key, "trigger".to_owned(), request).await?;
        }
        Self::enter(
            ctx,
            op,
            input,
            WakeStage::WakeRequested,
            json!({
                "trigger": input.trigger, "epoch": input.epoch,
                "deployment_id": deployment_id, "digest": digest,
            }),
        )
        .await?;
        Self::enter(
            ctx,
            op,
            input,
            WakeStage::Starting,
            json!({
                "deployment_id": deployment_id, "digest": digest, "instances": 1,
                "allocation_id": started.allocation_id, "runner": started.runner,
            }),
        )
        .await?;
        Self::enter(
            ctx,
            op,
            input,
            WakeStage::ReadinessWait,
            json!({
                "allocation_id": started.allocation_id, "runner": started.runner,
                "readiness_timeout_secs": opened.readiness_timeout_secs,
            }),
        )
        .await?;
        let wait = Duration::from_secs(opened.readiness_timeout_secs) + PULL_ALLOWANCE;
        let ready = op
            .step(
                ctx,
                || WakeActivities::await_wake_ready,
                WakeReadyInput {
                    operation_id: op.id,
                    route_key: key.clone(),
                    epoch: input.epoch,
                    allocation_id: started.allocation_id,
                    readiness_timeout_secs: opened.readiness_timeout_secs,
                },
                watched(wait + Duration::from_secs(60)),
            )
            .await?;
        let ready = match ready {
            Ok(r) if r.ready => r,
            not_ready => {
                // What this run started must not keep running unrouted.
                let _ = op
                    .step(
                        ctx,
                        || WakeActivities::stop_wake_allocations,
                        WakeStopInput {
                            operation_id: op.id,
                            allocation_ids: vec![started.allocation_id],
                        },
                        quick(),
                    )
                    .await?;
                let r = match not_ready {
                    Ok(r) => r,
                    Err(f) => return Ok(Err(f.into())),
                };
                let message = match r.superseded_by {
                    Some(owner_epoch) => superseded(key, input.epoch, owner_epoch),
                    None => format!(
                        "allocation {} did not become ready: {}",
                        started.allocation_id,
                        r.reason.as_deref().unwrap_or("no reason given")
                    ),
                };
                return Ok(Err(Ending {
                    failure: StepFailure::Rejected(message),
                    evidence: json!({
                        "allocation_id": started.allocation_id, "reason": r.reason,
                        "log_lines": r.log_lines, "superseded_by": r.superseded_by,
                        "drained": [started.allocation_id],
                    }),
                }));
            }
        };
        Self::enter(
            ctx,
            op,
            input,
            WakeStage::Hot,
            json!({
                "allocation_ids": [started.allocation_id], "epoch": input.epoch,
                "deployment_id": deployment_id, "digest": digest,
                "since_request_ms": ready.since_request_ms,
            }),
        )
        .await?;
        Self::watch(
            ctx,
            op,
            input,
            &opened,
            now_ms(ctx),
            vec![started.allocation_id],
        )
        .await
    }

    /// The idle watch of a hot route, until it sleeps, moves on, stops scaling to zero, or
    /// the run continues as new.
    async fn watch(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        input: &WakeInput,
        opened: &WakeOpened,
        hot_at_ms: i64,
        started: Vec<Uuid>,
    ) -> Flow<WakeOutcome> {
        let key = &input.route_key;
        let hot = |allocation_ids| {
            Ok(Ok(WakeOutcome {
                operation_id: op.id.0,
                stage: WakeStage::Hot.as_str().to_owned(),
                allocation_ids,
            }))
        };
        let mut sleep_after = opened.sleep_after_ms;
        let mut checks = 0u32;
        loop {
            let every = Duration::from_millis((sleep_after / 4).min(opened.idle_check_ms));
            ctx.timer(every.max(MIN_CHECK)).await;
            let check = RouteIdleInput {
                route_key: key.clone(),
                epoch: input.epoch,
                hot_at_ms,
            };
            let idle = match ctx
                .execute_activity(WakeActivities::route_idle, check, quick())
                .await
            {
                Ok(idle) => idle,
                // A check that failed all its attempts (the control DB away) decides
                // nothing: the route stays up and is checked again at the next tick.
                Err(_) => {
                    checks += 1;
                    continue;
                }
            };
            if idle.superseded || !idle.scale_to_zero {
                // A promotion drains the old allocations; a route that stopped scaling to
                // zero stays up.
                return hot(started);
            }
            if idle.ready_allocations == Some(0) {
                // The app stopped or failed while hot: nothing serves the route, so it is
                // asleep in effect, and the next request wakes it (a new run).
                ctx.state_mut(|w| w.stage = WakeStage::Sleeping.as_str().to_owned());
                Self::enter(
                    ctx,
                    op,
                    input,
                    WakeStage::Sleeping,
                    json!({
                        "reason": "no ready allocation of the owner is left: it stopped or failed while hot",
                        "epoch": input.epoch,
                    }),
                )
                .await?;
                return Ok(Ok(WakeOutcome {
                    operation_id: op.id.0,
                    stage: WakeStage::Sleeping.as_str().to_owned(),
                    allocation_ids: Vec::new(),
                }));
            }
            sleep_after = idle.sleep_after_ms;
            if idle.idle_ms >= sleep_after && idle.open_sockets == 0 {
                // From here an edge's `attach` is answered `sleeping` at once, so it asks
                // the next run instead of waiting on this one.
                ctx.state_mut(|w| w.stage = WakeStage::Sleeping.as_str().to_owned());
                let slept = step!(
                    op,
                    ctx,
                    WakeActivities::sleep_route,
                    SleepInput {
                        operation_id: op.id,
                        route_key: key.clone(),
                        epoch: input.epoch,
                        hot_at_ms,
                    },
                    watched(Duration::from_secs(120))
                );
                if slept.slept {
                    op.enter(
                        ctx,
                        WakeStage::Sleeping,
                        json!({
                            "idle_ms": slept.idle_ms, "sleep_after_ms": sleep_after,
                            "drained": slept.allocation_ids, "epoch": input.epoch,
                            "undrained": slept.undrained,
                        }),
                        None,
                    )
                    .await?;
                    return Ok(Ok(WakeOutcome {
                        operation_id: op.id.0,
                        stage: WakeStage::Sleeping.as_str().to_owned(),
                        allocation_ids: slept.allocation_ids,
                    }));
                }
                ctx.state_mut(|w| w.stage = WakeStage::Hot.as_str().to_owned());
            }
            checks += 1;
            if checks >= CHECKS_PER_RUN || ctx.continue_as_new_suggested() {
                Self::handlers_done(ctx).await?;
                let next = WakeInput {
                    route_key: key.clone(),
                    epoch: input.epoch,
                    trigger: WakeTrigger::Continued {
                        operation_id: op.id.0,
                        hot_at_ms,
                    },
                };
                match ctx.continue_as_new(next, ContinueAsNewOptions::default()) {
                    Err(termination) => return Err(termination),
                    Ok(never) => match never {},
                }
            }
        }
    }

    /// Enters `stage` and keeps the environment's `wake_state` in step.
    async fn enter(
        ctx: &WorkflowContext<Self>,
        op: &mut Operation,
        input: &WakeInput,
        stage: WakeStage,
        evidence: serde_json::Value,
    ) -> Result<(), WorkflowTermination> {
        op.enter(ctx, stage, evidence, None).await?;
        ctx.state_mut(|w| w.stage = stage.as_str().to_owned());
        Self::wake_state(ctx, op, input, stage).await
    }

    /// Writes `environments.wake_state` (only while the run's epoch is the route's).
    async fn wake_state(
        ctx: &WorkflowContext<Self>,
        op: &Operation,
        input: &WakeInput,
        stage: WakeStage,
    ) -> Result<(), WorkflowTermination> {
        let _ = op
            .step(
                ctx,
                || WakeActivities::set_wake_state,
                WakeStateInput {
                    route_key: input.route_key.clone(),
                    epoch: input.epoch,
                    state: stage.as_str().to_owned(),
                },
                quick(),
            )
            .await?;
        Ok(())
    }

    /// Records a request as evidence on the operation (an audit row, written once per key).
    async fn record_request<W>(
        ctx: &WorkflowContext<W>,
        operation_id: OperationId,
        route_key: &str,
        request_key: String,
        request: &WakeRequest,
    ) -> Result<(), WorkflowTermination> {
        let input = WakeEvidenceInput {
            operation_id,
            route_key: route_key.to_owned(),
            edge_id: request.edge_id.clone(),
            request_key,
            request: serde_json::to_value(request).unwrap_or_default(),
        };
        // Evidence must not be lost to a DB that is away for a while.
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(15))
            .retry_policy(
                temporalio_common::RetryPolicy::builder()
                    .initial_interval(Duration::from_millis(200))
                    .maximum_interval(Duration::from_secs(10))
                    .build(),
            )
            .build();
        ctx.execute_activity(WakeActivities::record_wake_request, input, options)
            .await?;
        Ok(())
    }

    /// Waits until every `attach` in flight has answered.
    async fn handlers_done(ctx: &WorkflowContext<Self>) -> Result<(), WorkflowTermination> {
        ctx.wait_condition(|w| w.in_flight == 0).await?;
        Ok(())
    }

    /// An edge's request for the route: waits until the run's operation exists, records the
    /// request as evidence on it, and answers the current stage (and the error once failed).
    #[update(name = "attach")]
    pub async fn attach(ctx: &mut WorkflowContext<Self>, request: WakeRequest) -> WakeStatus {
        // A run that has put the route to sleep (or failed) is ending: answer at once, with
        // nothing recorded, so it can end; the edge's next call starts the next run.
        let ending = ctx.state(|w| {
            (w.stage == WakeStage::Sleeping.as_str() || w.stage == WakeStage::Failed.as_str()).then(
                || WakeStatus {
                    operation_id: w.operation_id.unwrap_or_default(),
                    stage: w.stage.clone(),
                    error: w.error.clone(),
                },
            )
        });
        if let Some(status) = ending {
            return status;
        }
        ctx.state_mut(|w| w.in_flight += 1);
        let waited = ctx.wait_condition(|w| w.operation_id.is_some()).await;
        let recorded = match waited {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                let (operation_id, key, request_key) = ctx.state_mut(|w| {
                    let is_trigger = w.trigger_request.as_ref() == Some(&request);
                    let request_key = if is_trigger {
                        // The run records its own trigger.
                        w.trigger_request = None;
                        None
                    } else {
                        w.attaches += 1;
                        Some(format!("attach#{}", w.attaches))
                    };
                    (
                        w.operation_id.unwrap_or_default(),
                        w.route_key.clone(),
                        request_key,
                    )
                });
                match request_key {
                    None => Ok(()),
                    Some(request_key) => Self::record_request(
                        ctx,
                        OperationId(operation_id),
                        &key,
                        request_key,
                        &request,
                    )
                    .await
                    .map_err(|e| format!("{e:?}")),
                }
            }
        };
        ctx.state_mut(|w| {
            w.in_flight -= 1;
            WakeStatus {
                operation_id: w.operation_id.unwrap_or_default(),
                stage: w.stage.clone(),
                error: match recorded {
                    Ok(()) => w.error.clone(),
                    Err(e) => Some(format!("the request was not recorded: {e}")),
                },
            }
        })
    }

    #[update_validator(approve)]
    pub fn check_approve(
        &self,
        _ctx: &WorkflowContextView,
        decision: &Decision,
    ) -> Result<(), Refusal> {
        self.decisions.check(DecisionKind::Approve, decision)
    }

    #[update(name = "approve")]
    pub fn approve(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        decision: Decision,
    ) -> DecisionTaken {
        self.decisions.put(DecisionKind::Approve, decision)
    }

    #[update_validator(retry)]
    pub fn check_retry(
        &self,
        _ctx: &WorkflowContextView,
        decision: &Decision,
    ) -> Result<(), Refusal> {
        self.decisions.check(DecisionKind::Retry, decision)
    }

    #[update(name = "retry")]
    pub fn retry(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        decision: Decision,
    ) -> DecisionTaken {
        self.decisions.put(DecisionKind::Retry, decision)
    }

    #[update_validator(abort)]
    pub fn check_abort(
        &self,
        _ctx: &WorkflowContextView,
        decision: &Decision,
    ) -> Result<(), Refusal> {
        self.decisions.check(DecisionKind::Abort, decision)
    }

    #[update(name = "abort")]
    pub fn abort(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        decision: Decision,
    ) -> DecisionTaken {
        self.decisions.put(DecisionKind::Abort, decision)
    }
}

/// Starts the Wake run of `route_key` at `epoch` in watch mode as a child that outlives its
/// parent (a healthy promotion, a ready preview, a setting). Only its start is awaited; a
/// run of that id already running is the watch already.
pub async fn start_watch<W>(
    ctx: &WorkflowContext<W>,
    route_key: &str,
    epoch: i64,
    trigger: WakeTrigger,
) -> Result<(), WorkflowTermination> {
    let options = ChildWorkflowOptions::builder()
        .workflow_id(rhone_core::wake_workflow_id(route_key, epoch))
        .parent_close_policy(ParentClosePolicy::Abandon)
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .build();
    let input = WakeInput {
        route_key: route_key.to_owned(),
        epoch,
        trigger,
    };
    // Already running (or started by an edge meanwhile): nothing to do.
    let _ = ctx
        .start_child_workflow(WakeWorkflow::run, input, options)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_id_is_the_run_id() {
        let run = "0193c1e2-0000-7000-8000-000000000001";
        assert_eq!(operation_id_of_run(run).to_string(), run);
        let derived = operation_id_of_run("not-a-uuid");
        assert_eq!(derived, operation_id_of_run("not-a-uuid"));
        assert_ne!(derived, operation_id_of_run("not-a-uuid-either"));
        assert_eq!(derived.get_version_num(), 8);
    }

    #[test]
    fn trigger_is_tagged() {
        let t = WakeTrigger::Promotion {
            operation_id: Uuid::nil(),
        };
        let v = serde_json::to_value(&t).expect("serialises");
        assert_eq!(v["kind"], "promotion");
        let r = WakeTrigger::Request(WakeRequest {
            class: "read".into(),
            method: "GET".into(),
            path: "/".into(),
            edge_id: "edge-a".into(),
            decision: "hold".into(),
            detail: json!({}),
        });
        let v = serde_json::to_value(&r).expect("serialises");
        assert_eq!(
            (v["kind"].as_str(), v["class"].as_str()),
            (Some("request"), Some("read"))
        );
        assert_eq!(serde_json::from_value::<WakeTrigger>(v).expect("parses"), r);
    }
}
