//! The WebSocket reconnect trace: a live session goes back to the allocation its socket was
//! on while that allocation runs; when it is gone, the session moves to another one, told to
//! hydrate its state only where a durable session store is bound, otherwise to start fresh.

use std::{collections::HashMap, time::Duration};

use anyhow::{Context, Result};
use chrono::Utc;
use rhone_manifest::{
    AppManifest, ArtifactManifest,
    artifact::{AppSubset, ArtifactAssets, SourceFacts},
};
use rhone_schema::{
    entity::{allocation, artifact, environment, runtime_service_binding},
    new_id,
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::json;
use uuid::Uuid;

use super::{Harness, backends::echo, harness::HOST};

/// Gives the artifact `digest` a real manifest, so the edge can read the route's policy.
async fn with_manifest(h: &Harness, digest: &str) -> Result<()> {
    let app = AppManifest::parse("[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let manifest = ArtifactManifest {
        format_version: rhone_manifest::ARTIFACT_FORMAT_VERSION,
        app: AppSubset::from(&app),
        assets: ArtifactAssets {
            dir: "public".into(),
            manifest: "manifest.json".into(),
            entries: vec![],
        },
        state_schema: None,
        migrations: vec![],
        source: SourceFacts {
            repository: "test".into(),
            git_ref: "main".into(),
            commit_sha: "c".repeat(40),
            build_command: "make".into(),
        },
    };
    artifact::ActiveModel {
        digest: Set(digest.to_owned()),
        manifest: Set(serde_json::to_value(&manifest)?),
        ..Default::default()
    }
    .update(&h.db.conn)
    .await?;
    Ok(())
}

/// Marks allocation `id` to stop, as a drain does.
async fn drain(h: &Harness, id: Uuid) -> Result<()> {
    allocation::ActiveModel {
        id: Set(id),
        desired: Set("stop".into()),
        updated_at: Set(Utc::now()),
        memory_mb: Set(512),
        cpu_millis: Set(1000),
        sealed_secrets: Set(None),
        ..Default::default()
    }
    .update(&h.db.conn)
    .await?;
    h.settle().await
}

/// `backend NAME resume=R from=F` → (NAME, R, F).
fn parse(greeting: &str) -> (String, String, String) {
    let mut name = String::new();
    let mut resume = String::new();
    let mut from = String::new();
    for (i, part) in greeting.split(' ').enumerate() {
        if i == 1 {
            name = part.to_owned();
        } else if let Some(v) = part.strip_prefix("resume=") {
            resume = v.to_owned();
        } else if let Some(v) = part.strip_prefix("from=") {
            from = v.to_owned();
        }
    }
    (name, resume, from)
}

#[tokio::test]
async fn a_live_session_goes_back_to_its_allocation_and_moves_only_as_bindings_allow() -> Result<()>
{
    let h = Harness::start().await?;
    let digest = h.db.artifact(1).await?;
    with_manifest(&h, &digest).await?;
    let dep = h.db.deployment(&digest).await?;
    h.db.owner(HOST, &dep).await?;
    let mut ids = HashMap::new();
    let mut backends = Vec::new();
    for name in ["a", "b"] {
        let b = echo(name).await?;
        ids.insert(name.to_owned(), h.db.ready(&dep, &b.address).await?);
        backends.push(b);
    }
    h.settle().await?;

    // First socket of the session, then a reconnect: back to the same allocation.
    let (ws, greeting) = h.live_greeting("path=/&session=s1").await?;
    let (first, resume, _) = parse(&greeting);
    assert_eq!(resume, "new", "{greeting}");
    drop(ws);
    for _ in 0..3 {
        let (_ws, greeting) = h.live_greeting("path=/&session=s1").await?;
        assert_eq!(
            parse(&greeting),
            (first.clone(), "pinned".into(), String::new())
        );
    }

    // Its allocation goes away; no session store is bound: it moves and starts fresh.
    let gone = ids[&first];
    drain(&h, gone).await?;
    let (_ws, greeting) = h.live_greeting("path=/&session=s1").await?;
    let (moved_to, resume, from) = parse(&greeting);
    assert_ne!(moved_to, first);
    assert_eq!(resume, "fresh", "{greeting}");
    assert_eq!(from, gone.to_string());

    // With a durable session store bound, a session that moves hydrates its state.
    let env = environment::Entity::find()
        .one(&h.db.conn)
        .await?
        .context("environment")?;
    runtime_service_binding::ActiveModel {
        id: Set(new_id()),
        environment_id: Set(env.id),
        service: Set("session_store".into()),
        status: Set("ready".into()),
        config: Set(json!({ "provider": "redis" })),
        created_at: Set(Utc::now()),
        // Not probed: written as a provisioner would.
        ..Default::default()
    }
    .insert(&h.db.conn)
    .await?;
    // The edge reads a route's policy again after at most 2 s.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (_ws, greeting) = h.live_greeting("path=/&session=s2").await?;
    assert_eq!(
        parse(&greeting),
        (moved_to.clone(), "new".into(), String::new())
    );
    let c = echo("c").await?;
    ids.insert("c".into(), h.db.ready(&dep, &c.address).await?);
    h.settle().await?;
    let (_ws, greeting) = h.live_greeting("path=/&session=s2").await?;
    assert_eq!(
        parse(&greeting).1,
        "pinned",
        "a new allocation does not move it"
    );
    drain(&h, ids[&moved_to]).await?;
    let (_ws, greeting) = h.live_greeting("path=/&session=s2").await?;
    assert_eq!(
        parse(&greeting),
        ("c".into(), "hydrate".into(), ids[&moved_to].to_string())
    );
    Ok(())
}
