//! How a workflow moves its Operation: every stage it enters is recorded by the idempotent
//! `record_stage` activity, and a step whose activity exhausts its retries parks the operation
//! as `needs_attention` until on-call sends `retry` or `abort` (from the API, the CLI or the
//! Temporal UI) instead of failing silently.

use std::{collections::BTreeMap, time::Duration};

use rhone_core::{OperationId, OperationKind, OperationStatus, StateMachine};
use serde::{Deserialize, Serialize};
use temporalio_common::error::ApplicationFailure;
use temporalio_common::{ActivityDefinition, RetryPolicy, data_converters::TemporalDeserializable};
use temporalio_workflow::{
    ActivityExecutionError, ActivityOptions, RetryState, WorkflowContext, WorkflowTermination,
};

use crate::activities::{OperationActivities, RecordStageInput, SetStatusInput, StageRecorded};

/// A decision sent to a waiting operation. Every field has a default, so `{}` sent from the
/// Temporal UI is a valid decision too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decision {
    /// Who decided, e.g. `user:<uuid>`; recorded on the stage evidence.
    pub actor: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Approve,
    Retry,
    Abort,
}

/// Workflow state that receives decisions through its `approve`/`retry`/`abort` signals.
pub trait Decisions {
    fn pending(&self) -> Option<&(DecisionKind, Decision)>;
    fn take(&mut self) -> Option<(DecisionKind, Decision)>;
}

/// Implements [`Decisions`] for a workflow whose `decisions` field is a [`DecisionSlot`].
/// (Its `approve`/`retry`/`abort` signal methods must be written out in the workflow's own
/// `#[workflow_methods]` block, which sees them before any macro would expand.)
#[macro_export]
macro_rules! decisions_in_slot {
    ($workflow:ty) => {
        impl $crate::stages::Decisions for $workflow {
            fn pending(&self) -> Option<&($crate::DecisionKind, $crate::Decision)> {
                self.decisions.pending()
            }
            fn take(&mut self) -> Option<($crate::DecisionKind, $crate::Decision)> {
                self.decisions.take()
            }
        }
    };
}

/// The decision slot a workflow embeds; the latest signal wins.
#[derive(Debug, Default)]
pub struct DecisionSlot(Option<(DecisionKind, Decision)>);

impl DecisionSlot {
    pub fn put(&mut self, kind: DecisionKind, decision: Decision) {
        self.0 = Some((kind, decision));
    }
    pub fn pending(&self) -> Option<&(DecisionKind, Decision)> {
        self.0.as_ref()
    }
    pub fn take(&mut self) -> Option<(DecisionKind, Decision)> {
        self.0.take()
    }
}

/// Why a step ended without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepFailure {
    /// The activity refused for good (validation, conflict, permission): not retryable.
    Rejected(String),
    /// On-call aborted the operation while it waited for attention.
    Aborted(Decision),
}

/// Stage recording and step execution for one operation.
pub struct Operation {
    pub id: OperationId,
    pub kind: OperationKind,
    attempts: BTreeMap<&'static str, u32>,
}

/// Recording a stage must not give up: the DB being away for a while is retried with
/// backoff and shows as a pending activity in the Temporal UI.
fn record_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(15))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(200))
                .maximum_interval(Duration::from_secs(30))
                .build(),
        )
        .build()
}

/// The default options of a step: a few quick retries, then the operation needs attention.
pub fn step_options(start_to_close: Duration, maximum_attempts: u32) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(start_to_close)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(200))
                .maximum_interval(Duration::from_secs(10))
                .maximum_attempts(maximum_attempts)
                .build(),
        )
        .build()
}

/// The message of the cause of an activity failure, which is what its implementation said.
pub fn failure_message(err: &ActivityExecutionError) -> String {
    match err.cause() {
        Some(cause) => cause.to_string(),
        None => err.to_string(),
    }
}

impl Operation {
    pub fn new(id: OperationId, kind: OperationKind) -> Self {
        Self {
            id,
            kind,
            attempts: BTreeMap::new(),
        }
    }

    /// Records entering `stage` with its evidence. Re-entering a stage is a new attempt.
    pub async fn enter<W, S: StateMachine>(
        &mut self,
        ctx: &WorkflowContext<W>,
        stage: S,
        evidence: serde_json::Value,
        error: Option<String>,
    ) -> Result<StageRecorded, WorkflowTermination> {
        self.enter_with_status(ctx, stage, evidence, error, None)
            .await
    }

    pub async fn enter_with_status<W, S: StateMachine>(
        &mut self,
        ctx: &WorkflowContext<W>,
        stage: S,
        evidence: serde_json::Value,
        error: Option<String>,
        status: Option<OperationStatus>,
    ) -> Result<StageRecorded, WorkflowTermination> {
        let attempt = self.attempts.entry(stage.as_str()).or_insert(0);
        *attempt += 1;
        let input = RecordStageInput {
            operation_id: self.id,
            kind: self.kind,
            record_key: format!("{}#{}", stage.as_str(), attempt),
            stage: stage.as_str().to_owned(),
            attempt: *attempt,
            evidence,
            error,
            status,
        };
        Ok(ctx
            .execute_activity(OperationActivities::record_stage, input, record_options())
            .await?)
    }

    /// Moves the status without a stage change (`needs_attention`, back to `running`, or
    /// `succeeded` once a stage entered as `running` has done its work).
    pub async fn set_status<W>(
        &self,
        ctx: &WorkflowContext<W>,
        status: OperationStatus,
        error: Option<String>,
    ) -> Result<(), WorkflowTermination> {
        let input = SetStatusInput {
            operation_id: self.id,
            status,
            error,
        };
        Ok(ctx
            .execute_activity(OperationActivities::set_status, input, record_options())
            .await?)
    }

    /// Ends the operation in `stage` (its machine's failure stage) with the failure's reason
    /// and status (`aborted` for an abort), and fails the workflow with the same reason so
    /// the Temporal UI agrees with the API.
    pub async fn end_failed<W, S: StateMachine, T>(
        &mut self,
        ctx: &WorkflowContext<W>,
        stage: S,
        failure: StepFailure,
    ) -> Result<T, WorkflowTermination> {
        self.end_with(ctx, stage, failure, serde_json::json!({}))
            .await
    }

    /// [`Operation::end_failed`] with evidence on the final stage record.
    pub async fn end_with<W, S: StateMachine, T>(
        &mut self,
        ctx: &WorkflowContext<W>,
        stage: S,
        failure: StepFailure,
        evidence: serde_json::Value,
    ) -> Result<T, WorkflowTermination> {
        let (status, message) = match failure {
            StepFailure::Rejected(m) => (None, m),
            StepFailure::Aborted(d) => (
                Some(OperationStatus::Aborted),
                format!("aborted by {}", d.actor),
            ),
        };
        self.enter_with_status(ctx, stage, evidence, Some(message.clone()), status)
            .await?;
        Err(ApplicationFailure::non_retryable(message).into())
    }

    /// Runs one activity (given as `|| Activities::name`) as a step. A refusal comes back as [`StepFailure::Rejected`]; a
    /// transient failure that outlives its retries parks the operation as `needs_attention`
    /// and waits for `retry` (run the step again) or `abort`.
    pub async fn step<W: Decisions, AD>(
        &self,
        ctx: &WorkflowContext<W>,
        activity: impl Fn() -> AD,
        input: AD::Input,
        options: ActivityOptions,
    ) -> Result<Result<AD::Output, StepFailure>, WorkflowTermination>
    where
        AD: ActivityDefinition,
        AD::Input: Clone,
        AD::Output: TemporalDeserializable,
    {
        loop {
            let err = match ctx
                .execute_activity(activity(), input.clone(), options.clone())
                .await
            {
                Ok(out) => return Ok(Ok(out)),
                Err(err) => err,
            };
            let message = failure_message(&err);
            if let ActivityExecutionError::Failed(failed) = &err
                && failed.retry_state() == RetryState::NonRetryableFailure
            {
                return Ok(Err(StepFailure::Rejected(message)));
            }
            // Exhausted retries or timed out: wait for on-call.
            if let Err(aborted) = self.needs_attention(ctx, message).await? {
                return Ok(Err(StepFailure::Aborted(aborted)));
            }
        }
    }

    /// Parks the operation as `needs_attention` with `message` and waits for on-call: `Ok`
    /// on `retry` (the status is `running` again), `Err` with the decision on `abort`. A
    /// decision sent before this is not a decision about this failure, so it goes before the
    /// status is written; one that arrives once on-call can see `needs_attention` (possibly
    /// in the same activation as the status write's completion) is kept.
    pub async fn needs_attention<W: Decisions>(
        &self,
        ctx: &WorkflowContext<W>,
        message: String,
    ) -> Result<Result<(), Decision>, WorkflowTermination> {
        ctx.state_mut(|w| {
            w.take();
        });
        self.set_status(ctx, OperationStatus::NeedsAttention, Some(message))
            .await?;
        if let Err(aborted) = wait_for_decision(ctx, DecisionKind::Retry).await? {
            return Ok(Err(aborted));
        }
        self.set_status(ctx, OperationStatus::Running, None).await?;
        Ok(Ok(()))
    }
}

/// Waits for a decision of kind `wanted` (`Ok`) or an abort (`Err`); any other kind is
/// taken and ignored.
pub async fn wait_for_decision<W: Decisions>(
    ctx: &WorkflowContext<W>,
    wanted: DecisionKind,
) -> Result<Result<Decision, Decision>, WorkflowTermination> {
    loop {
        ctx.wait_condition(|w| w.pending().is_some()).await?;
        match ctx.state_mut(|w| w.take()) {
            Some((DecisionKind::Abort, d)) => return Ok(Err(d)),
            Some((kind, d)) if kind == wanted => return Ok(Ok(d)),
            Some(_) | None => {}
        }
    }
}

/// The `approve`/`retry`/`abort` signal of any operation workflow, for senders (API, CLI)
/// that know the workflow id but not its type.
pub struct DecisionSignal(pub DecisionKind);

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Approve => "approve",
            DecisionKind::Retry => "retry",
            DecisionKind::Abort => "abort",
        }
    }
}

impl temporalio_common::SignalDefinition for DecisionSignal {
    type Workflow = temporalio_common::UntypedWorkflow;
    type Input = Decision;
    fn name(&self) -> &str {
        self.0.as_str()
    }
}

/// Quick DB steps: a killed worker's attempt is retried after this long.
pub(crate) fn quick() -> ActivityOptions {
    step_options(Duration::from_secs(20), 5)
}

/// Long steps heartbeat, so a killed worker's attempt is retried within seconds.
pub(crate) fn watched(start_to_close: Duration) -> ActivityOptions {
    let mut options = step_options(start_to_close, 3);
    options.heartbeat_timeout = Some(Duration::from_secs(5));
    options
}

/// Runs one step of `$op` and yields its output, or ends the flow with its failure: in a
/// function returning `Result<Result<T, E>, WorkflowTermination>` where `E: From<StepFailure>`.
macro_rules! step {
    ($op:expr, $ctx:expr, $activity:expr, $input:expr, $options:expr) => {
        match $op.step($ctx, || $activity, $input, $options).await? {
            Ok(out) => out,
            Err(f) => return Ok(Err(f.into())),
        }
    };
}
pub(crate) use step;
