//! The HTTP surface: `POST /graphql` runs a GraphQL request, `GET /graphql` serves
//! GraphiQL, `GET /healthz` answers `ok`. Bodies are capped at [`MAX_BODY_BYTES`];
//! authentication happens here, before execution, so an unauthenticated request never
//! reaches a resolver.

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header::AUTHORIZATION},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tracing::Instrument;

use crate::{
    ApiState,
    auth::{self, Actor},
    error::{ApiError, classify_response},
    graphql::{self, ApiSchema, INTROSPECTION_MAX_DEPTH, MAX_COMPLEXITY, MAX_DEPTH},
    introspection::is_introspection_only,
};

/// The largest request body accepted: GraphQL documents are small; anything bigger is a
/// mistake or an attack.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

struct Shared {
    state: ApiState,
    schema: ApiSchema,
    /// The same schema with the depth allowed to introspection-only documents.
    introspection: ApiSchema,
}

/// The API's routes, ready to serve.
pub fn router(state: ApiState) -> Router {
    let shared = Arc::new(Shared {
        schema: graphql::build(Some(state.clone()), MAX_DEPTH),
        introspection: graphql::build(Some(state.clone()), INTROSPECTION_MAX_DEPTH),
        state,
    });
    Router::new()
        .route("/graphql", get(graphiql).post(graphql_post))
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::runner_reports::router(&shared.state))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .title("Rhone API")
            .finish(),
    )
}

async fn graphql_post(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let err = ApiError::invalid(
                "request",
                format!("the body is larger than the {MAX_BODY_BYTES}-byte limit"),
            );
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, &err);
        }
        Err(rejection) => {
            let err = ApiError::invalid("request", rejection.body_text());
            return refuse(rejection.status(), &err);
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            let err = ApiError::invalid(
                "request",
                format!(
                    "expected one JSON object with `query` and optional `variables`, `operationName`: {e}"
                ),
            );
            return refuse(StatusCode::BAD_REQUEST, &err);
        }
    };
    let header = match headers.get(AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => return refuse(StatusCode::UNAUTHORIZED, &ApiError::Unauthenticated),
    };
    let actor = match auth::authenticate(&shared.state.db, header).await {
        Ok(actor) => actor,
        Err(err @ ApiError::Unauthenticated) => return refuse(StatusCode::UNAUTHORIZED, &err),
        Err(err) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &err),
    };
    // Introspection-only documents never touch data, so they may run without a token and
    // with the deeper limit GraphiQL's introspection query needs.
    let introspection = is_introspection_only(&request.query);
    let (schema, max_depth) = if introspection {
        (&shared.introspection, INTROSPECTION_MAX_DEPTH)
    } else {
        (&shared.schema, MAX_DEPTH)
    };
    let span = tracing::info_span!(
        "graphql",
        actor = actor
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), Actor::subject)
    );
    let request = match actor {
        Some(actor) => request.data(actor),
        None if introspection => request,
        None => return refuse(StatusCode::UNAUTHORIZED, &ApiError::Unauthenticated),
    };
    let mut response = schema.execute(request).instrument(span).await;
    classify_response(&mut response, max_depth, MAX_COMPLEXITY);
    Json(response).into_response()
}

/// A refusal before execution, as a GraphQL response with the HTTP status to match.
fn refuse(status: StatusCode, err: &ApiError) -> Response {
    (status, Json(err.to_response())).into_response()
}
