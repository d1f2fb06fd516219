//! The runner's HTTP API. Every refusal is a 4xx whose JSON body `{"error": …}` names what
//! is wrong.
//!
//! Every call but `/healthz` needs `Authorization: Bearer <call token>`, the token the
//! control plane derives for this runner (`rhone_runner_protocol::credentials`); the runner
//! keeps only its SHA-256 and answers 401 to anything else.
//!
//! - `GET /healthz` → `ok`
//! - `GET /v1/allocations` → `{runner, subnet, allocations: [status…]}`
//! - `PUT /v1/allocations/{id}` with an [`AllocationSpec`] → 201 (new), 200 (same or newer
//!   generation), 409 (older generation, or a change the allocation cannot take)
//! - `GET /v1/allocations/{id}` → the [`AllocationStatus`]
//! - `DELETE /v1/allocations/{id}` → 202 and the status: the allocation drains

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Request, State, rejection::JsonRejection},
    http::{StatusCode, header::AUTHORIZATION},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use rhone_runner_protocol::credentials::{bearer, matches_hash};
use rhone_runner_protocol::{AllocationSpec, AllocationStatus};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::RunnerIdentity;
use crate::table::{PutError, PutOutcome, Table};

#[derive(Clone)]
pub(crate) struct Api {
    pub identity: RunnerIdentity,
    pub table: Arc<Table>,
    /// The subnet of this runner's allocations (`a.b.c.d/p`).
    pub subnet: String,
    /// SHA-256 (hex) of the control plane's call token (learnt when the runner registers);
    /// none refuses every call.
    pub call_token: crate::membership::CallToken,
}

pub(crate) fn router(api: Api) -> Router {
    let calls = Router::new()
        .route("/v1/allocations", get(list))
        .route("/v1/allocations/{id}", get(show).put(put).delete(delete))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(calls)
}

/// Every call but `/healthz` carries the control plane's call token for this runner.
async fn authenticate(State(api): State<Api>, request: Request, next: Next) -> Response {
    let Some(expected) = api.call_token.get() else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this runner takes no calls yet: it has not registered with a control plane (and has no RHONE_RUNNER_CALL_TOKEN_SHA256)",
        );
    };
    let presented = bearer(
        request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    match presented {
        Some(token) if matches_hash(token, &expected) => next.run(request).await,
        _ => {
            tracing::warn!(path = %request.uri().path(), "a call without this runner's call token was refused");
            refuse(
                StatusCode::UNAUTHORIZED,
                "a call needs `Authorization: Bearer <this runner's call token>`",
            )
        }
    }
}

#[derive(Serialize)]
struct Inventory {
    runner: RunnerIdentity,
    /// The subnet of the allocations' addresses, which the control plane records.
    subnet: String,
    allocations: Vec<AllocationStatus>,
}

async fn list(State(api): State<Api>) -> Json<Inventory> {
    Json(Inventory {
        runner: api.identity.clone(),
        subnet: api.subnet.clone(),
        allocations: api.table.list(),
    })
}

#[tracing::instrument(skip_all, fields(allocation_id = %id))]
async fn put(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Result<Json<AllocationSpec>, JsonRejection>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal,
    };
    let spec = match body {
        Ok(Json(spec)) => spec,
        Err(rejection) => {
            return refuse(
                rejection.status(),
                &format!("invalid allocation spec: {}", rejection.body_text()),
            );
        }
    };
    if let Err(e) = spec.validate(id) {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("invalid allocation spec: {e}"),
        );
    }
    tracing::info!(generation = spec.generation, desired = ?spec.desired, digest = %spec.artifact_digest, "allocation spec");
    match api.table.put(spec) {
        Ok(PutOutcome::Created(status)) => (StatusCode::CREATED, Json(status)).into_response(),
        Ok(PutOutcome::Unchanged(status) | PutOutcome::Updated(status)) => {
            Json(status).into_response()
        }
        Err(PutError::Update(e)) => {
            tracing::info!(error = %e, "allocation spec refused");
            refuse(StatusCode::CONFLICT, &e.to_string())
        }
        Err(e @ PutError::ShuttingDown) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn show(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal,
    };
    match api.table.get(id) {
        Some(status) => Json(status).into_response(),
        None => unknown(id),
    }
}

#[tracing::instrument(skip_all, fields(allocation_id = %id))]
async fn delete(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal,
    };
    match api.table.drain(id) {
        Some(status) => {
            tracing::info!("drain requested");
            (StatusCode::ACCEPTED, Json(status)).into_response()
        }
        None => unknown(id),
    }
}

// The refusal is built once and returned; boxing it would only hide the type.
#[allow(clippy::result_large_err)]
fn parse_id(id: &str) -> Result<Uuid, Response> {
    Uuid::parse_str(id).map_err(|_| {
        let shown: String = id.chars().take(64).collect();
        refuse(
            StatusCode::BAD_REQUEST,
            &format!("allocation id {shown:?} is not a UUID"),
        )
    })
}

fn unknown(id: Uuid) -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        &format!("allocation {id} is not known to this runner"),
    )
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
