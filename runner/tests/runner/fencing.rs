//! What the runner refuses: older generations, bad input, tampered or unsafe artifacts;
//! and what it never shows: secret values.

use std::time::Duration;

use anyhow::{Context, Result};
use rhone_store::{LocalStore, Packed};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Harness, log_text};

const WITHIN: Duration = Duration::from_secs(4);

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_are_fenced() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    let spec = h.spec(id, 2, "serve")?;
    assert_eq!(h.put(id, &spec).await?.0, 201);
    let (code, same) = h.put(id, &spec).await?;
    assert_eq!(
        (code, same["generation"].as_i64()),
        (200, Some(2)),
        "idempotent: {same}"
    );

    let (code, stale) = h.put(id, &h.spec(id, 1, "serve")?).await?;
    assert_eq!(code, 409, "{stale}");
    assert_eq!(
        error_of(&stale),
        format!(
            "allocation {id}: generation 1 is older than generation 2, which this runner already has"
        )
    );
    let (code, reused) = h.put(id, &h.spec(id, 2, "stubborn")?).await?;
    assert_eq!(code, 409, "{reused}");
    assert!(error_of(&reused).contains("generation 2 was already given with a different spec"));
    let (code, changed) = h.put(id, &h.spec(id, 3, "stubborn")?).await?;
    assert_eq!(code, 409, "{changed}");
    assert!(error_of(&changed).contains("start a new allocation"));

    h.wait_stage(id, "ready", WITHIN).await?;
    let mut stop = spec.clone();
    stop["generation"] = 3.into();
    stop["desired"] = "stop".into();
    let (code, stopping) = h.put(id, &stop).await?;
    assert_eq!(
        (code, stopping["desired"].as_str()),
        (200, Some("stop")),
        "{stopping}"
    );
    let stopped = h.wait_stage(id, "stopped", WITHIN).await?;
    assert_eq!(stopped["generation"], 3);

    let mut rerun = spec.clone();
    rerun["generation"] = 4.into();
    let (code, refused) = h.put(id, &rerun).await?;
    assert_eq!(code, 409, "{refused}");
    assert!(error_of(&refused).contains("is stopped and cannot run again"));
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_naming_the_problem() -> Result<()> {
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    let valid = h.spec(id, 1, "serve")?;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = valid.clone();
        edit(&mut v);
        v
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            with(&|v| v["artifact_digest"] = "sha256:1234".into()),
            422,
            "invalid digest \"sha256:1234\"",
        ),
        (
            with(&|v| v["process"] = json!({ "health_path": "/" })),
            422,
            "missing field `command`",
        ),
        (
            with(&|v| v["allocation_id"] = json!(Uuid::nil())),
            422,
            "allocation_id",
        ),
        (
            with(&|v| v["process"]["health_path"] = "healthz".into()),
            422,
            "process.health_path",
        ),
        (
            with(&|v| v["env"]["PORT"] = "80".into()),
            422,
            "env.PORT: is set by the runner",
        ),
        (
            with(&|v| v["secrets"] = json!({ "APP_MODE": "x" })),
            422,
            "secrets.APP_MODE",
        ),
        (
            with(&|v| v["desired"] = "pause".into()),
            422,
            "unknown variant `pause`",
        ),
    ];
    for (body, status, part) in cases {
        let (code, answer) = h.put(id, &body).await?;
        assert_eq!(code, status, "{answer}");
        assert!(
            error_of(&answer).contains(part),
            "expected {part:?} in {answer}"
        );
    }

    let raw = h
        .http
        .put(h.alloc_url(id))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(raw.status().as_u16(), 400);
    let answer: Value = raw.json().await?;
    assert!(
        error_of(&answer).starts_with("invalid allocation spec:"),
        "{answer}"
    );

    let plain = h
        .http
        .put(h.alloc_url(id))
        .body(valid.to_string())
        .send()
        .await?;
    assert_eq!(plain.status().as_u16(), 415, "no JSON content type");

    let (code, answer) = h.get(id).await?;
    assert_eq!(code, 404);
    assert_eq!(
        error_of(&answer),
        format!("allocation {id} is not known to this runner")
    );
    assert_eq!(h.delete(id).await?.0, 404);
    let bad_id = h.http.get(h.alloc_url("nope")).send().await?;
    assert_eq!(bad_id.status().as_u16(), 400);
    let answer: Value = bad_id.json().await?;
    assert_eq!(error_of(&answer), "allocation id \"nope\" is not a UUID");
    let (code, _) = h.get(id).await?;
    assert_eq!(code, 404, "no refused spec created anything");
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_store_object_fails_with_digest_mismatch() -> Result<()> {
    let h = Harness::start().await?;
    let path = LocalStore::new(&h.store_dir).path_of(&h.digest);
    let mut bytes = std::fs::read(&path)?;
    let last = bytes
        .iter()
        .rposition(|b| *b != 0)
        .context("a non-empty archive")?;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes)?;

    let id = Uuid::now_v7();
    h.put(id, &h.spec(id, 1, "serve")?).await?;
    let failed = h.wait_stage(id, "failed", WITHIN).await?;
    let message = failed["message"].as_str().unwrap_or("");
    assert!(message.contains("digest mismatch: expected"), "{failed:#}");
    assert_eq!(failed["pid"], Value::Null, "nothing was started");
    assert_eq!(
        std::fs::read_dir(h.work.join("artifacts"))?.count(),
        0,
        "nothing was unpacked"
    );
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_archive_fails_with_the_entry_named() -> Result<()> {
    let h = Harness::start().await?;
    let mut header = tar::Header::new_gnu();
    let name = b"../escaped.txt";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(4);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(b"evil");
    bytes.resize(bytes.len().next_multiple_of(512) + 1024, 0);
    let digest = h.store.put(&Packed::from_bytes(bytes)).await?;

    let id = Uuid::now_v7();
    let mut spec = h.spec(id, 1, "serve")?;
    spec["artifact_digest"] = digest.as_str().into();
    h.put(id, &spec).await?;
    let failed = h.wait_stage(id, "failed", WITHIN).await?;
    let message = failed["message"].as_str().unwrap_or("");
    assert!(
        message.contains("unsafe archive entry \"../escaped.txt\""),
        "{failed:#}"
    );
    assert!(!h.work.join("escaped.txt").exists());
    h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leave_the_runner() -> Result<()> {
    const SECRET: &str = "s3cr3t-value-9f8e7d";
    let h = Harness::start().await?;
    let id = Uuid::now_v7();
    let mut spec = h.spec(id, 1, "serve")?;
    spec["secrets"] = json!({ "APP_SECRET": SECRET });
    let created = h
        .http
        .put(h.alloc_url(id))
        .json(&spec)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        !created.contains(SECRET),
        "PUT echoed the secret: {created}"
    );

    h.wait_stage(id, "ready", WITHIN).await?;
    // The app got the value (only the exact value is replaced), and it shows as `***`. The
    // runner reads the app's output beside its readiness probe, so the line may show up
    // just after `ready`.
    let deadline = std::time::Instant::now() + WITHIN;
    let status = loop {
        let (_, status) = h.get(id).await?;
        if log_text(&status).contains("the secret is") || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert!(
        log_text(&status).contains("the secret is ***"),
        "{status:#}"
    );
    let shown = h.http.get(h.alloc_url(id)).send().await?.text().await?;
    let listed = h
        .http
        .get(format!("{}/v1/allocations", h.url))
        .send()
        .await?
        .text()
        .await?;
    for text in [&shown, &listed] {
        assert!(
            !text.contains(SECRET),
            "a response shows the secret: {text}"
        );
    }
    let log_file = h
        .work
        .join("allocations")
        .join(id.to_string())
        .join("output.log");
    let logged = std::fs::read_to_string(&log_file)?;
    assert!(logged.contains("the secret is ***"), "{logged}");
    assert!(!logged.contains(SECRET), "the log file holds the secret");

    h.delete(id).await?;
    h.wait_stage(id, "stopped", WITHIN).await?;
    h.shutdown().await
}
