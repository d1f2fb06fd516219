//! Edges under test: `rhone_edge::serve` on 127.0.0.1:0 over a test control DB, an HTTP
//! client that resolves the test hosts to it, and waits on the edge's own status (never a
//! sleep).

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use rhone_edge::{EdgeConfig, EdgeState, ServeError};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::fixtures::Db;

pub const HOST: &str = "shop-preview.localhost";
pub const OTHER: &str = "other-preview.localhost";
pub const NOWHERE: &str = "nowhere.localhost";

/// How long a condition may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// Poll interval of the edges under test.
const POLL: Duration = Duration::from_millis(10);

/// One running edge.
pub struct Edge {
    pub addr: SocketAddr,
    /// The admin listener: `/_rhone/status`.
    pub admin: SocketAddr,
    pub edge_id: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Edge {
    /// Starts an edge over `db`, named `edge_id`, with `tune` applied to its config.
    pub async fn start(db: &Db, edge_id: &str, tune: impl FnOnce(&mut EdgeConfig)) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let admin_listener = TcpListener::bind("127.0.0.1:0").await?;
        let admin = admin_listener.local_addr()?;
        let mut config = EdgeConfig {
            edge_id: edge_id.to_owned(),
            poll_interval: POLL,
            ..EdgeConfig::for_address(addr)
        };
        tune(&mut config);
        let state = EdgeState {
            db: db.conn.clone(),
            config,
            wake: None,
            assets: None,
            admin: Some(admin_listener),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(rhone_edge::serve(listener, state, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .resolve(HOST, addr)
            .resolve(OTHER, addr)
            .resolve(NOWHERE, addr)
            .build()?;
        Ok(Self {
            addr,
            admin,
            edge_id: edge_id.to_owned(),
            http,
            stop: Some(stop),
            task,
        })
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    /// GETs `/` on `host`: the status and the body.
    pub async fn get(&self, host: &str) -> Result<(StatusCode, String)> {
        let resp = self.http.get(self.url(host, "/")).send().await?;
        Ok((resp.status(), resp.text().await?))
    }

    /// The name of the echo backend that answered `GET /` on `host`, or `None` when the
    /// edge answered something else.
    pub async fn backend(&self, host: &str) -> Result<Option<String>> {
        let (status, body) = self.get(host).await?;
        if status != StatusCode::OK {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["backend"].as_str().map(str::to_owned))
    }

    /// `GET /_rhone/status` on the admin listener.
    pub async fn status(&self) -> Result<Value> {
        let resp = self
            .http
            .get(format!("http://{}/_rhone/status", self.admin))
            .send()
            .await?;
        ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
        Ok(resp.json().await?)
    }

    /// Waits until the edge has loaded and applied everything in `db` now: the change log's
    /// head and every routable allocation. Returns the status.
    pub async fn settle(&self, db: &Db) -> Result<Value> {
        let head = db.head().await?;
        let allocations = db.routable_allocations().await?;
        until("the edge to catch up with the DB", || async {
            let s = self.status().await?;
            let caught_up = s["loaded"] == true
                && s["applied_seq"].as_i64() >= Some(head)
                && s["allocations"].as_u64() == Some(allocations as u64);
            Ok(caught_up.then_some(s))
        })
        .await
    }

    /// Waits until `GET /` on `host` is answered by backend `name`.
    pub async fn until_served_by(&self, host: &str, name: &str) -> Result<()> {
        until(&format!("{host} to be served by {name}"), || async {
            Ok((self.backend(host).await?.as_deref() == Some(name)).then_some(()))
        })
        .await
    }

    /// Stops the edge as a shutdown signal would, and waits for it to finish.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .context("the edge did not stop")??
            .context("the edge failed")
    }

    /// Aborts the edge's task, as a crash would.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Polls `check` until it gives `Some`, for at most [`DEADLINE`].
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > DEADLINE {
            bail!("waited {DEADLINE:?} for {what}; last error: {last_error:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
