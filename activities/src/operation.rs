//! Stage recording: the only writer of an operation's stage records. Idempotent on the
//! record key the workflow derives from (stage, attempt).

use std::sync::Arc;

use rhone_schema::ops::{self, AppendOutcome, StageAppend};
use rhone_workflows::activities::{RecordStageInput, SetStatusInput, StageRecorded, defs};
use sea_orm::DatabaseConnection;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::error::activity_error;

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
}
