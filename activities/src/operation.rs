//! Stage recording: the only writer of an operation's stage records. Idempotent on the
//! record key the workflow derives from (stage, attempt).

use std::sync::Arc;

use chrono::Utc;
use rhone_schema::{
    SchemaError,
    entity::{audit_log, operation},
    ops::{self, AppendOutcome, StageAppend},
};
use rhone_workflows::{
    DecisionKind,
    activities::{
        AuditDecisionInput, DecisionAudited, RecordDecisionInput, RecordStageInput, SetStatusInput,
        StageRecorded, defs,
    },
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait};
use serde_json::json;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;

use crate::{allocate::db_err, error::activity_error, promotion::derived_id};

pub struct OperationActivities {
    pub db: DatabaseConnection,
}

#[activities]
impl OperationActivities {
    #[activity(definition = defs::RecordStage)]
    pub async fn record_stage(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordStageInput,
    ) -> Result<StageRecorded, ActivityError> {
        let span = tracing::info_span!(
            "record_stage",
            operation_id = %input.operation_id,
            stage = %input.stage,
            attempt = input.attempt
        );
        let _guard = span.enter();
        let kind = input.kind;
        let status = match input.status {
            Some(s) => s,
            None => kind
                .status_for_stage(&input.stage)
                .map_err(|e| activity_error(e.into()))?,
        };
        let append = StageAppend {
            operation_id: input.operation_id.0,
            record_key: input.record_key,
            stage: input.stage,
            attempt: input.attempt as i32,
            evidence: input.evidence,
            error: input.error,
            status: status.as_str().to_owned(),
        };
        let outcome = ops::append_stage(&self.db, append, |from, to| {
            kind.validate_transition(from, to)
        })
        .await
        .map_err(activity_error)?;
        Ok(match outcome {
            AppendOutcome::Appended(r) => StageRecorded {
                seq: r.seq,
                already_recorded: false,
            },
            AppendOutcome::AlreadyRecorded(r) => StageRecorded {
                seq: r.seq,
                already_recorded: true,
            },
        })
    }

    #[activity(definition = defs::SetStatus)]
    pub async fn set_status(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: SetStatusInput,
    ) -> Result<(), ActivityError> {
        ops::set_status(
            &self.db,
            input.operation_id.0,
            input.status.as_str(),
            input.error,
        )
        .await
        .map_err(activity_error)
    }

    /// The audit entry of a decision taken from outside the API (the Temporal UI or CLI),
    /// under its `temporal:` actor; its id is derived from the operation and the decision's
    /// key, so a retry finds the row its earlier attempt wrote. Called only by workflows
    /// replaying a history from before `audit_decision`, and by those that had scheduled it
    /// then.
    #[activity(definition = defs::RecordDecision)]
    pub async fn record_decision(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordDecisionInput,
    ) -> Result<(), ActivityError> {
        let detail = json!({
            "decision": input.decision.as_str(), "reason": input.reason,
            "stage": input.stage, "via": "temporal",
        });
        self.write_decision_row(
            input.operation_id.0,
            input.decision,
            input.actor,
            &input.key,
            detail,
        )
        .await
    }

    /// Audits a decision a workflow took and says which actor it is recorded under. A
    /// decision naming the API's audit row of it (`decision_id`: the API writes the row,
    /// under a random id, before it sends the decision) keeps its actor when that row is of
    /// this operation, kind and actor and no other decision has taken it: the row is its
    /// audit entry, and is marked taken (with the stage) so nobody who read the id in the
    /// Temporal history can use it again. Any other decision is audited here, under
    /// `temporal:<actor>`, with the id it named, if any.
    #[activity(definition = defs::AuditDecision)]
    pub async fn audit_decision(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: AuditDecisionInput,
    ) -> Result<DecisionAudited, ActivityError> {
        let op = input.operation_id.0;
        let span = tracing::info_span!(
            "audit_decision",
            operation_id = %op,
            decision = input.decision.as_str(),
        );
        let _guard = span.enter();
        if let Some(id) = input.decision_id
            && self.take_api_row(id, &input).await?
        {
            return Ok(DecisionAudited {
                actor: input.actor,
                through_api: true,
            });
        }
        if input.decision_id.is_some() {
            tracing::warn!(
                actor = %input.actor,
                "a decision named an API audit row that is not there (or not its own): recorded as sent from Temporal"
            );
        }
        let actor = format!("temporal:{}", input.actor);
        let detail = json!({
            "decision": input.decision.as_str(), "reason": input.reason,
            "stage": input.stage, "via": "temporal",
            "claimed_decision_id": input.decision_id,
        });
        self.write_decision_row(op, input.decision, actor.clone(), &input.key, detail)
            .await?;
        Ok(DecisionAudited {
            actor,
            through_api: false,
        })
    }
}

impl OperationActivities {
    /// Whether `id` is the API's audit row of this decision, not yet taken by another; marks
    /// it taken by `input.key`. Read, then written: a workflow audits one decision at a
    /// time, and a retry of this call carries the same key.
    async fn take_api_row(
        &self,
        id: Uuid,
        input: &AuditDecisionInput,
    ) -> Result<bool, ActivityError> {
        let Some(row) = audit_log::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(db_err)?
        else {
            return Ok(false);
        };
        let ours = row.operation_id == Some(input.operation_id.0)
            && row.target_type == "operation"
            && row.action == format!("operation.{}", input.decision.as_str())
            && row.actor == input.actor;
        if !ours {
            return Ok(false);
        }
        match row.detail.get(TAKEN_BY).and_then(|k| k.as_str()) {
            Some(key) => Ok(key == input.key),
            None => {
                let mut detail = row.detail.clone();
                if let Some(map) = detail.as_object_mut() {
                    map.insert(TAKEN_BY.into(), json!(input.key));
                    map.insert("stage".into(), json!(input.stage));
                }
                let mut taken: audit_log::ActiveModel = row.into();
                taken.detail = Set(detail);
                taken.update(&self.db).await.map_err(db_err)?;
                Ok(true)
            }
        }
    }

    /// Writes a decision's audit row under an id derived from the operation, the action
    /// and `key`; a row already there (an earlier attempt's) is kept.
    async fn write_decision_row(
        &self,
        op: Uuid,
        decision: DecisionKind,
        actor: String,
        key: &str,
        detail: serde_json::Value,
    ) -> Result<(), ActivityError> {
        let workspace_id = operation::Entity::find_by_id(op)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .and_then(|o| o.workspace_id);
        let action = format!("operation.{}", decision.as_str());
        let row = audit_log::ActiveModel {
            id: Set(derived_id(&["audit", &action, &op.to_string(), key])),
            workspace_id: Set(workspace_id),
            actor: Set(actor),
            action: Set(action),
            target_type: Set("operation".into()),
            target_id: Set(op.to_string()),
            operation_id: Set(Some(op)),
            detail: Set(detail),
            created_at: Set(Utc::now()),
        };
        match audit_log::Entity::insert(row)
            .exec(&self.db)
            .await
            .map_err(SchemaError::from)
        {
            Ok(_) | Err(SchemaError::Conflict { .. }) => Ok(()),
            Err(e) => Err(db_err(e)),
        }
    }
}

/// The key, in the detail of the API's audit row of a decision, of the workflow decision
/// that took it.
const TAKEN_BY: &str = "taken_by";
