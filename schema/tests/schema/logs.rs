//! Build logs (`rhone_schema::logs`): attempts and gap-free seqs per operation, ordered
//! paged reads, and text PostgreSQL can hold.

use anyhow::Result;
use rhone_schema::logs::{append, read, start_attempt};
use rhone_schema::ops::{NewOperation, create_operation};
use rhone_schema::{SchemaError, new_id};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::support::on_both_backends;

on_both_backends!(
    attempts_and_seqs_are_per_operation,
    reads_resume_after_a_seq,
    nul_bytes_are_replaced,
    an_unknown_operation_is_not_found,
    concurrent_appends_get_distinct_seqs,
);

async fn new_operation(db: &DatabaseConnection) -> Result<Uuid> {
    let id = new_id();
    create_operation(
        db,
        NewOperation {
            id,
            workspace_id: None,
            kind: "deploy",
            actor: "system",
            target_type: "deployment",
            target_id: &new_id().to_string(),
            initial_stage: "queued",
            status: "running",
            workflow_id: &format!("deploy-{id}"),
        },
    )
    .await?;
    Ok(id)
}

/// (attempt, seq, chunk) of every chunk of the operation.
async fn log(db: &DatabaseConnection, op: Uuid) -> Result<Vec<(i32, i32, String)>> {
    Ok(read(db, op, 0, 1000)
        .await?
        .into_iter()
        .map(|c| (c.attempt, c.seq, c.chunk))
        .collect())
}

async fn attempts_and_seqs_are_per_operation(db: DatabaseConnection) -> Result<()> {
    let op = new_operation(&db).await?;
    let other = new_operation(&db).await?;
    let first = start_attempt(&db, op, "attempt 1\n").await?;
    assert_eq!((first.attempt, first.seq), (1, 1));
    append(&db, op, first.attempt, "out a\n").await?;
    append(
        &db,
        other,
        start_attempt(&db, other, "x\n").await?.attempt,
        "y\n",
    )
    .await?;
    let second = start_attempt(&db, op, "attempt 2\n").await?;
    assert_eq!((second.attempt, second.seq), (2, 3));
    append(&db, op, second.attempt, "out b\n").await?;
    assert_eq!(
        log(&db, op).await?,
        vec![
            (1, 1, "attempt 1\n".into()),
            (1, 2, "out a\n".into()),
            (2, 3, "attempt 2\n".into()),
            (2, 4, "out b\n".into()),
        ]
    );
    assert_eq!(
        log(&db, other).await?,
        vec![(1, 1, "x\n".into()), (1, 2, "y\n".into())]
    );
    Ok(())
}

async fn reads_resume_after_a_seq(db: DatabaseConnection) -> Result<()> {
    let op = new_operation(&db).await?;
    let attempt = start_attempt(&db, op, "0\n").await?.attempt;
    for i in 1..5 {
        append(&db, op, attempt, &format!("{i}\n")).await?;
    }
    let page = |after, limit| {
        let db = db.clone();
        async move {
            Ok::<_, SchemaError>(
                read(&db, op, after, limit)
                    .await?
                    .into_iter()
                    .map(|c| c.seq)
                    .collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(page(0, 2).await?, [1, 2]);
    assert_eq!(page(2, 2).await?, [3, 4]);
    assert_eq!(page(4, 2).await?, [5]);
    assert_eq!(page(5, 2).await?, Vec::<i32>::new());
    Ok(())
}

async fn nul_bytes_are_replaced(db: DatabaseConnection) -> Result<()> {
    let op = new_operation(&db).await?;
    start_attempt(&db, op, "a\0b ünïcode\n").await?;
    assert_eq!(log(&db, op).await?[0].2, "a\u{FFFD}b ünïcode\n");
    Ok(())
}

async fn an_unknown_operation_is_not_found(db: DatabaseConnection) -> Result<()> {
    let err = start_attempt(&db, new_id(), "x")
        .await
        .expect_err("no such operation");
    assert!(
        matches!(
            err,
            SchemaError::NotFound {
                what: "operation",
                ..
            }
        ),
        "{err:?}"
    );
    Ok(())
}

async fn concurrent_appends_get_distinct_seqs(db: DatabaseConnection) -> Result<()> {
    let op = new_operation(&db).await?;
    let attempt = start_attempt(&db, op, "start\n").await?.attempt;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let db = db.clone();
        tasks.spawn(async move { append(&db, op, attempt, &format!("{i}\n")).await });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seqs: Vec<i32> = log(&db, op).await?.into_iter().map(|c| c.1).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    Ok(())
}
