//! Stage recording: the only writer of an operation's stage records. Idempotent on the
//! record key the workflow derives from (stage, attempt).

use std::sync::Arc;

use chrono::Utc;
use rhone_schema::{
    SchemaError,
    entity::{audit_log, operation},
    ops::{self, AppendOutcome, StageAppend},
};
use rhone_workflows::activities::{
    RecordDecisionInput, RecordStageInput, SetStatusInput, StageRecorded, defs,
};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use serde_json::json;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

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
    /// key, so a retry finds the row its earlier attempt wrote.
    #[activity(definition = defs::RecordDecision)]
    pub async fn record_decision(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordDecisionInput,
    ) -> Result<(), ActivityError> {
        let op = input.operation_id.0;
        let workspace_id = operation::Entity::find_by_id(op)
            .one(&self.db)
            .await
            .map_err(db_err)?
            .and_then(|o| o.workspace_id);
        let action = format!("operation.{}", input.decision.as_str());
        let row = audit_log::ActiveModel {
            id: Set(derived_id(&["audit", &action, &op.to_string(), &input.key])),
            workspace_id: Set(workspace_id),
            actor: Set(input.actor),
            action: Set(action),
            target_type: Set("operation".into()),
            target_id: Set(op.to_string()),
            operation_id: Set(Some(op)),
            detail: Set(json!({
                "decision": input.decision.as_str(), "reason": input.reason,
                "stage": input.stage, "via": "temporal",
            })),
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
