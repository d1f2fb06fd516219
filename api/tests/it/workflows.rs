//! Workflow-run mutations against the real Temporal dev server and a real worker:
//! `createEnvironment` to success, decisions sent to a running workflow, and Temporal out
//! of reach.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, RetryOptions, Url};
use tokio::{net::TcpListener, sync::Mutex, task::JoinHandle};

use crate::harness::{Api, Caller, OPERATION, temporal_client, tenancy};

const CREATE_ENV: &str = "mutation($a: UUID!, $n: String!) {
    createEnvironment(appId: $a, name: $n, kind: PRODUCTION, wakeBudgetMs: 2500) {
        id kind status currentStage workflowId stages { stage } } }";
const FINAL: Duration = Duration::from_secs(30);

fn stage_names(op: &Value) -> Vec<String> {
    op["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["stage"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn create_env(caller: &Caller, app: &str, name: &str) -> Result<Value> {
    Ok(caller
        .data(CREATE_ENV, json!({ "a": app, "n": name }))
        .await?["createEnvironment"]
        .clone())
}

#[tokio::test]
async fn create_environment_runs_its_workflow_to_success() -> Result<()> {
    let api = Api::start("create_environment_runs_its_workflow_to_success").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "acme").await?;
    let _worker = api.worker()?;

    let op = create_env(&admin, &app, "prod").await?;
    assert_eq!(op["kind"], "ENVIRONMENT_CREATE");
    assert_eq!(op["status"], "RUNNING");
    assert_eq!(op["currentStage"], "requested");
    let id = op["id"].as_str().context("operation id")?;
    assert_eq!(op["workflowId"], format!("environment_create-{id}"));

    let done = api.wait_final(&admin, id, FINAL).await?;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["currentStage"], "applied");
    assert_eq!(stage_names(&done), ["requested", "applied"], "{done}");

    let envs = admin
        .data(
            "query($a: UUID!) { environments(appId: $a) { id name kind requiresApproval scaleToZero wakeBudgetMs } }",
            json!({ "a": app }),
        )
        .await?;
    let env = &envs["environments"][0];
    assert_eq!(env["id"], done["targetId"]);
    assert_eq!(
        (
            &env["name"],
            &env["kind"],
            &env["requiresApproval"],
            &env["scaleToZero"],
            &env["wakeBudgetMs"]
        ),
        (
            &json!("prod"),
            &json!("PRODUCTION"),
            &json!(true),
            &json!(false),
            &json!(2500)
        )
    );

    let (code, message) = admin
        .error(CREATE_ENV, json!({ "a": app, "n": "prod" }))
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");
    Ok(())
}

#[tokio::test]
async fn decisions_are_taken_only_by_a_workflow_that_waits_for_them() -> Result<()> {
    let api = Api::start("decisions_are_taken_only_by_a_workflow_that_waits_for_them").await?;
    let admin = api.admin().await?;
    let (ws, _, app) = tenancy(&admin, "acme").await?;
    admin
        .data(
            "mutation($w: UUID!) { grantRole(workspaceId: $w, email: \"viewer@example.com\", role: VIEWER) { grant { id } } }",
            json!({ "w": ws }),
        )
        .await?;
    let viewer = api.user("viewer@example.com").await?;

    // No worker yet: the workflow is started and waits for one, so the operation runs.
    let op = create_env(&admin, &app, "prod").await?;
    let id = op["id"].as_str().context("operation id")?.to_owned();
    const DECIDE: &str = "mutation($o: UUID!, $d: Decision!) {
        decideOperation(id: $o, decision: $d, reason: \"on-call checked\") { id status } }";
    let (code, _) = viewer
        .error(DECIDE, json!({ "o": id, "d": "RETRY" }))
        .await?;
    assert_eq!(code, "FORBIDDEN");

    // Running: no decision is awaited, so none is taken (nothing is sent or written).
    let before = api.counts().await?;
    for d in ["RETRY", "APPROVE", "ABORT"] {
        let (code, message) = admin.error(DECIDE, json!({ "o": id, "d": d })).await?;
        assert_eq!(code, "CONFLICT", "{d}: {message}");
        // A retry of a running operation restarts the steps Temporal is retrying; none is.
        let expected = if d == "RETRY" {
            "no step of it is being retried"
        } else {
            "is accepted only while"
        };
        assert!(
            message.contains("is running") && message.contains(expected),
            "{message}"
        );
    }
    assert_eq!(
        api.counts().await?,
        before,
        "a refused decision writes nothing"
    );

    // Parked for on-call as far as the DB says, but the workflow has not reached a wait (no
    // worker has run it): the update is not answered, the API says so, nothing is written.
    rhone_schema::ops::set_status(&api.db, id.parse()?, "needs_attention", None).await?;
    let (code, message) = admin
        .error(DECIDE, json!({ "o": id, "d": "RETRY" }))
        .await?;
    assert_eq!(code, "UNAVAILABLE", "{message}");
    assert!(message.contains("rhone serve worker"), "{message}");
    assert_eq!(
        api.counts().await?,
        before,
        "an unanswered decision writes nothing"
    );

    // A worker finishes the operation; a decision on a finished one is refused.
    let _worker = api.worker()?;
    let done = api.wait_final(&admin, &id, FINAL).await?;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let before = api.counts().await?;
    let (code, message) = admin
        .error(DECIDE, json!({ "o": id, "d": "ABORT" }))
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");
    assert_eq!(
        api.counts().await?,
        before,
        "a refused decision writes nothing"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_temporal_fails_the_operation() -> Result<()> {
    // The API reaches Temporal through a proxy that the test then takes away.
    let server = rhone_testkit::temporal::server().await?;
    let proxy = Proxy::start(server.target.clone()).await?;
    let options = ConnectionOptions::new(Url::parse(&format!("http://{}", proxy.addr))?)
        .identity("rhone-api-test".to_owned())
        .retry_options(
            RetryOptions::builder()
                .max_elapsed_time(Some(Duration::from_secs(1)))
                .max_retries(2)
                .build(),
        )
        .build();
    let client = Client::new(
        Connection::connect(options).await?,
        ClientOptions::new(server.namespace.clone()).build(),
    )?;
    let api = Api::start_with("unreachable_temporal_fails_the_operation", client).await?;
    let admin = api.admin().await?;
    let (ws, _, app) = tenancy(&admin, "acme").await?;
    proxy.stop().await;

    let (code, message) = admin
        .error(CREATE_ENV, json!({ "a": app, "n": "prod" }))
        .await?;
    assert_eq!(code, "UNAVAILABLE", "{message}");
    assert!(message.contains("Temporal is unavailable"), "{message}");

    let ops = admin
        .data(
            "query($w: UUID!) { operations(workspaceId: $w, kind: ENVIRONMENT_CREATE) { nodes { id } } }",
            json!({ "w": ws }),
        )
        .await?;
    let id = ops["operations"]["nodes"][0]["id"]
        .as_str()
        .context("the operation")?;
    let op = admin.data(OPERATION, json!({ "id": id })).await?["operation"].clone();
    assert_eq!(op["status"], "FAILED", "{op}");
    assert_eq!(stage_names(&op), ["requested", "failed"]);
    assert!(
        op["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Temporal is unavailable"),
        "{op}"
    );
    let envs = admin
        .data(
            "query($a: UUID!) { environments(appId: $a) { id } }",
            json!({ "a": app }),
        )
        .await?;
    assert_eq!(envs["environments"], json!([]));

    // The API itself still answers; a fresh client proves the server was never down.
    temporal_client().await?;
    Ok(())
}

/// A TCP proxy to `target` that can be taken away, connections and all.
struct Proxy {
    addr: std::net::SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().await.push(task);
            }
        });
        Ok(Proxy {
            addr,
            tasks,
            accept,
        })
    }

    /// Stops accepting and cuts every open connection.
    async fn stop(&self) {
        self.accept.abort();
        for task in self.tasks.lock().await.drain(..) {
            task.abort();
        }
    }
}
