//! The edge against a real control DB and real backends: routing inside the RouteOwner's
//! authority, forwarding headers, streaming, WebSocket upgrades, affinity and the error
//! pages (SQLite); the in-memory route table following the change log, its gaps, snapshot
//! verification and acknowledgements (`table`, SQLite and PostgreSQL).

mod assets;
mod backends;
mod fixtures;
mod harness;
mod sessions;
mod table;

use std::{collections::HashSet, net::SocketAddr};

use anyhow::{Context, Result, ensure};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use backends::{BIG_BODY, closed_port, echo};
use fixtures::Db;
use harness::{Edge, HOST, NOWHERE};

/// A control DB and an edge serving from it.
struct Harness {
    db: Db,
    edge: SocketAddr,
    http: reqwest::Client,
    running: Edge,
}

impl Harness {
    async fn start() -> Result<Self> {
        let db = Db::sqlite().await?;
        let running = Edge::start(&db, "edge-test", |_| {}).await?;
        Ok(Self {
            db,
            edge: running.addr,
            http: running.http.clone(),
            running,
        })
    }

    /// Waits until the edge serves what the DB holds now.
    async fn settle(&self) -> Result<()> {
        self.running.settle(&self.db).await.map(drop)
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.edge.port())
    }

    /// GETs `path` on `HOST` and returns the echo backend's description of the request.
    async fn describe(&self, path: &str, cookie: Option<&str>) -> Result<Value> {
        let mut req = self.http.get(self.url(HOST, path));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await?;
        ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
        Ok(resp.json().await?)
    }

    /// Opens `/_vango/live` through the edge and returns the socket and the name of the
    /// backend that greeted it.
    async fn live(
        &self,
        query: &str,
    ) -> Result<(tokio_tungstenite::WebSocketStream<TcpStream>, String)> {
        let (ws, greeting) = self.live_greeting(query).await?;
        let name = greeting.split(' ').nth(1).unwrap_or("").to_owned();
        Ok((ws, name))
    }

    /// A live socket on `HOST` and the backend's greeting: `backend NAME resume=… from=…`.
    async fn live_greeting(
        &self,
        query: &str,
    ) -> Result<(tokio_tungstenite::WebSocketStream<TcpStream>, String)> {
        let stream = TcpStream::connect(self.edge).await?;
        let url = format!("ws://{HOST}:{}/_vango/live?{query}", self.edge.port());
        let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await?;
        ensure!(resp.status().as_u16() == 101, "status {}", resp.status());
        let greeting = ws.next().await.context("no greeting")??;
        Ok((ws, greeting.into_text()?.as_str().to_owned()))
    }
}

fn header<'a>(described: &'a Value, name: &str) -> Option<&'a str> {
    described["headers"][name].as_str()
}

#[tokio::test]
async fn get_is_routed_to_the_owners_ready_allocation() -> Result<()> {
    let h = Harness::start().await?;
    let (good, other) = (echo("a").await?, echo("x").await?);
    let digest = h.db.artifact(1).await?;
    let dep = h.db.deployment(&digest).await?;
    h.db.owner(HOST, &dep).await?;
    h.db.ready(&dep, &good.address).await?;
    // Same deployment, but not eligible: still starting, desired stop, an older artifact.
    h.db.allocation(&dep, &digest, "starting", "run", Some(&other.address))
        .await?;
    h.db.allocation(&dep, &digest, "ready", "stop", Some(&other.address))
        .await?;
    let old = h.db.artifact(2).await?;
    h.db.allocation(&dep, &old, "ready", "run", Some(&other.address))
        .await?;
    h.settle().await?;

    for _ in 0..4 {
        let d = h.describe("/dashboard?tab=1", None).await?;
        assert_eq!(d["backend"], "a");
        assert_eq!(d["path"], "/dashboard");
        assert_eq!(d["query"], "tab=1");
        let host = format!("{HOST}:{}", h.edge.port());
        assert_eq!(header(&d, "host"), Some(host.as_str()));
        assert_eq!(header(&d, "x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(header(&d, "x-forwarded-proto"), Some("http"));
        assert_eq!(header(&d, "x-forwarded-host"), Some(host.as_str()));
        let forwarded = format!("for=127.0.0.1;host=\"{host}\";proto=http");
        assert_eq!(header(&d, "forwarded"), Some(forwarded.as_str()));
    }
    assert_eq!((good.hits(), other.hits()), (4, 0));
    Ok(())
}

/// Sends `request` as written and returns the status line and the whole answer.
async fn raw(edge: SocketAddr, request: &str) -> Result<String> {
    let mut stream = TcpStream::connect(edge).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8(answer)?)
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() -> Result<()> {
    let h = Harness::start().await?;
    let backend = echo("a").await?;
    let dep = h.db.deployment(&h.db.artifact(1).await?).await?;
    h.db.owner(HOST, &dep).await?;
    h.db.ready(&dep, &backend.address).await?;
    h.settle().await?;

    let answer = raw(
        h.edge,
        &format!(
            "GET /x HTTP/1.1\r\nHost: {HOST}\r\nConnection: close, X-Hop-Secret\r\n\
             X-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x-sum\r\n\
             Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\n\
             X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n"
        ),
    )
    .await?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no header end")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let d: Value = serde_json::from_str(body)?;
    for gone in [
        "connection",
        "x-hop-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(header(&d, gone), None, "{gone} was forwarded");
    }
    assert_eq!(header(&d, "accept"), Some("*/*"));
    assert_eq!(
        header(&d, "x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(&d, "x-forwarded-proto"), Some("http"));
    Ok(())
}

#[tokio::test]
async fn websocket_round_trips_through_the_edge() -> Result<()> {
    let h = Harness::start().await?;
    let backend = echo("a").await?;
    let dep = h.db.deployment(&h.db.artifact(1).await?).await?;
    h.db.owner(HOST, &dep).await?;
    h.db.ready(&dep, &backend.address).await?;
    h.settle().await?;

    let (mut ws, name) = h.live("path=/&session=s1").await?;
    assert_eq!(name, "a");
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await?;
        let echoed = ws.next().await.context("socket closed")??;
        assert_eq!(echoed.into_text()?.as_str(), format!("hello {i}"));
    }
    let blob: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(blob.clone())).await?;
    let echoed = ws.next().await.context("socket closed")??;
    assert_eq!(echoed.into_data().as_ref(), blob.as_slice());
    ws.close(None).await?;
    Ok(())
}

#[tokio::test]
async fn no_owner_is_a_404_page() -> Result<()> {
    let h = Harness::start().await?;
    h.settle().await?;
    let resp = h.http.get(h.url(NOWHERE, "/")).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let page = resp.text().await?;
    assert!(
        page.contains("No app is deployed at nowhere.localhost"),
        "{page}"
    );
    Ok(())
}

#[tokio::test]
async fn owner_without_a_ready_allocation_is_503_with_retry_after() -> Result<()> {
    let h = Harness::start().await?;
    let dep = h.db.deployment(&h.db.artifact(1).await?).await?;
    h.db.owner(HOST, &dep).await?;
    h.settle().await?;
    let resp = h.http.get(h.url(HOST, "/")).send().await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    let page = resp.text().await?;
    assert!(page.contains("has no ready instance yet"), "{page}");
    Ok(())
}

#[tokio::test]
async fn a_backend_that_is_down_is_502() -> Result<()> {
    let h = Harness::start().await?;
    let dep = h.db.deployment(&h.db.artifact(1).await?).await?;
    h.db.owner(HOST, &dep).await?;
    let address = closed_port().await?;
    h.db.ready(&dep, &address).await?;
    h.settle().await?;
    let resp = h.http.get(h.url(HOST, "/")).send().await?;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let page = resp.text().await?;
    assert!(
        !page.contains("127.0.0.1"),
        "the page leaks the address: {page}"
    );
    Ok(())
}

#[tokio::test]
async fn large_bodies_stream_both_ways() -> Result<()> {
    let h = Harness::start().await?;
    let backend = echo("a").await?;
    let dep = h.db.deployment(&h.db.artifact(1).await?).await?;
    h.db.owner(HOST, &dep).await?;
    h.db.ready(&dep, &backend.address).await?;
    h.settle().await?;

    let sent: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 253) as u8).collect();
    let resp = h
        .http
        .post(h.url(HOST, "/upload"))
        .body(sent.clone())
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.bytes().await?;
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the 1 MiB body came back changed");

    let resp = h.http.get(h.url(HOST, "/big")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await?.len(), BIG_BODY);
    Ok(())
}

#[tokio::test]
async fn a_session_sticks_to_one_allocation() -> Result<()> {
    let h = Harness::start().await?;
    let dep = h.db.deployment(&h.db.artifact(1).await?).await?;
    h.db.owner(HOST, &dep).await?;
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        let b = echo(name).await?;
        h.db.ready(&dep, &b.address).await?;
        backends.push(b);
    }
    h.settle().await?;

    let mut used = HashSet::new();
    for s in 0..12 {
        let cookie = format!("theme=dark; vango_session=s{s}");
        let first = h.describe("/", Some(&cookie)).await?["backend"].clone();
        for _ in 0..3 {
            assert_eq!(h.describe("/", Some(&cookie)).await?["backend"], first);
        }
        // The live socket of the same session lands where its pages do.
        let (_ws, live) = h.live(&format!("path=/&session=s{s}")).await?;
        assert_eq!(Some(live.as_str()), first.as_str());
        used.insert(first.as_str().map(str::to_owned));
    }
    assert!(
        used.len() > 1,
        "12 sessions all landed on one of 3 allocations"
    );

    // Without a session, requests take turns.
    let mut turns = HashSet::new();
    for _ in 0..3 {
        turns.insert(
            h.describe("/", None).await?["backend"]
                .as_str()
                .map(str::to_owned),
        );
    }
    assert_eq!(turns.len(), 3);
    Ok(())
}

/// A backend that reads each request head and hangs up without answering, as an allocation
/// killed under a request does; its address and how many requests it took.
async fn hangs_up() -> Result<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                // Dropped: the connection closes with no answer.
            });
        }
    });
    Ok((address, taken))
}

/// An allocation that fails under a request before answering: a `GET` without a body goes
/// to the other allocation and is answered; a `POST` (which the app may have applied) is
/// not sent again and is answered 502.
#[tokio::test]
async fn a_safe_request_to_an_allocation_that_hangs_up_is_sent_to_the_next() -> Result<()> {
    use std::sync::atomic::Ordering;
    let h = Harness::start().await?;
    let dep = h.db.deployment(&h.db.artifact(1).await?).await?;
    h.db.owner(HOST, &dep).await?;
    let (dying, taken) = hangs_up().await?;
    let good = echo("a").await?;
    h.db.ready(&dep, &dying).await?;
    h.db.ready(&dep, &good.address).await?;
    h.settle().await?;

    for s in 0..16 {
        // A session each, so both allocations come first for some of them.
        let cookie = format!("vango_session=g{s}");
        let d = h.describe("/page", Some(&cookie)).await?;
        assert_eq!(d["backend"], "a");
    }
    let gets = taken.load(Ordering::SeqCst);
    assert!(gets > 0, "no GET met the allocation that hangs up");
    assert_eq!(good.hits(), 16);

    let mut refused = 0;
    for s in 0..16 {
        let resp = h
            .http
            .post(h.url(HOST, "/upload"))
            .header("cookie", format!("vango_session=p{s}"))
            .body("apply once")
            .send()
            .await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => refused += 1,
            other => anyhow::bail!("POST answered {other}"),
        }
    }
    assert!(refused > 0, "no POST met the allocation that hangs up");
    assert_eq!(
        taken.load(Ordering::SeqCst) - gets,
        refused,
        "each POST it took was answered 502, not sent again"
    );
    assert_eq!(good.hits(), 16 + 16 - refused);
    Ok(())
}
