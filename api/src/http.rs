//! The HTTP surface: `POST /graphql` runs a GraphQL request, `GET /graphql` serves
//! GraphiQL, `GET /graphql/ws` serves subscriptions over WebSocket (`graphql-transport-ws`
//! and `graphql-ws`), `GET /healthz` answers `ok`. Bodies and WebSocket messages are capped
//! at [`MAX_BODY_BYTES`]; authentication happens here, before execution (from the
//! `connection_init` payload on a WebSocket), so an unauthenticated request never reaches a
//! resolver.

use std::sync::Arc;

use async_graphql::http::{
    ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource, WebSocket as GraphQLWebSocket, WebSocketProtocols,
    WsMessage,
};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        DefaultBodyLimit, State, WebSocketUpgrade,
        rejection::BytesRejection,
        ws::{CloseFrame, Message, WebSocket},
    },
    http::{
        HeaderMap, StatusCode,
        header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL},
    },
    response::{Html, IntoResponse, Response},
    routing::get,
};
use futures::{SinkExt, StreamExt, future};
use sea_orm::DatabaseConnection;
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
        .route("/graphql/ws", get(graphql_ws))
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
        Err(
            err @ (ApiError::Unauthenticated | ApiError::TokenExpired(_) | ApiError::TokenRevoked),
        ) => {
            return refuse(StatusCode::UNAUTHORIZED, &err);
        }
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

/// Upgrades to a GraphQL WebSocket. The client must offer `graphql-transport-ws` or
/// `graphql-ws`; the connection is authenticated by its `connection_init`.
async fn graphql_ws(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let protocol = headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|offered| {
            offered
                .split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        let err = ApiError::invalid(
            "Sec-WebSocket-Protocol",
            "offer `graphql-transport-ws` or `graphql-ws`",
        );
        return refuse(StatusCode::BAD_REQUEST, &err);
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(MAX_BODY_BYTES)
        .max_frame_size(MAX_BODY_BYTES)
        .on_upgrade(move |socket| serve_ws(shared, socket, protocol))
}

/// How long a WebSocket may stay open without a `connection_init`; then it is closed with
/// 4408, as the graphql-transport-ws protocol says.
pub const WS_INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The most subscriptions one WebSocket runs at once; another is answered with an error.
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 16;

/// What the client asked of the protocol driver, as far as the limits need to know.
enum ClientMessage {
    Subscribe(String),
    Complete(String),
    Other,
}

fn client_message(data: &[u8]) -> ClientMessage {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return ClientMessage::Other;
    };
    let id = v["id"].as_str().map(str::to_owned);
    match (v["type"].as_str(), id) {
        // graphql-transport-ws `subscribe`, graphql-ws `start`.
        (Some("subscribe" | "start"), Some(id)) => ClientMessage::Subscribe(id),
        (Some("complete" | "stop"), Some(id)) => ClientMessage::Complete(id),
        _ => ClientMessage::Other,
    }
}

/// Runs async-graphql's protocol driver over `socket` until either side closes. A socket
/// that sends no `connection_init` within [`WS_INIT_TIMEOUT`] is closed; a subscription past
/// [`MAX_SUBSCRIPTIONS_PER_SOCKET`] running ones is refused with an error for its id.
async fn serve_ws(shared: Arc<Shared>, socket: WebSocket, protocol: WebSocketProtocols) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let (mut sink, stream) = socket.split();
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (refusals, mut refused) = tokio::sync::mpsc::unbounded_channel::<String>();
    let counted = running.clone();
    let incoming = stream
        .take_while(|message| future::ready(message.is_ok()))
        .filter_map(move |message| {
            let data = match message {
                Ok(message @ (Message::Text(_) | Message::Binary(_))) => Some(message.into_data()),
                _ => None,
            };
            let data = data.and_then(|data| {
                let mut running = counted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match client_message(&data) {
                    ClientMessage::Subscribe(id) if !running.contains(&id) => {
                        if running.len() >= MAX_SUBSCRIPTIONS_PER_SOCKET {
                            let _ = refusals.send(id);
                            return None;
                        }
                        running.insert(id);
                    }
                    ClientMessage::Complete(id) => {
                        running.remove(&id);
                    }
                    _ => {}
                }
                Some(data)
            });
            future::ready(data)
        });
    let db = shared.state.db.clone();
    let (inited, mut init_seen) = tokio::sync::watch::channel(false);
    let mut outgoing = GraphQLWebSocket::new(shared.schema.clone(), incoming, protocol)
        .on_connection_init(move |payload| {
            let _ = inited.send(true);
            async move {
                let actor = ws_actor(&db, &payload).await.map_err(|err| {
                    let message = match err {
                        ApiError::Unauthenticated => WS_UNAUTHENTICATED.to_owned(),
                        other => other.to_graphql().message,
                    };
                    async_graphql::Error::new(message)
                })?;
                tracing::info!(actor = actor.subject(), "GraphQL WebSocket authenticated");
                let mut data = async_graphql::Data::default();
                data.insert(actor);
                Ok(data)
            }
        });
    let init_deadline = tokio::time::sleep(WS_INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    loop {
        let message = tokio::select! {
            message = outgoing.next() => match message {
                Some(WsMessage::Text(text)) => {
                    // The server completing a subscription frees its place (only a
                    // message that can be one is parsed).
                    if text.contains("\"complete\"")
                        && let ClientMessage::Complete(id) = client_message(text.as_bytes())
                    {
                        running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&id);
                    }
                    Message::Text(text.into())
                }
                Some(WsMessage::Close(code, reason)) => Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })),
                None => break,
            },
            Some(id) = refused.recv() => {
                let error = serde_json::json!([{
                    "message": format!("too many subscriptions on this connection (at most {MAX_SUBSCRIPTIONS_PER_SOCKET}); complete one first"),
                    "extensions": { "code": "INVALID_ARGUMENT" },
                }]);
                // `error` for that id, in both protocols.
                Message::Text(serde_json::json!({ "id": id, "type": "error", "payload": error }).to_string().into())
            }
            () = &mut init_deadline, if !*init_seen.borrow_and_update() => {
                let _ = sink.send(Message::Close(Some(CloseFrame {
                    code: 4408,
                    reason: "connection initialisation timeout: send connection_init with your token".into(),
                }))).await;
                break;
            }
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
}

/// Why a WebSocket was refused at `connection_init`. A close frame's reason holds at most 123
/// bytes, so this is short.
const WS_UNAUTHENTICATED: &str =
    r#"authentication required: send {"Authorization": "Bearer <token>"} in connection_init"#;

/// The actor of a `connection_init` payload: `Authorization` (or `authorization`) holds
/// `Bearer <token>`, or `token` holds the token, with or without `Bearer `. No token is
/// UNAUTHENTICATED: a WebSocket never runs anonymously.
async fn ws_actor(db: &DatabaseConnection, payload: &serde_json::Value) -> Result<Actor, ApiError> {
    let value = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|key| payload.get(key))
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .ok_or(ApiError::Unauthenticated)?;
    let header = if value.starts_with("Bearer ") {
        value.to_owned()
    } else {
        format!("Bearer {value}")
    };
    auth::authenticate(db, Some(&header))
        .await?
        .ok_or(ApiError::Unauthenticated)
}
