//! The runner API is authenticated: every call but `/healthz` carries the control plane's
//! call token for this runner, and anything else is answered 401 before it is read.

use anyhow::Result;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Harness, RUNNER, runner_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_this_runners_call_token_are_refused() -> Result<()> {
    let h = Harness::start().await?;
    let bare = reqwest::Client::builder().no_proxy().build()?;
    let id = Uuid::now_v7();
    let spec = h.spec(id, 1, "serve")?;
    let other_runner = runner_key().call_token("another-runner");
    // A runner credential (what the runner presents to the API) is no call token.
    let credential = rhone_runner::Secret::new(format!("rhone_runner_{}", "x".repeat(43)));
    let wrong_key = rhone_runner_protocol::RunnerKey::new("a-different-operator-key-0123456789")?
        .call_token(RUNNER);
    for token in [
        None,
        Some("nonsense"),
        Some(other_runner.expose()),
        Some(credential.expose()),
        Some(wrong_key.expose()),
    ] {
        for (method, url) in [
            ("PUT", h.alloc_url(id)),
            ("GET", h.alloc_url(id)),
            ("DELETE", h.alloc_url(id)),
            ("GET", format!("{}/v1/allocations", h.url)),
            ("GET", format!("{}/v1/nothing-here", h.url)),
        ] {
            let mut request = bare.request(method.parse()?, &url).json(&spec);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            assert_eq!(response.status(), 401, "{method} {url} with {token:?}");
            let body: Value = response.json().await?;
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("call token")),
                "{body}"
            );
        }
    }
    assert_eq!(h.get(id).await?.0, 404, "nothing was created");
    let health = bare.get(format!("{}/healthz", h.url)).send().await?;
    assert_eq!(health.status(), 200, "the health check needs no token");
    // With the token, the same call is taken.
    assert_eq!(h.put(id, &spec).await?.0, 201);
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_without_a_call_token_hash_takes_no_calls() -> Result<()> {
    let h = Harness::start_with(|c| c.call_token_sha256 = None).await?;
    let id = Uuid::now_v7();
    let (code, body) = h.put(id, &h.spec(id, 1, "serve")?).await?;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("has not registered"))
    );
    h.shutdown().await
}
