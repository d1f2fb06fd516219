//! `POST /internal/runner/reports`: runners report allocation stage changes here, fenced by
//! generation through [`rhone_schema::allocations::apply_report`].
//!
//! Runners authenticate with `Authorization: Bearer <runner secret>`, one secret shared by
//! the API and its runners ([`ApiState::runner_secret`]), compared in constant time. With
//! no secret configured the endpoint is disabled and answers 404. Answers are JSON:
//! `{"applied": bool, "stage", "generation"}` on success, `{"code", "error"}` otherwise —
//! 401 bad token, 400/415/422 bad body, 404 unknown allocation, 409 stale generation or
//! illegal transition.

use std::{fmt, sync::Arc};

use axum::{
    Json, Router,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::post,
};
use rand::{Rng, distr::Alphanumeric};
use rhone_schema::{
    SchemaError,
    allocations::{ReportOutcome, RunnerReport, apply_report},
    entity::api_token::hash_token,
};
use sea_orm::DatabaseConnection;
use serde_json::json;
use tracing::Instrument;

use crate::{ApiState, ErrorCode};

/// Where runners POST their reports.
pub const RUNNER_REPORTS_PATH: &str = "/internal/runner/reports";

/// The secret runners present to report. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RunnerSecret(String);

impl RunnerSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        RunnerSecret(secret.into())
    }

    /// A fresh random secret (43 alphanumeric characters), for `rhone dev`.
    pub fn generate() -> Self {
        RunnerSecret(
            rand::rng()
                .sample_iter(&Alphanumeric)
                .take(43)
                .map(char::from)
                .collect(),
        )
    }

    /// The clear value, to hand to the runners.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RunnerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for RunnerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

struct Reports {
    db: DatabaseConnection,
    /// SHA-256 hex of the secret: what a presented token's hash is compared with.
    secret_hash: Option<String>,
}

/// The report route for `state`, to merge into the API's router.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(state: &ApiState) -> Router<S> {
    routes(state.db.clone(), state.runner_secret.as_ref())
}

fn routes<S: Clone + Send + Sync + 'static>(
    db: DatabaseConnection,
    secret: Option<&RunnerSecret>,
) -> Router<S> {
    let reports = Reports {
        db,
        secret_hash: secret.map(|s| hash_token(s.expose())),
    };
    Router::new()
        .route(RUNNER_REPORTS_PATH, post(receive))
        .with_state(Arc::new(reports))
}

async fn receive(
    State(reports): State<Arc<Reports>>,
    headers: HeaderMap,
    body: Result<Json<RunnerReport>, JsonRejection>,
) -> Response {
    let Some(secret_hash) = &reports.secret_hash else {
        return refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "runner reports are disabled: this API has no runner secret configured",
        );
    };
    if !authorized(&headers, secret_hash) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "a runner report needs `Authorization: Bearer <runner secret>`",
        );
    }
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
    match apply_report(&reports.db, &report).instrument(span).await {
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

/// Whether the request carries the runner secret. Hashes of fixed length are compared
/// without an early exit, so the time taken says nothing about the secret.
fn authorized(headers: &HeaderMap, secret_hash: &str) -> bool {
    let Some(token) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let presented = hash_token(token.trim());
    let difference = presented
        .bytes()
        .zip(secret_hash.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0 && presented.len() == secret_hash.len()
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
