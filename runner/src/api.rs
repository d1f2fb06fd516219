//! The runner's HTTP API. Every refusal is a 4xx whose JSON body `{"error": …}` names what
//! is wrong.
//!
//! - `GET /healthz` → `ok`
//! - `GET /v1/allocations` → `{runner, allocations: [status…]}`
//! - `PUT /v1/allocations/{id}` with an [`AllocationSpec`] → 201 (new), 200 (same or newer
//!   generation), 409 (older generation, or a change the allocation cannot take)
//! - `GET /v1/allocations/{id}` → the [`AllocationStatus`]
//! - `DELETE /v1/allocations/{id}` → 202 and the status: the allocation drains

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
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
}

pub(crate) fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/allocations", get(list))
        .route("/v1/allocations/{id}", get(show).put(put).delete(delete))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(api)
}

#[derive(Serialize)]
struct Inventory {
    runner: RunnerIdentity,
    allocations: Vec<AllocationStatus>,
}

async fn list(State(api): State<Api>) -> Json<Inventory> {
    Json(Inventory {
        runner: api.identity.clone(),
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
