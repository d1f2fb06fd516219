//! The one place that turns a schema error into a retryable or non-retryable activity
//! failure.

use rhone_schema::SchemaError;
use temporalio_common::error::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;

/// Refusals are final; anything else (a lost connection, a busy database) is retried.
pub fn activity_error(err: SchemaError) -> ActivityError {
    let final_ = matches!(
        err,
        SchemaError::NotFound { .. }
            | SchemaError::Conflict { .. }
            | SchemaError::MissingReference { .. }
            | SchemaError::IllegalTransition(_)
    );
    tracing::warn!(error = %err, retryable = !final_, "activity failed");
    if final_ {
        ActivityError::application(ApplicationFailure::non_retryable(err))
    } else {
        ActivityError::application(ApplicationFailure::new(err))
    }
}
