//! The runners' endpoints: `POST /internal/runner/register` (a runner joins the fleet with
//! its address, subnet, capacity and version, and learns the SHA-256 of the call token the
//! control plane will present to it), `POST /internal/runner/heartbeat`, and `POST
//! /internal/runner/reports` (allocation stage changes, fenced by generation through
//! [`rhone_schema::allocations::apply_report`]).
//!
//! A runner names itself in `X-Rhone-Runner` and authenticates with `Authorization: Bearer
//! <the credential an operator issued for it>` (`rhone runners add`), checked against its
//! stored SHA-256 ([`rhone_schema::fleet::authenticate_runner`]); an unknown, wrong or
//! revoked credential is 401 with a `runner.refused` audit row. A report is taken only for
//! an allocation placed on the runner and only with an address inside its registered
//! subnet; a refusal writes an audit row (`allocation.report_refused`). A lost runner's
//! reports are refused until it registers again. With no runner key configured (the key the
//! call tokens derive from) these endpoints are disabled and answer 404. Answers are JSON;
//! errors are `{"code", "error"}` — 401 bad or missing credentials, 403 not the runner's
//! allocation, address, region or cell, 400/415/422 bad body, 404 unknown allocation, 409
//! stale generation, illegal transition or overlapping subnet.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{IntoResponse, Response},
    routing::post,
};
use rhone_core::{RunnerStatus, fleet::FleetTimings};
use rhone_runner_protocol::{
    RUNNER_HEADER, RunnerKey,
    credentials::{bearer, token_hash},
    fleet::{
        HEARTBEAT_PATH, HeartbeatAnswer, REGISTER_PATH, REPORTS_PATH, Registered, Registration,
    },
};
use rhone_schema::{
    SchemaError,
    allocations::{ReportOutcome, ReportSource, RunnerReport, apply_report},
    entity::runner,
    fleet,
};
use sea_orm::DatabaseConnection;
use serde_json::json;
use tracing::Instrument;

use crate::{ApiState, ErrorCode};

/// Where runners POST their reports.
pub const RUNNER_REPORTS_PATH: &str = REPORTS_PATH;

struct Runners {
    db: DatabaseConnection,
    key: Option<RunnerKey>,
    timings: FleetTimings,
}

/// The runners' routes for `state`, to merge into the API's router.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(state: &ApiState) -> Router<S> {
    routes(state.db.clone(), state.runner_key.clone(), state.fleet)
}

fn routes<S: Clone + Send + Sync + 'static>(
    db: DatabaseConnection,
    key: Option<RunnerKey>,
    timings: FleetTimings,
) -> Router<S> {
    Router::new()
        .route(REGISTER_PATH, post(register))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .route(REPORTS_PATH, post(receive))
        .with_state(Arc::new(Runners { db, key, timings }))
}

/// The runner a request comes from, or the answer refusing it.
async fn caller(runners: &Runners, headers: &HeaderMap) -> Result<runner::Model, Response> {
    if runners.key.is_none() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "the runner endpoints are disabled: this API has no runner key (RHONE_RUNNER_KEY)",
        ));
    }
    let unauthenticated = || {
        refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "a runner's call needs `X-Rhone-Runner: <name>` and `Authorization: Bearer <its credential>` (from `rhone runners add`)",
        )
    };
    let name = headers
        .get(RUNNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|n| !n.is_empty() && n.len() <= 253);
    let token = bearer(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()));
    let (Some(name), Some(token)) = (name, token) else {
        return Err(unauthenticated());
    };
    match fleet::authenticate_runner(&runners.db, name, token).await {
        Ok(Ok(runner)) => Ok(runner),
        Ok(Err(why)) => {
            tracing::warn!(runner = name, reason = why.as_str(), "a runner was refused");
            Err(unauthenticated())
        }
        Err(e) => Err(internal(&e)),
    }
}

fn internal(e: &SchemaError) -> Response {
    tracing::error!(error = %e, source = ?std::error::Error::source(e), "a runner endpoint failed");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "internal error; the server log has the details",
    )
}

async fn register(
    State(runners): State<Arc<Runners>>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> Response {
    let runner = match caller(&runners, &headers).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let registration = match body {
        Ok(Json(r)) => r,
        Err(rejection) => {
            let message = format!("invalid registration: {}", rejection.body_text());
            return refuse(rejection.status(), ErrorCode::InvalidArgument, &message);
        }
    };
    if let Err(problems) = registration.check() {
        let message = format!("invalid registration: {}", problems.join("; "));
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidArgument,
            &message,
        );
    }
    let Some(key) = &runners.key else {
        return refuse(StatusCode::NOT_FOUND, ErrorCode::NotFound, "disabled");
    };
    match fleet::register_runner(&runners.db, &runner, &registration).await {
        Ok(registered) => {
            let row = &registered.runner;
            tracing::info!(runner = %row.name, address = %row.address, subnet = ?row.subnet, fenced = ?registered.fenced, drain = ?registered.drain, "runner registered");
            Json(Registered {
                call_token_sha256: token_hash(key.call_token(&row.name).expose()),
                heartbeat_interval_ms: runners.timings.heartbeat_interval_ms,
                lost_after_ms: runners.timings.lost_after_ms,
                drain: registered.drain,
            })
            .into_response()
        }
        Err(SchemaError::Forbidden { what }) => {
            refuse(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &what)
        }
        Err(SchemaError::Conflict { what }) => {
            refuse(StatusCode::CONFLICT, ErrorCode::Conflict, &what)
        }
        Err(e) => internal(&e),
    }
}

async fn heartbeat(State(runners): State<Arc<Runners>>, headers: HeaderMap) -> Response {
    let runner = match caller(&runners, &headers).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    match fleet::heartbeat(&runners.db, runner.id).await {
        Ok(status) => Json(HeartbeatAnswer { status }).into_response(),
        Err(e) => internal(&e),
    }
}

async fn receive(
    State(runners): State<Arc<Runners>>,
    headers: HeaderMap,
    body: Result<Json<RunnerReport>, JsonRejection>,
) -> Response {
    let runner = match caller(&runners, &headers).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    if fleet::status_of(&runner).ok() != Some(RunnerStatus::Ready) {
        return refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            &format!(
                "runner {} is {}: it registers again before its reports are taken",
                runner.name, runner.status
            ),
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
    match apply_report(&runners.db, &ReportSource::of(&runner), &report)
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
        Err(e) => internal(&e),
    }
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
