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
use uuid::Uuid;

use crate::activities::{
    AuditDecisionInput, OperationActivities, RecordDecisionInput, RecordStageInput, SetStatusInput,
    StageRecorded,
};

/// A decision sent to a waiting operation: the input of its `approve`, `retry` and `abort`
/// updates. Every field has a default, so a decision typed into the Temporal UI is parsed;
/// the updates' validators refuse one that names nobody.
///
/// Nothing a sender types makes a decision pass for one taken through the API: the workflow
/// audits every decision it takes with the `audit_decision` activity, which records the
/// actor as sent only when it finds the API's own audit row of the decision (`decision_id`,
/// written by the API before it sends the decision, for this operation, kind and actor, and
/// taken by no other decision); every other decision is recorded and audited as
/// `temporal:<actor>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decision {
    /// Who decided: `user:<uuid>` or `token:<uuid>` from the API. A decision sent from the
    /// Temporal UI or CLI names its sender (`{"actor": "alice"}`) and is recorded as
    /// `temporal:alice`, so it can never pass for a user of the API.
    pub actor: String,
    pub reason: Option<String>,
    /// The API's audit row of this decision (a random id the API chose and wrote before
    /// sending); `None` from anyone else.
    pub decision_id: Option<Uuid>,
    /// Read only when replaying a history recorded before decisions were checked (the
    /// `decisions-audited-by-the-workflow` patch): the API set it then, and the workflow
    /// skipped its audit. Ignored since: setting it changes nothing.
    pub audited: bool,
}

/// Marks the histories in which the workflow audits every decision itself (the
/// `audit_decision` activity); before it, a decision marked `audited` by its sender skipped
/// the audit and kept its actor.
const DECISIONS_AUDITED_PATCH: &str = "decisions-audited-by-the-workflow";

/// The longest reason a decision may carry.
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Approve,
    Retry,
    Abort,
}

/// The answer to an accepted decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionTaken {
    pub operation_id: OperationId,
    /// The stage that waited for it.
    pub stage: String,
    /// The actor it will be recorded under: `temporal:<actor>` for a decision that names no
    /// API audit row; for one that does, the actor as sent, which holds only once the
    /// workflow has found that row (otherwise it too is recorded as `temporal:<actor>`).
    pub actor: String,
}

/// What a waiting operation accepts; set where the workflow waits, cleared once a decision
/// is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Awaiting {
    operation_id: OperationId,
    stage: String,
    accepts: Vec<DecisionKind>,
}

/// Workflow state that receives decisions through its `approve`/`retry`/`abort` updates.
pub trait Decisions {
    fn decisions(&self) -> &DecisionSlot;
    fn decisions_mut(&mut self) -> &mut DecisionSlot;
}

/// Implements [`Decisions`] for a workflow whose `decisions` field is a [`DecisionSlot`].
/// (Its `approve`/`retry`/`abort` update methods and their validators must be written out
/// in the workflow's own `#[workflow_methods]` block, which sees them before any macro
/// would expand; each is one call of the slot's `check` or `put`.)
#[macro_export]
macro_rules! decisions_in_slot {
    ($workflow:ty) => {
        impl $crate::stages::Decisions for $workflow {
            fn decisions(&self) -> &$crate::stages::DecisionSlot {
                &self.decisions
            }
            fn decisions_mut(&mut self) -> &mut $crate::stages::DecisionSlot {
                &mut self.decisions
            }
        }
    };
}

/// The decision slot a workflow embeds. A decision is accepted only while the workflow
/// waits for that kind (the validators call [`DecisionSlot::check`]), and at most one per
/// wait.
#[derive(Debug, Default)]
pub struct DecisionSlot {
    awaiting: Option<Awaiting>,
    taken: Option<(DecisionKind, Decision)>,
    /// Decisions accepted so far in this run: keys their audit rows.
    count: u32,
}

/// Why a validator refused a decision; its text is what the sender reads.
pub type Refusal = Box<dyn std::error::Error + Send + Sync>;

impl DecisionSlot {
    /// Whether `decision` of `kind` is accepted now: it names an actor, its reason is short,
    /// and the operation waits for that kind of decision and has not taken one yet.
    pub fn check(&self, kind: DecisionKind, decision: &Decision) -> Result<(), Refusal> {
        if decision.actor.trim().is_empty() {
            return Err(
                r#"actor: name who decides, e.g. {"actor": "alice", "reason": "checked the logs"}"#
                    .into(),
            );
        }
        if decision
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Err(format!("reason: must be at most {MAX_REASON_CHARS} characters").into());
        }
        let Some(awaiting) = &self.awaiting else {
            return Err(format!(
                "the operation is not waiting for a decision (it is running or ending); {} is accepted only while it waits",
                kind.as_str()
            )
            .into());
        };
        if let Some((taken, _)) = &self.taken {
            return Err(format!(
                "operation {} has already taken a decision ({}) in stage {}",
                awaiting.operation_id,
                taken.as_str(),
                awaiting.stage
            )
            .into());
        }
        if !awaiting.accepts.contains(&kind) {
            let accepts: Vec<&str> = awaiting.accepts.iter().map(|k| k.as_str()).collect();
            return Err(format!(
                "operation {} waits in stage {} for {}; {} is not accepted there",
                awaiting.operation_id,
                awaiting.stage,
                accepts.join(" or "),
                kind.as_str()
            )
            .into());
        }
        Ok(())
    }

    /// Takes a decision its validator accepted, its actor as sent (trimmed): which actor it
    /// is recorded under is for [`await_decision`] to find out.
    pub fn put(&mut self, kind: DecisionKind, mut decision: Decision) -> DecisionTaken {
        decision.actor = decision.actor.trim().to_owned();
        decision.reason = decision
            .reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        self.count += 1;
        let (operation_id, stage) = self
            .awaiting
            .as_ref()
            .map(|a| (a.operation_id, a.stage.clone()))
            .unwrap_or((OperationId(Uuid::nil()), String::new()));
        let taken = DecisionTaken {
            operation_id,
            stage,
            actor: match decision.decision_id {
                Some(_) => decision.actor.clone(),
                None => outside_api(&decision.actor),
            },
        };
        self.taken = Some((kind, decision));
        taken
    }

    /// Whether a decision was taken and waits for the workflow to act on it.
    pub fn taken(&self) -> bool {
        self.taken.is_some()
    }

    fn open(&mut self, operation_id: OperationId, stage: &str, accepts: &[DecisionKind]) {
        self.taken = None;
        self.awaiting = Some(Awaiting {
            operation_id,
            stage: stage.to_owned(),
            accepts: accepts.to_vec(),
        });
    }

    /// Closes the wait and hands over the decision taken, if any, with its audit key.
    pub fn close(&mut self) -> Option<(DecisionKind, Decision, u32)> {
        self.awaiting = None;
        self.taken.take().map(|(k, d)| (k, d, self.count))
    }
}

/// The actor a decision that did not come through the API is recorded under.
fn outside_api(actor: &str) -> String {
    format!("temporal:{actor}")
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
    /// The stage last entered, which a decision is about.
    stage: String,
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
            stage: String::new(),
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
        self.stage = stage.as_str().to_owned();
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

    /// Audits a decision the workflow took, whoever sent it, and returns the actor it is
    /// recorded under: the actor as sent only when the API's audit row of it is found
    /// (`audit_decision`), `temporal:<actor>` otherwise. Keyed by the run and its decision
    /// count, so a retried write finds its row.
    pub async fn audit_decision<W>(
        &self,
        ctx: &WorkflowContext<W>,
        decision_kind: DecisionKind,
        decision: &Decision,
        n: u32,
    ) -> Result<String, WorkflowTermination> {
        let input = AuditDecisionInput {
            operation_id: self.id,
            kind: self.kind,
            decision: decision_kind,
            actor: decision.actor.clone(),
            reason: decision.reason.clone(),
            decision_id: decision.decision_id,
            stage: self.stage.clone(),
            key: format!("decision#{n}@{}", ctx.run_id()),
        };
        let audited = ctx
            .execute_activity(OperationActivities::audit_decision, input, record_options())
            .await?;
        Ok(audited.actor)
    }

    /// What a workflow did before [`DECISIONS_AUDITED_PATCH`], for replaying the histories
    /// recorded then: a decision its sender marked `audited` kept its actor unaudited; any
    /// other was recorded as `temporal:<actor>` (`record_decision`).
    async fn audit_decision_as_before<W>(
        &self,
        ctx: &WorkflowContext<W>,
        decision_kind: DecisionKind,
        decision: &Decision,
        n: u32,
    ) -> Result<String, WorkflowTermination> {
        if decision.audited {
            return Ok(decision.actor.clone());
        }
        let actor = outside_api(&decision.actor);
        let input = RecordDecisionInput {
            operation_id: self.id,
            kind: self.kind,
            decision: decision_kind,
            actor: actor.clone(),
            reason: decision.reason.clone(),
            stage: self.stage.clone(),
            key: format!("decision#{n}"),
        };
        ctx.execute_activity(
            OperationActivities::record_decision,
            input,
            record_options(),
        )
        .await?;
        Ok(actor)
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
    /// status is written (the validators refused it); the stage opens to `retry` and
    /// `abort` before `needs_attention` is written, so on-call is never refused.
    pub async fn needs_attention<W: Decisions>(
        &self,
        ctx: &WorkflowContext<W>,
        message: String,
    ) -> Result<Result<(), Decision>, WorkflowTermination> {
        expect_decision(
            ctx,
            self,
            &self.stage,
            &[DecisionKind::Retry, DecisionKind::Abort],
        );
        self.set_status(ctx, OperationStatus::NeedsAttention, Some(message))
            .await?;
        if let Err(aborted) = wait_for_decision(ctx, self).await? {
            return Ok(Err(aborted));
        }
        self.set_status(ctx, OperationStatus::Running, None).await?;
        Ok(Ok(()))
    }
}

/// Opens the operation's current stage to decisions of the `accepts` kinds: from here on
/// the updates' validators accept them (and only them). Opened before the status that
/// tells people to decide is written, so nobody who has read it is refused.
pub fn expect_decision<W: Decisions>(
    ctx: &WorkflowContext<W>,
    op: &Operation,
    stage: &str,
    accepts: &[DecisionKind],
) {
    ctx.state_mut(|w| w.decisions_mut().open(op.id, stage, accepts));
}

/// Waits for the decision [`expect_decision`] opened the stage to and returns it, audited
/// and with the actor it is recorded under (see [`Decision`]).
pub async fn await_decision<W: Decisions>(
    ctx: &WorkflowContext<W>,
    op: &Operation,
) -> Result<(DecisionKind, Decision), WorkflowTermination> {
    ctx.wait_condition(|w| w.decisions().taken()).await?;
    let Some((kind, mut decision, n)) = ctx.state_mut(|w| w.decisions_mut().close()) else {
        unreachable!("the wait ends only on a decision taken");
    };
    decision.actor = if ctx.patched(DECISIONS_AUDITED_PATCH) {
        op.audit_decision(ctx, kind, &decision, n).await?
    } else {
        op.audit_decision_as_before(ctx, kind, &decision, n).await?
    };
    Ok((kind, decision))
}

/// Waits for a decision of kind `wanted` (`Ok`) or an abort (`Err`); the stage must have
/// been opened to both with [`expect_decision`].
pub async fn wait_for_decision<W: Decisions>(
    ctx: &WorkflowContext<W>,
    op: &Operation,
) -> Result<Result<Decision, Decision>, WorkflowTermination> {
    Ok(match await_decision(ctx, op).await? {
        (DecisionKind::Abort, d) => Err(d),
        (_, d) => Ok(d),
    })
}

/// The `approve`/`retry`/`abort` update of any operation workflow, for senders (API, CLI)
/// that know the workflow id but not its type.
pub struct DecisionUpdate(pub DecisionKind);

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Approve => "approve",
            DecisionKind::Retry => "retry",
            DecisionKind::Abort => "abort",
        }
    }
}

impl temporalio_common::UpdateDefinition for DecisionUpdate {
    type Workflow = temporalio_common::UntypedWorkflow;
    type Input = Decision;
    type Output = DecisionTaken;
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
    watched_attempts(start_to_close, 3)
}

/// [`watched`] with `maximum_attempts` before the operation needs attention. Every step
/// that may run longer than 30 s is watched (`tests/tidy.rs`), and its activity heartbeats
/// (`Heartbeat::during` in `rhone-activities`).
pub(crate) fn watched_attempts(start_to_close: Duration, maximum_attempts: u32) -> ActivityOptions {
    let mut options = step_options(start_to_close, maximum_attempts);
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

#[cfg(test)]
mod decision_tests {
    use super::*;

    fn named(actor: &str) -> Decision {
        Decision {
            actor: actor.into(),
            reason: Some("  checked  ".into()),
            ..Decision::default()
        }
    }

    fn refusal(slot: &DecisionSlot, kind: DecisionKind, d: &Decision) -> String {
        slot.check(kind, d)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn a_slot_takes_one_decision_of_the_kinds_it_waits_for() {
        let op = OperationId(Uuid::from_u128(7));
        let mut slot = DecisionSlot::default();
        let alice = named("alice");
        assert!(
            refusal(&slot, DecisionKind::Approve, &alice)
                .starts_with("the operation is not waiting for a decision")
        );
        slot.open(
            op,
            "policy_check",
            &[DecisionKind::Approve, DecisionKind::Abort],
        );
        assert_eq!(
            refusal(&slot, DecisionKind::Retry, &alice),
            format!(
                "operation {op} waits in stage policy_check for approve or abort; retry is not accepted there"
            )
        );
        assert!(
            refusal(&slot, DecisionKind::Approve, &named(" "))
                .starts_with("actor: name who decides")
        );
        let long = Decision {
            reason: Some("x".repeat(MAX_REASON_CHARS + 1)),
            ..named("alice")
        };
        assert!(
            refusal(&slot, DecisionKind::Approve, &long).starts_with("reason: must be at most")
        );

        assert!(slot.check(DecisionKind::Approve, &alice).is_ok());
        let taken = slot.put(DecisionKind::Approve, alice.clone());
        assert_eq!(
            (taken.actor.as_str(), taken.stage.as_str()),
            ("temporal:alice", "policy_check")
        );
        assert_eq!(
            refusal(&slot, DecisionKind::Abort, &alice),
            format!("operation {op} has already taken a decision (approve) in stage policy_check")
        );
        let (kind, decision, n) = slot.close().unwrap_or((DecisionKind::Retry, named("?"), 0));
        assert_eq!(
            (kind, decision.reason.as_deref(), n),
            (DecisionKind::Approve, Some("checked"), 1)
        );
        assert!(
            refusal(&slot, DecisionKind::Approve, &alice)
                .starts_with("the operation is not waiting")
        );

        // Only a decision naming an API audit row is answered with its actor as sent (the
        // workflow honours it once it finds the row); `audited`, which senders could type,
        // changes nothing.
        slot.open(op, "blocked", &[DecisionKind::Retry, DecisionKind::Abort]);
        let claimed = Decision {
            actor: "user:1".into(),
            audited: true,
            ..Decision::default()
        };
        assert_eq!(
            slot.put(DecisionKind::Retry, claimed).actor,
            "temporal:user:1"
        );
        slot.open(op, "blocked", &[DecisionKind::Retry, DecisionKind::Abort]);
        let api = Decision {
            actor: "user:1".into(),
            decision_id: Some(Uuid::from_u128(9)),
            ..Decision::default()
        };
        assert_eq!(slot.put(DecisionKind::Retry, api).actor, "user:1");
    }
}
