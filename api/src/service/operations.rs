//! Operations: reads scoped by the caller's grants, and `decideOperation`, which sends an
//! approve, retry or abort update to the operation's workflow (or, for a retry of a running
//! operation, restarts the steps Temporal is retrying). The API never writes a
//! stage of a workflow-run operation; the workflow records what the decision changed.
//! [`follow_stages`] streams an operation's stage records by polling the control DB.
//! A decision for an operation stored as `<workflow id>/<run id>` (a Wake run) goes to that
//! run.

use std::{collections::VecDeque, time::Duration};

use futures::{Stream, stream};
use rhone_core::{OperationKind, OperationStatus, Role};
use rhone_schema::{
    entity::{audit_log, deployment, environment, operation, operation_stage},
    ops::{self, OperationFilter, Page},
};
use rhone_workflows::{Decision, DecisionKind, DecisionUpdate, stages::MAX_REASON_CHARS};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};
use serde_json::json;
use temporalio_client::{
    NamespacedClient, WorkflowExecutionInfo, WorkflowHandle, errors::WorkflowUpdateError,
};
use temporalio_common::UntypedWorkflow;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    rbac::{self, Target},
    record::{self, Mutation},
    service::validate::PageArgs,
};

/// The operation `id` if the actor holds at least `needed` in its workspace. An operation
/// without a workspace (a token creation) is visible to the actor that ran it only.
pub(crate) async fn operation_for<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
    needed: Role,
) -> Result<operation::Model, ApiError> {
    let op = operation::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("operation", id))?;
    match op.workspace_id {
        Some(workspace_id) => {
            let target = Target {
                what: "operation",
                id,
            };
            rbac::require(db, actor, workspace_id, needed, target).await?;
        }
        None if op.actor == actor.subject() => {}
        None => return Err(ApiError::not_found("operation", id)),
    }
    Ok(op)
}

pub(crate) async fn operation(
    db: &DatabaseConnection,
    actor: &Actor,
    id: Uuid,
) -> Result<operation::Model, ApiError> {
    operation_for(db, actor, id, Role::Viewer).await
}

/// The audit rows naming an operation the caller has already been allowed to read, oldest
/// first.
pub(crate) async fn audit_entries(
    db: &DatabaseConnection,
    id: Uuid,
) -> Result<Vec<audit_log::Model>, ApiError> {
    Ok(audit_log::Entity::find()
        .filter(audit_log::Column::OperationId.eq(id))
        .order_by_asc(audit_log::Column::CreatedAt)
        .order_by_asc(audit_log::Column::Id)
        .all(db)
        .await?)
}

/// The stage records of an operation the caller has already been allowed to read.
pub(crate) async fn stages(
    db: &DatabaseConnection,
    operation_id: Uuid,
) -> Result<Vec<operation_stage::Model>, ApiError> {
    Ok(ops::stages(db, operation_id).await?)
}

/// How often [`follow_stages`] looks for new stage records.
pub(crate) const STAGE_POLL: Duration = Duration::from_millis(200);
/// The longest [`follow_stages`] streams, whatever the operation does.
pub(crate) const STAGE_FOLLOW_LIMIT: Duration = Duration::from_secs(60 * 60);

/// Where a [`follow_stages`] stream is.
struct Follow {
    db: DatabaseConnection,
    operation_id: Uuid,
    /// The subscriber's token: revoked or expired, the stream ends.
    token_id: Uuid,
    /// The `seq` of the last record yielded (0 before the first).
    after: i32,
    /// Read and not yet yielded, in `seq` order.
    pending: VecDeque<operation_stage::Model>,
    /// The operation was final when `pending` was read: nothing follows it.
    finished: bool,
    polled: bool,
    deadline: Instant,
}

impl Follow {
    /// Reads the status, then the records after `after`. In that order: a record and the
    /// status it sets are written in one transaction, so a final status read first means
    /// the read that follows has every record.
    async fn poll(&mut self) -> Result<(), ApiError> {
        crate::auth::still_usable(&self.db, self.token_id).await?;
        let op = operation::Entity::find_by_id(self.operation_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| ApiError::not_found("operation", self.operation_id))?;
        let status: OperationStatus = op
            .status
            .parse()
            .map_err(|e| ApiError::internal("reading an operation's status", e))?;
        let rows = operation_stage::Entity::find()
            .filter(operation_stage::Column::OperationId.eq(self.operation_id))
            .filter(operation_stage::Column::Seq.gt(self.after))
            .order_by_asc(operation_stage::Column::Seq)
            .all(&self.db)
            .await?;
        self.pending.extend(rows);
        self.finished = status.is_final();
        Ok(())
    }
}

/// The stage records of an operation the caller has already been allowed to read, in `seq`
/// order, each once: those recorded so far, then new ones as they are written (polled every
/// [`STAGE_POLL`]). Ends after the last record of a final operation, after
/// [`STAGE_FOLLOW_LIMIT`], or after the first error, which it yields: a revoked or expired
/// `token_id` (the subscriber's) is one, checked at every poll.
pub(crate) fn follow_stages(
    db: DatabaseConnection,
    operation_id: Uuid,
    token_id: Uuid,
) -> impl Stream<Item = Result<operation_stage::Model, ApiError>> + Send + 'static {
    let follow = Follow {
        db,
        operation_id,
        token_id,
        after: 0,
        pending: VecDeque::new(),
        finished: false,
        polled: false,
        deadline: Instant::now() + STAGE_FOLLOW_LIMIT,
    };
    stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(record) = f.pending.pop_front() {
                f.after = record.seq;
                return Some((Ok(record), f));
            }
            if f.finished || Instant::now() >= f.deadline {
                return None;
            }
            if f.polled {
                tokio::time::sleep_until((Instant::now() + STAGE_POLL).min(f.deadline)).await;
            }
            f.polled = true;
            if let Err(err) = f.poll().await {
                f.finished = true;
                return Some((Err(err), f));
            }
        }
    })
}

/// One page of a workspace's operations, newest first, and whether more follow.
pub(crate) async fn list(
    db: &DatabaseConnection,
    actor: &Actor,
    workspace_id: Uuid,
    kind: Option<OperationKind>,
    status: Option<OperationStatus>,
    page: PageArgs,
) -> Result<(Vec<operation::Model>, bool), ApiError> {
    let target = Target {
        what: "workspace",
        id: workspace_id,
    };
    rbac::require(db, actor, workspace_id, Role::Viewer, target).await?;
    let filter = OperationFilter {
        workspace_ids: Some(vec![workspace_id]),
        kind: kind.map(|k| k.as_str().to_owned()),
        status: status.map(|s| s.as_str().to_owned()),
        target_id: None,
    };
    // One more than asked tells whether there is a next page.
    let mut rows = ops::list_operations(
        db,
        &filter,
        Page {
            after: page.after,
            first: page.first + 1,
        },
    )
    .await?;
    let has_next = rows.len() as u64 > page.first;
    rows.truncate(page.first as usize);
    Ok((rows, has_next))
}

/// How long a decision waits for the workflow's worker to accept or refuse it.
const DECISION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Records `decision` in the audit log and sends it to the operation's workflow, naming
/// that audit row (so the workflow records it under the caller). A refused or undeliverable
/// decision leaves nothing written.
pub(crate) async fn decide(
    state: &ApiState,
    actor: &Actor,
    id: Uuid,
    kind: DecisionKind,
    reason: Option<String>,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let op = operation_for(db, actor, id, Role::Developer).await?;
    let status: OperationStatus = op
        .status
        .parse()
        .map_err(|e| ApiError::internal("reading an operation's status", e))?;
    if status.is_final() {
        return Err(ApiError::Conflict(format!(
            "operation {id} is {status}; there is nothing left to {}",
            kind.as_str()
        )));
    }
    // A decision is taken only when the operation waits for one: an approve sent while it
    // runs would approve a gate nobody has seen yet; an abort during a step is not heard.
    let (accepted, when) = match kind {
        DecisionKind::Approve => (
            status == OperationStatus::Waiting,
            "while it waits for approval",
        ),
        DecisionKind::Retry | DecisionKind::Abort => (
            matches!(
                status,
                OperationStatus::Waiting | OperationStatus::NeedsAttention
            ),
            "while it waits for a decision or needs attention",
        ),
    };
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::invalid(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    if kind == DecisionKind::Retry && status == OperationStatus::Running {
        return retry_steps(state, actor, op, reason).await;
    }
    if !accepted {
        return Err(ApiError::Conflict(format!(
            "operation {id} is {status} (stage {}): {} is accepted only {when}",
            op.current_stage,
            kind.as_str()
        )));
    }
    if kind == DecisionKind::Approve && op.actor == actor.subject() {
        refuse_self_approval(db, &op).await?;
    }
    let span =
        tracing::info_span!("decide_operation", operation_id = %id, decision = kind.as_str());
    async {
        // The audit row goes first, under a random id the decision carries: the workflow
        // records the decision under this actor only if it finds this row (anyone can send a
        // decision to Temporal, naming any actor; only the API writes this table). A decision
        // refused or not answered takes its row back.
        let decision_id = Uuid::new_v4();
        let m = Mutation {
            operation_id: id,
            kind: op
                .kind
                .parse()
                .map_err(|e| ApiError::internal("reading an operation's kind", e))?,
            action: match kind {
                DecisionKind::Approve => "operation.approve",
                DecisionKind::Retry => "operation.retry",
                DecisionKind::Abort => "operation.abort",
            },
            actor: actor.subject(),
            workspace_id: op.workspace_id,
            target_type: "operation",
            target_id: id.to_string(),
            detail: json!({ "decision": kind.as_str(), "reason": reason }),
        };
        record::audit_as(db, decision_id, &m).await?;
        let decision = Decision {
            actor: actor.subject(),
            reason: reason.clone(),
            decision_id: Some(decision_id),
            ..Decision::default()
        };
        // An update, not a signal: the workflow's validator accepts it only while the
        // operation waits for this kind of decision, and the answer says so or why not.
        let handle = workflow_handle(&state.temporal, &op.workflow_id);
        let sent = handle.execute_update(
            DecisionUpdate(kind),
            decision,
            Default::default(),
        );
        let answered = match tokio::time::timeout(DECISION_TIMEOUT, sent).await {
            Err(_) => Err(ApiError::Unavailable {
                service: "the Rhone worker (`rhone serve worker`)",
                source: format!(
                    "operation {id}'s workflow did not answer the {} within {} s; is a worker running (`rhone serve worker`)?",
                    kind.as_str(),
                    DECISION_TIMEOUT.as_secs()
                )
                .into(),
            }),
            Ok(answer) => answer.map_err(|err| update_error(id, kind, err)),
        };
        if let Err(err) = answered {
            // Taken back: should the update still arrive, the workflow finds no row and
            // records it as sent from Temporal.
            if let Err(e) = record::unaudit(db, decision_id).await {
                tracing::error!(error = %e, %decision_id, "could not remove the audit row of a decision not taken");
            }
            return Err(err);
        }
        tracing::info!("decision sent");
        Ok(op)
    }
    .instrument(span)
    .await
}

/// A retry of a running operation: restarts at once each step Temporal is retrying (an
/// attempt failed, or its worker was lost and missed its heartbeats), its attempts counted
/// from one again (Temporal's ResetActivity), audited like any decision. CONFLICT naming
/// the steps when none is being retried.
async fn retry_steps(
    state: &ApiState,
    actor: &Actor,
    op: operation::Model,
    reason: Option<String>,
) -> Result<operation::Model, ApiError> {
    use temporalio_client::grpc::WorkflowService;
    use temporalio_common::protos::temporal::api::{
        common::v1::WorkflowExecution, workflowservice::v1::ResetActivityRequest,
    };
    let unavailable = |e: Box<dyn std::error::Error + Send + Sync>| ApiError::Unavailable {
        service: "Temporal",
        source: e,
    };
    let handle = workflow_handle(&state.temporal, &op.workflow_id);
    let described = handle
        .describe(Default::default())
        .await
        .map_err(|e| unavailable(e.into()))?;
    let pending = &described.raw().pending_activities;
    let retried: Vec<_> = pending.iter().filter(|a| a.attempt > 1).collect();
    if retried.is_empty() {
        let steps: Vec<String> = pending
            .iter()
            .map(|a| {
                let name = a.activity_type.as_ref().map(|t| t.name.as_str());
                format!("{} (attempt {})", name.unwrap_or("?"), a.attempt)
            })
            .collect();
        return Err(ApiError::Conflict(format!(
            "operation {} is running (stage {}) and no step of it is being retried{}; a retry is taken when a step has failed or lost its worker, or the operation waits or needs attention",
            op.id,
            op.current_stage,
            if steps.is_empty() {
                String::new()
            } else {
                format!(": {} running", steps.join(", "))
            }
        )));
    }
    let (workflow_id, run_id) = rhone_core::workflow_run_of(&op.workflow_id);
    let mut restarted = Vec::new();
    for activity in retried {
        let request = ResetActivityRequest {
            namespace: state.temporal.namespace(),
            execution: Some(WorkflowExecution {
                workflow_id: workflow_id.to_owned(),
                run_id: run_id.unwrap_or_default().to_owned(),
            }),
            identity: actor.subject(),
            activity: Some(
                temporalio_common::protos::temporal::api::workflowservice::v1::reset_activity_request::Activity::Id(
                    activity.activity_id.clone(),
                ),
            ),
            reset_heartbeat: true,
            ..Default::default()
        };
        WorkflowService::reset_activity(
            &mut state.temporal.clone(),
            temporalio_client::tonic::Request::new(request),
        )
        .await
        .map_err(|e| unavailable(e.into()))?;
        restarted.push(json!({
            "step": activity.activity_type.as_ref().map(|t| t.name.clone()),
            "attempt": activity.attempt,
            "last_failure": activity.last_failure.as_ref().map(|f| f.message.clone()),
            "last_worker": activity.last_worker_identity,
        }));
    }
    let m = Mutation {
        operation_id: op.id,
        kind: op
            .kind
            .parse()
            .map_err(|e| ApiError::internal("reading an operation's kind", e))?,
        action: "operation.retry",
        actor: actor.subject(),
        workspace_id: op.workspace_id,
        target_type: "operation",
        target_id: op.id.to_string(),
        detail: json!({ "decision": "retry", "reason": reason, "restarted": restarted }),
    };
    record::audit(&state.db, &m).await?;
    tracing::info!(operation_id = %op.id, steps = restarted.len(), "restarted retried steps");
    Ok(op)
}

/// FORBIDDEN when `op` (which the caller requested) moves a deployment of an environment
/// whose requesters may not approve their own operations (production, by default).
async fn refuse_self_approval(
    db: &DatabaseConnection,
    op: &operation::Model,
) -> Result<(), ApiError> {
    if op.target_type != "deployment" {
        return Ok(());
    }
    let Ok(deployment_id) = op.target_id.parse::<Uuid>() else {
        return Ok(());
    };
    let Some(dep) = deployment::Entity::find_by_id(deployment_id)
        .one(db)
        .await?
    else {
        return Ok(());
    };
    let Some(env) = environment::Entity::find_by_id(dep.environment_id)
        .one(db)
        .await?
    else {
        return Ok(());
    };
    if env.self_approval {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "you requested operation {}; in environment {:?} another member (developer or above) approves it. An admin can allow self-approval there (selfApproval), for a local `rhone dev` environment: `rhone envs create … --self-approval true`",
        op.id, env.name
    )))
}

/// The handle of an operation's workflow. `operations.workflow_id` is a workflow id, or
/// `<workflow id>/<run id>` for an operation that is one run of a reused workflow id (a
/// Wake): the decision goes to that run, never to a later run of the same id.
fn workflow_handle(
    client: &temporalio_client::Client,
    stored: &str,
) -> WorkflowHandle<temporalio_client::Client, UntypedWorkflow> {
    let (workflow_id, run_id) = rhone_core::workflow_run_of(stored);
    WorkflowExecutionInfo::builder()
        .namespace(client.namespace())
        .workflow_id(workflow_id)
        .maybe_run_id(run_id)
        .build()
        .bind_untyped(client.clone())
}

fn update_error(id: Uuid, kind: DecisionKind, err: WorkflowUpdateError) -> ApiError {
    match err {
        // The validator's refusal: the operation does not wait for this decision now.
        WorkflowUpdateError::Failed(failure) => ApiError::Conflict(format!(
            "operation {id} refused {}: {}",
            kind.as_str(),
            failure.message
        )),
        WorkflowUpdateError::NotFound(_) => ApiError::Conflict(format!(
            "operation {id} has no running workflow to receive a decision"
        )),
        WorkflowUpdateError::Rpc(status) => ApiError::Unavailable {
            service: "Temporal",
            source: Box::new(status),
        },
        other => ApiError::internal("sending a decision to the workflow", other),
    }
}
