//! `POST /internal/runner/reports`: runners report allocation stage changes here, fenced by
//! generation through [`rhone_schema::allocations::apply_report`].
//!
//! A runner names itself in `X-Rhone-Runner` and authenticates with `Authorization: Bearer
//! <its report token>`, derived from the operator's runner key and its name
//! ([`rhone_runner_protocol::credentials`]; [`ApiState::runner_key`]) and compared in
//! constant time. It must be registered, and a report is taken only for an allocation
//! placed on it and only with an address inside its recorded subnet; a refusal writes an
//! audit row (`allocation.report_refused`). With no key configured the endpoint is disabled
//! and answers 404. Answers are JSON: `{"applied": bool, "stage", "generation"}` on
//! success, `{"code", "error"}` otherwise — 401 bad or missing credentials, 403 not the
//! runner's allocation or address, 400/415/422 bad body, 404 unknown allocation, 409 stale
//! generation or illegal transition.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::post,
};
use rhone_runner_protocol::{
    RUNNER_HEADER, RunnerKey,
    credentials::{bearer, constant_time_eq},
};
use rhone_schema::{
    SchemaError,
    allocations::{ReportOutcome, ReportSource, RunnerReport, apply_report},
    entity::runner,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::json;
use tracing::Instrument;

use crate::{ApiState, ErrorCode};

/// Where runners POST their reports.
pub const RUNNER_REPORTS_PATH: &str = "/internal/runner/reports";

struct Reports {
    db: DatabaseConnection,
    key: Option<RunnerKey>,
}

/// The report route for `state`, to merge into the API's router.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(state: &ApiState) -> Router<S> {
    routes(state.db.clone(), state.runner_key.clone())
}

fn routes<S: Clone + Send + Sync + 'static>(
    db: DatabaseConnection,
    key: Option<RunnerKey>,
) -> Router<S> {
    Router::new()
        .route(RUNNER_REPORTS_PATH, post(receive))
        .with_state(Arc::new(Reports { db, key }))
}

async fn receive(
    State(reports): State<Arc<Reports>>,
    headers: HeaderMap,
    body: Result<Json<RunnerReport>, JsonRejection>,
) -> Response {
    let Some(key) = &reports.key else {
        return refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "runner reports are disabled: this API has no runner key (RHONE_RUNNER_KEY)",
        );
    };
    let Some(name) = authenticated(&headers, key) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "a runner report needs `X-Rhone-Runner: <name>` and `Authorization: Bearer <its report token>`",
        );
    };
    let runner = match runner::Entity::find()
        .filter(runner::Column::Name.eq(&name))
        .one(&reports.db)
        .await
    {
        Ok(Some(runner)) => runner,
        Ok(None) => {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                &format!("runner {name} is not registered"),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the reporting runner failed");
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error; the server log has the details",
            );
        }
    };
    let report = match body {
        Ok(Json(report)) => report,
        Err(rejection) => {
            let message = format!("invalid runner report: {}", rejection.body_text());
            return refuse(rejection.status(), ErrorCode::InvalidArgument, &message);
        }
    };
    let span = tracing::info_span!(
        "runner_report",
        allocation_id = %report.allocation_id,
        generation = report.generation,
        stage = %report.stage,
    );
    if let Some(message) = &report.message {
        // The runner scrubbed secret values from its messages and log lines.
        tracing::info!(parent: &span, %message, last_log_lines = ?report.last_log_lines, "runner report");
    }
    match apply_report(&reports.db, &ReportSource::of(&runner), &report)
        .instrument(span)
        .await
    {
        Ok(outcome) => {
            let applied = matches!(outcome, ReportOutcome::Applied(_));
            let row = outcome.allocation();
            Json(json!({ "applied": applied, "stage": row.stage, "generation": row.generation }))
                .into_response()
        }
        Err(SchemaError::NotFound { what, id }) => refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            &format!("{what} {id} not found"),
        ),
        Err(SchemaError::Forbidden { what }) => {
            refuse(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &what)
        }
        Err(SchemaError::Conflict { what }) => {
            refuse(StatusCode::CONFLICT, ErrorCode::Conflict, &what)
        }
        Err(SchemaError::IllegalTransition(e)) => {
            refuse(StatusCode::CONFLICT, ErrorCode::Conflict, &e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "applying a runner report failed");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error; the server log has the details",
            )
        }
    }
}

/// The runner a request comes from, if it names one (`X-Rhone-Runner`) and carries that
/// runner's report token. The token is derived again and compared in constant time.
fn authenticated(headers: &HeaderMap, key: &RunnerKey) -> Option<String> {
    let name = headers.get(RUNNER_HEADER)?.to_str().ok()?.trim();
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let token = bearer(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()))?;
    constant_time_eq(token, key.report_token(name).expose()).then(|| name.to_owned())
}

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "code": code.as_str(), "error": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
