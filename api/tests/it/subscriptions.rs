//! Subscriptions over a real WebSocket at `/graphql/ws` (`graphql-transport-ws`): an
//! operation's stages streamed to completion, and the refusals (no token, a bad token,
//! another workspace's operation).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::harness::{Api, Caller, tenancy};

const CREATE_ENV: &str = "mutation($a: UUID!, $n: String!) {
    createEnvironment(appId: $a, name: $n, kind: PRODUCTION) { id status } }";
const STAGES: &str =
    "subscription($id: UUID!) { operationStages(id: $id) { stage seq attempt error } }";
const WAIT: Duration = Duration::from_secs(30);

/// What the server sent: a protocol message, or the close frame's code and reason.
#[derive(Debug)]
enum Received {
    Json(Value),
    Closed(u16, String),
}

/// A `graphql-transport-ws` client.
struct Ws(WebSocketStream<TcpStream>);

impl Ws {
    async fn connect(api: &Api) -> Result<Ws> {
        let addr = api.url.trim_start_matches("http://");
        let stream = TcpStream::connect(addr).await?;
        let mut request = format!("ws://{addr}/graphql/ws").into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
        ensure!(
            response.status().as_u16() == 101,
            "status {}",
            response.status()
        );
        Ok(Ws(ws))
    }

    async fn send(&mut self, message: Value) -> Result<()> {
        Ok(self.0.send(Message::text(message.to_string())).await?)
    }

    async fn recv(&mut self) -> Result<Received> {
        loop {
            let message = tokio::time::timeout(WAIT, self.0.next())
                .await
                .context("no message in time")?
                .context("the socket ended without a close frame")??;
            match message {
                Message::Text(text) => return Ok(Received::Json(serde_json::from_str(&text)?)),
                Message::Close(frame) => {
                    return Ok(frame.map_or(Received::Closed(1005, String::new()), |f| {
                        Received::Closed(f.code.into(), f.reason.to_string())
                    }));
                }
                _ => {}
            }
        }
    }

    async fn recv_json(&mut self) -> Result<Value> {
        match self.recv().await? {
            Received::Json(value) => Ok(value),
            closed => bail!("expected a message, got {closed:?}"),
        }
    }

    /// Connects and sends `connection_init` with `payload`.
    async fn init(api: &Api, payload: Value) -> Result<Ws> {
        let mut ws = Ws::connect(api).await?;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await?;
        Ok(ws)
    }

    /// Connects as `caller` and waits for `connection_ack`.
    async fn acked(api: &Api, caller: &Caller) -> Result<Ws> {
        let token = caller.token().context("a caller with a token")?;
        let mut ws = Ws::init(api, json!({ "Authorization": format!("Bearer {token}") })).await?;
        let ack = ws.recv_json().await?;
        ensure!(ack["type"] == "connection_ack", "expected an ack: {ack}");
        Ok(ws)
    }

    async fn subscribe(&mut self, id: &str, query: &str, variables: Value) -> Result<()> {
        self.send(json!({
            "id": id, "type": "subscribe",
            "payload": { "query": query, "variables": variables }
        }))
        .await
    }
}

#[tokio::test]
async fn operation_stages_streams_until_the_operation_is_final() -> Result<()> {
    let api = Api::start("operation_stages_streams_until_the_operation_is_final").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "subs").await?;
    let _worker = api.worker()?;

    let mut ws = Ws::acked(&api, &admin).await?;
    let op = admin
        .data(CREATE_ENV, json!({ "a": app, "n": "prod" }))
        .await?["createEnvironment"]
        .clone();
    let id = op["id"].as_str().context("operation id")?;
    ws.subscribe("1", STAGES, json!({ "id": id })).await?;

    let mut stages = Vec::new();
    loop {
        let message = ws.recv_json().await?;
        ensure!(message["id"] == "1", "{message}");
        match message["type"].as_str() {
            Some("next") => {
                ensure!(
                    message["payload"].get("errors").is_none(),
                    "unexpected errors: {message}"
                );
                let stage = &message["payload"]["data"]["operationStages"];
                stages.push((stage["stage"].clone(), stage["seq"].clone()));
            }
            Some("complete") => break,
            _ => bail!("unexpected message: {message}"),
        }
    }
    assert_eq!(
        stages,
        [(json!("requested"), json!(1)), (json!("applied"), json!(2))]
    );
    let done = admin
        .data(
            "query($id: UUID!) { operation(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await?;
    assert_eq!(done["operation"]["status"], "SUCCEEDED");
    Ok(())
}

#[tokio::test]
async fn subscriptions_refuse_strangers() -> Result<()> {
    let api = Api::start("subscriptions_refuse_strangers").await?;
    let alice = api.admin().await?;
    let bob = api.user("bob@example.com").await?;
    tenancy(&alice, "alpha").await?;
    let (b_ws, ..) = tenancy(&bob, "beta").await?;
    let b_op = bob
        .data(
            "query($w: UUID!) { operations(workspaceId: $w) { nodes { id } } }",
            json!({ "w": b_ws }),
        )
        .await?["operations"]["nodes"][0]["id"]
        .as_str()
        .context("an operation of beta")?
        .to_owned();

    // No token, or a token that is not one: the connection is closed with the reason.
    let well_formed_unknown = format!("Bearer rhone_{}", "x".repeat(43));
    for payload in [
        json!({}),
        json!({ "Authorization": "Bearer nope" }),
        json!({ "token": well_formed_unknown }),
    ] {
        let mut ws = Ws::init(&api, payload.clone()).await?;
        match ws.recv().await? {
            Received::Closed(code, reason) => {
                assert_eq!(code, 1002, "{payload}");
                assert!(reason.contains("Authorization"), "{payload}: {reason}");
            }
            other => bail!("{payload}: expected a close, got {other:?}"),
        }
    }

    // `token` holds the bare token as well.
    let token = alice.token().context("alice's token")?;
    let mut ws = Ws::init(&api, json!({ "token": token })).await?;
    let ack = ws.recv_json().await?;
    assert_eq!(ack["type"], "connection_ack", "{ack}");

    // Another workspace's operation does not exist for alice.
    ws.subscribe("x", STAGES, json!({ "id": b_op })).await?;
    let message = ws.recv_json().await?;
    assert_eq!(message["type"], "next", "{message}");
    let error = &message["payload"]["errors"][0];
    assert_eq!(error["extensions"]["code"], "NOT_FOUND", "{message}");
    assert_eq!(
        error["message"],
        format!("operation {b_op} not found"),
        "{message}"
    );
    let complete = ws.recv_json().await?;
    assert_eq!(complete["type"], "complete", "{complete}");
    Ok(())
}

/// A subscription lives no longer than its token: revoked, the stream ends at its next poll
/// with an error that says so.
#[tokio::test]
async fn a_revoked_tokens_subscription_ends() -> Result<()> {
    let api = Api::start("a_revoked_tokens_subscription_ends").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "revoke").await?;
    // No worker: the operation stays running, so the stream would wait for an hour.
    let op = admin
        .data(CREATE_ENV, json!({ "a": app, "n": "prod" }))
        .await?["createEnvironment"]
        .clone();
    let id = op["id"].as_str().context("operation id")?;
    let created = admin
        .data(
            "mutation { createToken(name: \"watcher\") { id token } }",
            json!({}),
        )
        .await?["createToken"]
        .clone();
    let watcher = api.caller(created["token"].as_str().context("token")?);
    let mut ws = Ws::acked(&api, &watcher).await?;
    ws.subscribe("1", STAGES, json!({ "id": id })).await?;
    let first = ws.recv_json().await?;
    assert_eq!(
        first["payload"]["data"]["operationStages"]["stage"], "requested",
        "{first}"
    );

    admin
        .data(
            "mutation($id: UUID!) { revokeToken(id: $id) { token { revokedAt } } }",
            json!({ "id": created["id"] }),
        )
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = ws.recv_json().await?;
            if message["type"] == "next"
                && let Some(error) = message["payload"]["errors"].get(0)
            {
                return anyhow::Ok(error.clone());
            }
        }
    })
    .await
    .context("the stream did not end within 10 s of the revocation")??;
    assert_eq!(ended["extensions"]["code"], "UNAUTHENTICATED", "{ended}");
    assert_eq!(ended["message"], "the token was revoked; use another one");
    let complete = ws.recv_json().await?;
    assert_eq!(complete["type"], "complete", "{complete}");
    Ok(())
}

/// A socket that never says who it is does not stay open: closed with 4408 after the init
/// timeout (5 s).
#[tokio::test]
async fn a_socket_without_connection_init_is_closed() -> Result<()> {
    let api = Api::start("a_socket_without_connection_init_is_closed").await?;
    let mut ws = Ws::connect(&api).await?;
    let started = std::time::Instant::now();
    match ws.recv().await? {
        Received::Closed(code, reason) => {
            assert_eq!(code, 4408, "{reason}");
            assert!(reason.contains("connection_init"), "{reason}");
        }
        other => bail!("expected a close, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= rhone_api::WS_INIT_TIMEOUT - Duration::from_millis(100)
            && waited < rhone_api::WS_INIT_TIMEOUT + Duration::from_secs(5),
        "closed after {waited:?}"
    );
    Ok(())
}

/// One socket runs at most 16 subscriptions (each polls the DB): the 17th is answered with
/// an error for its id and the others go on; completing one frees its place.
#[tokio::test]
async fn subscriptions_past_the_cap_are_refused() -> Result<()> {
    let api = Api::start("subscriptions_past_the_cap_are_refused").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "cap").await?;
    // No worker: the operation stays running, so every subscription stays open.
    let op = admin
        .data(CREATE_ENV, json!({ "a": app, "n": "prod" }))
        .await?["createEnvironment"]
        .clone();
    let id = op["id"].as_str().context("operation id")?;
    let mut ws = Ws::acked(&api, &admin).await?;
    let cap = rhone_api::MAX_SUBSCRIPTIONS_PER_SOCKET;
    for n in 1..=cap {
        ws.subscribe(&n.to_string(), STAGES, json!({ "id": id }))
            .await?;
        let first = ws.recv_json().await?;
        assert_eq!(first["type"], "next", "{first}");
    }
    let over = (cap + 1).to_string();
    ws.subscribe(&over, STAGES, json!({ "id": id })).await?;
    let refused = ws.recv_json().await?;
    assert_eq!(
        (refused["type"].as_str(), refused["id"].as_str()),
        (Some("error"), Some(over.as_str())),
        "{refused}"
    );
    let message = refused["payload"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains(&format!("at most {cap}")), "{refused}");

    ws.send(json!({ "id": "1", "type": "complete" })).await?;
    ws.subscribe(&over, STAGES, json!({ "id": id })).await?;
    let again = loop {
        // The server confirms `1` complete first.
        let message = ws.recv_json().await?;
        if message["id"] == over.as_str() {
            break message;
        }
    };
    assert_eq!(
        (again["type"].as_str(), again["id"].as_str()),
        (Some("next"), Some(over.as_str())),
        "{again}"
    );
    Ok(())
}
