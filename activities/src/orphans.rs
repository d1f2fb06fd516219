//! Operations whose workflow ended without ending them: a workflow cancelled or terminated
//! from the Temporal UI or CLI runs no code of its own, so the fleet watch ends its
//! operation (`aborted` for a cancel, `failed` otherwise) with the close event as evidence:
//! who terminated or cancelled it (the cancel request's sender and reason) and why.

use std::{collections::HashMap, time::SystemTime};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rhone_core::{OperationKind, OperationStatus};
use rhone_schema::{
    entity::operation,
    ops::{self, StageAppend},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;
use temporalio_client::{
    Client, HistoryEventFilterType, NamespacedClient, WorkflowExecutionInfo,
    WorkflowExecutionStatus, WorkflowFetchHistoryOptions, WorkflowListOptions,
};
use temporalio_common::protos::temporal::api::history::v1::{
    WorkflowExecutionCancelRequestedEventAttributes, history_event::Attributes,
};
use temporalio_sdk::activities::ActivityError;

use crate::allocate::{db_err, transient};

/// The statuses of an operation still in progress.
const OPEN: [OperationStatus; 3] = [
    OperationStatus::Running,
    OperationStatus::Waiting,
    OperationStatus::NeedsAttention,
];
/// The most closed workflows one sweep reads.
const MAX_CLOSED: usize = 1000;

/// How a workflow ended, from its close event.
struct Ending {
    status: OperationStatus,
    error: String,
    evidence: serde_json::Value,
}

/// Ends the open operations of `task_queue` whose workflow is closed; their ids.
pub async fn end_orphaned(
    db: &DatabaseConnection,
    temporal: &Client,
    task_queue: &str,
) -> Result<Vec<uuid::Uuid>, ActivityError> {
    let open = OPEN.map(|s| s.as_str());
    let oldest: Option<operation::Model> = operation::Entity::find()
        .filter(operation::Column::Status.is_in(open))
        .order_by_asc(operation::Column::CreatedAt)
        .one(db)
        .await
        .map_err(db_err)?;
    let Some(oldest) = oldest else {
        return Ok(Vec::new());
    };
    // Only workflows closed since the oldest open operation began can have left one open.
    let since = (oldest.created_at - chrono::Duration::minutes(1)).to_rfc3339();
    let query = format!(
        "TaskQueue = '{task_queue}' AND CloseTime >= '{since}' AND (ExecutionStatus = 'Failed' OR ExecutionStatus = 'Canceled' OR ExecutionStatus = 'Terminated' OR ExecutionStatus = 'TimedOut')"
    );
    let mut closed = HashMap::new();
    let mut list = temporal.list_workflows(
        query,
        WorkflowListOptions::builder().limit(MAX_CLOSED).build(),
    );
    while let Some(execution) = list.next().await {
        let execution = execution.map_err(|e| transient(format!("asking Temporal: {e}")))?;
        let (id, run) = (execution.id().to_owned(), execution.run_id().to_owned());
        closed.insert(format!("{id}/{run}"), (id.clone(), run.clone()));
        closed.entry(id.clone()).or_insert((id, run));
    }
    if closed.is_empty() {
        return Ok(Vec::new());
    }
    let orphans = operation::Entity::find()
        .filter(operation::Column::Status.is_in(open))
        .filter(operation::Column::WorkflowId.is_in(closed.keys().cloned()))
        .all(db)
        .await
        .map_err(db_err)?;
    let mut ended = Vec::new();
    for op in orphans {
        let Some((workflow_id, run_id)) = closed.get(&op.workflow_id) else {
            continue;
        };
        // An operation stored without its run follows the id's latest run: a later run
        // that still runs is its workflow, alive.
        let handle = WorkflowExecutionInfo::builder()
            .namespace(temporal.namespace())
            .workflow_id(workflow_id.clone())
            .build()
            .bind_untyped(temporal.clone());
        if !op.workflow_id.contains('/') {
            let latest = handle
                .describe(Default::default())
                .await
                .map_err(|e| transient(format!("asking Temporal: {e}")))?;
            if latest.status() == WorkflowExecutionStatus::Running || latest.run_id() != run_id {
                continue;
            }
        }
        let ending = ending_of(temporal, workflow_id, run_id).await?;
        let kind: Result<OperationKind, _> = op.kind.parse();
        let stage_legal = kind
            .as_ref()
            .is_ok_and(|k| k.validate_transition(&op.current_stage, "failed").is_ok());
        if stage_legal {
            let append = StageAppend {
                operation_id: op.id,
                record_key: format!("workflow_closed#{run_id}"),
                stage: "failed".into(),
                attempt: 1,
                evidence: ending.evidence,
                error: Some(ending.error.clone()),
                status: ending.status.as_str().to_owned(),
            };
            ops::append_stage(db, append, |_, _| Ok(()))
                .await
                .map_err(db_err)?;
        } else {
            ops::set_status(db, op.id, ending.status.as_str(), Some(ending.error))
                .await
                .map_err(db_err)?;
        }
        tracing::warn!(operation_id = %op.id, %workflow_id, status = ending.status.as_str(), "ended an operation whose workflow had closed");
        ended.push(op.id);
    }
    Ok(ended)
}

/// The last cancel request in a cancelled run's history (who sent it, the reason given).
async fn cancel_request(
    handle: &temporalio_client::UntypedWorkflowHandle<Client>,
) -> Result<Option<WorkflowExecutionCancelRequestedEventAttributes>, ActivityError> {
    let events = handle
        .fetch_history(
            WorkflowFetchHistoryOptions::builder()
                .event_filter_type(HistoryEventFilterType::AllEvent)
                .build(),
        )
        .into_events()
        .await
        .map_err(|e| transient(format!("asking Temporal: {e}")))?;
    Ok(events.into_iter().rev().find_map(|e| match e.attributes {
        Some(Attributes::WorkflowExecutionCancelRequestedEventAttributes(a)) => Some(a),
        _ => None,
    }))
}

/// How run `run_id` of `workflow_id` closed, read from its close event (and, for a cancel,
/// the request before it).
async fn ending_of(
    temporal: &Client,
    workflow_id: &str,
    run_id: &str,
) -> Result<Ending, ActivityError> {
    let handle = WorkflowExecutionInfo::builder()
        .namespace(temporal.namespace())
        .workflow_id(workflow_id.to_owned())
        .run_id(run_id.to_owned())
        .build()
        .bind_untyped(temporal.clone());
    let events = handle
        .fetch_history(
            WorkflowFetchHistoryOptions::builder()
                .event_filter_type(HistoryEventFilterType::CloseEvent)
                .build(),
        )
        .into_events()
        .await
        .map_err(|e| transient(format!("asking Temporal: {e}")))?;
    let closed_at = events
        .last()
        .and_then(|e| e.event_time)
        .and_then(|t| SystemTime::try_from(t).ok())
        .map(DateTime::<Utc>::from);
    let base = json!({ "workflow_id": workflow_id, "run_id": run_id, "closed_at": closed_at });
    let with = |how: &str, extra: serde_json::Value| {
        let mut evidence = base.clone();
        evidence["workflow"] = json!(how);
        if let (Some(e), Some(x)) = (evidence.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        evidence
    };
    Ok(match events.last().and_then(|e| e.attributes.clone()) {
        Some(Attributes::WorkflowExecutionTerminatedEventAttributes(a)) => Ending {
            status: OperationStatus::Failed,
            error: format!(
                "its workflow was terminated in Temporal by {:?}: {}",
                a.identity,
                if a.reason.is_empty() {
                    "no reason given"
                } else {
                    &a.reason
                }
            ),
            evidence: with(
                "terminated",
                json!({ "identity": a.identity, "reason": a.reason }),
            ),
        },
        Some(Attributes::WorkflowExecutionCanceledEventAttributes(_)) => {
            // Who asked and why are on the request, not on the close event.
            let request = cancel_request(&handle).await?;
            let identity = request
                .as_ref()
                .map(|r| r.identity.clone())
                .filter(|i| !i.is_empty());
            let reason = request
                .as_ref()
                .map(|r| r.cause.clone())
                .unwrap_or_default();
            let by_workflow = request
                .as_ref()
                .and_then(|r| r.external_workflow_execution.as_ref())
                .map(|w| w.workflow_id.clone());
            Ending {
                status: OperationStatus::Aborted,
                error: format!(
                    "its workflow was cancelled in Temporal by {}: {}",
                    match (&by_workflow, &identity) {
                        (Some(w), _) => format!("workflow {w}"),
                        (None, Some(i)) => format!("{i:?}"),
                        (None, None) => "a sender that gave no identity".to_owned(),
                    },
                    if reason.is_empty() {
                        "no reason given"
                    } else {
                        &reason
                    }
                ),
                evidence: with(
                    "cancelled",
                    json!({ "identity": identity, "reason": reason, "by_workflow": by_workflow }),
                ),
            }
        }
        Some(Attributes::WorkflowExecutionTimedOutEventAttributes(_)) => Ending {
            status: OperationStatus::Failed,
            error: "its workflow timed out in Temporal".into(),
            evidence: with("timed_out", json!({})),
        },
        Some(Attributes::WorkflowExecutionFailedEventAttributes(a)) => {
            let message = a.failure.map(|f| f.message).unwrap_or_default();
            Ending {
                status: OperationStatus::Failed,
                error: format!("its workflow failed: {message}"),
                evidence: with("failed", json!({ "message": message })),
            }
        }
        _ => Ending {
            status: OperationStatus::Failed,
            error: "its workflow closed without ending it".into(),
            evidence: with("closed", json!({})),
        },
    })
}
