//! The Operation invariants of `rhone_schema::ops`.

use std::collections::BTreeSet;

use anyhow::Result;
use rhone_core::{OperationKind, StageError};
use rhone_schema::entity::{operation, operation_stage};
use rhone_schema::ops::{
    self, AppendOutcome, NewOperation, OperationFilter, Page, StageAppend, append_stage,
    create_operation, list_operations,
};
use rhone_schema::{SchemaError, new_id};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, TryGetable};
use serde_json::json;
use uuid::Uuid;

use crate::fixtures::workspace;
use crate::support::{on_both_backends, sqlite_file};

on_both_backends!(
    creating_records_the_initial_stage,
    append_is_idempotent_per_record_key,
    stages_come_in_seq_order,
    illegal_transition_writes_nothing,
    concurrent_duplicates_write_once,
    concurrent_attempts_get_distinct_seqs,
    listing_filters_and_pages_newest_first,
    set_status_parks_without_moving_the_stage,
    runners_register_once_with_their_topology,
);

fn deploy(from: &str, to: &str) -> Result<(), StageError> {
    OperationKind::Deploy.validate_transition(from, to)
}

async fn new_deploy(
    db: &DatabaseConnection,
    workspace_id: Option<Uuid>,
) -> Result<operation::Model> {
    let id = new_id();
    let workflow_id = format!("op-{id}");
    let target = new_id().to_string();
    Ok(create_operation(
        db,
        NewOperation {
            id,
            workspace_id,
            kind: "deploy",
            actor: "system",
            target_type: "deployment",
            target_id: &target,
            initial_stage: "queued",
            status: "running",
            workflow_id: &workflow_id,
        },
    )
    .await?)
}

fn append(op: Uuid, key: &str, stage: &str, attempt: i32) -> StageAppend {
    StageAppend {
        operation_id: op,
        record_key: key.to_owned(),
        stage: stage.to_owned(),
        attempt,
        evidence: json!({ "key": key }),
        error: None,
        status: if stage == "preview_ready" {
            "succeeded"
        } else {
            "running"
        }
        .to_owned(),
    }
}

async fn creating_records_the_initial_stage(db: DatabaseConnection) -> Result<()> {
    let op = new_deploy(&db, None).await?;
    assert_eq!(op.current_stage, "queued");
    let stages = ops::stages(&db, op.id).await?;
    assert_eq!(stages.len(), 1);
    assert_eq!((stages[0].seq, stages[0].stage.as_str()), (1, "queued"));
    // The same id, or the same workflow id, is a conflict.
    let again = create_operation(
        &db,
        NewOperation {
            id: op.id,
            workspace_id: None,
            kind: "deploy",
            actor: "system",
            target_type: "deployment",
            target_id: "x",
            initial_stage: "queued",
            status: "running",
            workflow_id: "another",
        },
    )
    .await;
    assert!(
        matches!(again, Err(SchemaError::Conflict { .. })),
        "{again:?}"
    );
    Ok(())
}

async fn append_is_idempotent_per_record_key(db: DatabaseConnection) -> Result<()> {
    let op = new_deploy(&db, None).await?;
    let first = append_stage(&db, append(op.id, "clone-1", "cloning", 1), deploy).await?;
    let AppendOutcome::Appended(record) = &first else {
        panic!("first append not written: {first:?}");
    };
    assert_eq!(record.seq, 2);
    assert_eq!(record.evidence, json!({ "key": "clone-1" }));

    // The retry comes after the operation moved on, so its transition would be illegal now:
    // the key alone decides.
    append_stage(&db, append(op.id, "build-1", "building", 1), deploy).await?;
    let retry = append_stage(&db, append(op.id, "clone-1", "cloning", 1), deploy).await?;
    assert_eq!(retry, AppendOutcome::AlreadyRecorded(record.clone()));

    let stages = ops::stages(&db, op.id).await?;
    assert_eq!(stages.len(), 3);
    let op = operation::Entity::find_by_id(op.id).one(&db).await?;
    assert_eq!(op.map(|o| o.current_stage).as_deref(), Some("building"));
    Ok(())
}

async fn stages_come_in_seq_order(db: DatabaseConnection) -> Result<()> {
    let op = new_deploy(&db, None).await?;
    let path = [
        "cloning",
        "building",
        "validating",
        "validating",
        "preview_ready",
    ];
    for (i, stage) in path.iter().enumerate() {
        let attempt = if i == 3 { 2 } else { 1 };
        append_stage(&db, append(op.id, &format!("k{i}"), stage, attempt), deploy).await?;
    }
    let stages = ops::stages(&db, op.id).await?;
    let seen: Vec<(i32, &str, i32)> = stages
        .iter()
        .map(|s| (s.seq, s.stage.as_str(), s.attempt))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "queued", 1),
            (2, "cloning", 1),
            (3, "building", 1),
            (4, "validating", 1),
            (5, "validating", 2),
            (6, "preview_ready", 1),
        ]
    );
    let op = operation::Entity::find_by_id(op.id).one(&db).await?;
    let op = op.ok_or_else(|| anyhow::anyhow!("operation gone"))?;
    assert_eq!(
        (op.current_stage.as_str(), op.status.as_str()),
        ("preview_ready", "succeeded")
    );
    Ok(())
}

async fn illegal_transition_writes_nothing(db: DatabaseConnection) -> Result<()> {
    let op = new_deploy(&db, None).await?;
    let skip = append_stage(&db, append(op.id, "k", "preview_ready", 1), deploy).await;
    assert!(
        matches!(
            skip,
            Err(SchemaError::IllegalTransition(StageError::Illegal(_)))
        ),
        "{skip:?}"
    );
    let unknown = append_stage(&db, append(op.id, "k", "healthy", 1), deploy).await;
    assert!(
        matches!(
            unknown,
            Err(SchemaError::IllegalTransition(StageError::Unknown(_)))
        ),
        "{unknown:?}"
    );
    assert_eq!(ops::stages(&db, op.id).await?.len(), 1);
    assert_eq!(
        operation::Entity::find_by_id(op.id).one(&db).await?,
        Some(op)
    );

    let missing = append_stage(&db, append(new_id(), "k", "cloning", 1), deploy).await;
    assert!(matches!(
        missing,
        Err(SchemaError::NotFound {
            what: "operation",
            ..
        })
    ));
    Ok(())
}

async fn concurrent_duplicates_write_once(db: DatabaseConnection) -> Result<()> {
    let op = new_deploy(&db, None).await?;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                append_stage(&db, append(op.id, "same", "cloning", 1), deploy).await
            })
        })
        .collect();
    let mut appended = 0;
    for task in tasks {
        if let AppendOutcome::Appended(_) = task.await?? {
            appended += 1;
        }
    }
    assert_eq!(appended, 1);
    assert_eq!(ops::stages(&db, op.id).await?.len(), 2);
    Ok(())
}

async fn concurrent_attempts_get_distinct_seqs(db: DatabaseConnection) -> Result<()> {
    let op = new_deploy(&db, None).await?;
    append_stage(&db, append(op.id, "clone", "cloning", 1), deploy).await?;
    // Re-entering `cloning` is a retry, legal from `cloning`; each writer gets its own seq.
    let tasks: Vec<_> = (2..10)
        .map(|attempt| {
            let db = db.clone();
            tokio::spawn(async move {
                let key = format!("clone-{attempt}");
                append_stage(&db, append(op.id, &key, "cloning", attempt), deploy).await
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await??, AppendOutcome::Appended(_)));
    }
    let seqs: Vec<i32> = ops::stages(&db, op.id)
        .await?
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    Ok(())
}

async fn listing_filters_and_pages_newest_first(db: DatabaseConnection) -> Result<()> {
    let (a, b) = (workspace(&db, "a").await?, workspace(&db, "b").await?);
    let mut in_a = Vec::new();
    for _ in 0..5 {
        in_a.push(new_deploy(&db, Some(a.id)).await?.id);
    }
    let in_b = new_deploy(&db, Some(b.id)).await?.id;
    let system = new_deploy(&db, None).await?.id;
    append_stage(&db, append(in_a[0], "k", "cloning", 1), deploy).await?;

    let ids = |ops: Vec<operation::Model>| ops.into_iter().map(|o| o.id).collect::<Vec<_>>();
    let all = Page {
        after: None,
        first: 100,
    };
    let filter = |workspace_ids: Option<Vec<Uuid>>| OperationFilter {
        workspace_ids,
        ..OperationFilter::default()
    };

    let everything = ids(list_operations(&db, &filter(None), all).await?);
    let mut newest_first = in_a.clone();
    newest_first.extend([in_b, system]);
    newest_first.reverse();
    assert_eq!(everything, newest_first);

    let only_a = list_operations(&db, &filter(Some(vec![a.id])), all).await?;
    assert_eq!(ids(only_a), in_a.iter().rev().copied().collect::<Vec<_>>());
    assert!(
        list_operations(&db, &filter(Some(vec![])), all)
            .await?
            .is_empty()
    );

    // Pages of two through workspace a.
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page =
            ids(list_operations(&db, &filter(Some(vec![a.id])), Page { after, first: 2 }).await?);
        let Some(last) = page.last().copied() else {
            break;
        };
        after = Some(last);
        pages.push(page);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(
        pages.concat(),
        in_a.iter().rev().copied().collect::<Vec<_>>()
    );

    let cloning = OperationFilter {
        status: Some("running".to_owned()),
        kind: Some("deploy".to_owned()),
        target_id: Some(
            operation::Entity::find_by_id(in_a[0])
                .one(&db)
                .await?
                .map(|o| o.target_id)
                .unwrap_or_default(),
        ),
        ..OperationFilter::default()
    };
    assert_eq!(ids(list_operations(&db, &cloning, all).await?), [in_a[0]]);
    let none = OperationFilter {
        kind: Some("wake".to_owned()),
        ..OperationFilter::default()
    };
    assert!(list_operations(&db, &none, all).await?.is_empty());
    Ok(())
}

/// A file database with a pool of connections: concurrent writers wait for each other
/// (BEGIN IMMEDIATE + busy timeout) instead of failing with SQLITE_BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_serialises_concurrent_appends() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sqlite_file(&dir).await?;
    assert_eq!(pragma::<String>(&db, "journal_mode").await?, "wal");
    assert_eq!(pragma::<i32>(&db, "foreign_keys").await?, 1);
    concurrent_attempts_get_distinct_seqs(db.clone()).await?;
    concurrent_duplicates_write_once(db.clone()).await?;
    let keys: BTreeSet<String> = operation_stage::Entity::find()
        .all(&db)
        .await?
        .into_iter()
        .map(|s| format!("{}/{}", s.operation_id, s.record_key))
        .collect();
    assert_eq!(keys.len(), 10 + 2);
    Ok(())
}

async fn pragma<T: TryGetable>(db: &DatabaseConnection, name: &str) -> Result<T> {
    let sql = format!("PRAGMA {name}");
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
        .await?;
    let row = row.ok_or_else(|| anyhow::anyhow!("PRAGMA {name} returned no row"))?;
    Ok(row.try_get_by_index(0)?)
}

async fn set_status_parks_without_moving_the_stage(db: DatabaseConnection) -> Result<()> {
    let op = new_deploy(&db, None).await?;
    rhone_schema::ops::set_status(
        &db,
        op.id,
        "needs_attention",
        Some("git unreachable".into()),
    )
    .await?;
    let parked = operation::Entity::find_by_id(op.id)
        .one(&db)
        .await?
        .expect("operation row");
    assert_eq!(
        (
            parked.status.as_str(),
            parked.current_stage.as_str(),
            parked.error.as_deref()
        ),
        ("needs_attention", "queued", Some("git unreachable"))
    );
    assert_eq!(
        rhone_schema::ops::stages(&db, op.id).await?.len(),
        1,
        "no stage record for a status change"
    );
    rhone_schema::ops::set_status(&db, op.id, "running", None).await?;
    let resumed = operation::Entity::find_by_id(op.id)
        .one(&db)
        .await?
        .expect("operation row");
    assert_eq!((resumed.status.as_str(), resumed.error), ("running", None));
    let missing = rhone_schema::ops::set_status(&db, new_id(), "running", None).await;
    assert!(
        matches!(missing, Err(SchemaError::NotFound { .. })),
        "{missing:?}"
    );
    Ok(())
}

async fn runners_register_once_with_their_topology(db: DatabaseConnection) -> Result<()> {
    use rhone_schema::entity::{cell, region, runner};
    let first = rhone_schema::topology::ensure_runner(&db, "eu", "eu-a", "r1", "http://h1").await?;
    let again = rhone_schema::topology::ensure_runner(&db, "eu", "eu-a", "r1", "http://h2").await?;
    assert_eq!(first.id, again.id);
    assert_eq!(
        again.address, "http://h2",
        "a known runner's address is updated"
    );
    rhone_schema::topology::ensure_runner(&db, "eu", "eu-b", "r2", "http://h3").await?;
    assert_eq!(region::Entity::find().all(&db).await?.len(), 1);
    assert_eq!(cell::Entity::find().all(&db).await?.len(), 2);
    assert_eq!(runner::Entity::find().all(&db).await?.len(), 2);
    Ok(())
}
