//! Real backends the edge proxies to in tests: an axum app on 127.0.0.1:0 that echoes what it
//! received, streams bodies, and echoes WebSocket messages on `/_vango/live`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::Result;
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Request, State, ws::Message, ws::WebSocket, ws::WebSocketUpgrade},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::{any, get},
};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// Bytes `/big` streams back.
pub const BIG_BODY: usize = 4 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A running echo backend.
pub struct Backend {
    pub address: String,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    /// Requests this backend has handled.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Echo {
    name: String,
    hits: Arc<AtomicUsize>,
}

/// Starts an echo backend that signs its answers with `name`.
pub async fn echo(name: &str) -> Result<Backend> {
    let hits = Arc::new(AtomicUsize::new(0));
    let state = Echo {
        name: name.to_owned(),
        hits: hits.clone(),
    };
    let app = Router::new()
        .route("/upload", any(upload))
        .route("/big", get(big))
        .route("/_vango/live", get(live))
        .fallback(describe)
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Backend {
        address: format!("http://{addr}"),
        hits,
    })
}

/// An address where nothing listens: a port bound, read and released.
pub async fn closed_port() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        map.insert(name.as_str().to_owned(), json!(values.join(", ")));
    }
    Value::Object(map)
}

async fn describe(State(echo): State<Echo>, req: Request) -> Response {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "backend": echo.name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers_json(req.headers()),
    }))
    .into_response()
}

/// Streams the request body back as it arrives.
async fn upload(State(echo): State<Echo>, req: Request) -> Response {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    Body::from_stream(req.into_body().into_data_stream()).into_response()
}

/// Streams `BIG_BODY` bytes of a repeating pattern, chunk by chunk.
async fn big(State(echo): State<Echo>) -> Response {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    let chunks = (0..BIG_BODY / CHUNK).map(|i| {
        let byte = u8::try_from(i % 251).unwrap_or(0);
        Ok::<_, std::io::Error>(Bytes::from(vec![byte; CHUNK]))
    });
    Body::from_stream(futures::stream::iter(chunks)).into_response()
}

/// Says which backend it is, then echoes every message until the client closes.
/// Greets with `backend NAME resume=… from=…`: its name and how the edge said the session
/// reaches it (`x-rhone-session-resume`, `x-rhone-session-from`).
async fn live(State(echo): State<Echo>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let greeting = format!(
        "backend {} resume={} from={}",
        echo.name,
        header("x-rhone-session-resume"),
        header("x-rhone-session-from")
    );
    ws.on_upgrade(move |socket| live_loop(socket, greeting))
}

async fn live_loop(mut socket: WebSocket, greeting: String) {
    if socket.send(Message::Text(greeting.into())).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
