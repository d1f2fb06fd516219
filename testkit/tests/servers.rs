//! The harness against its real servers: each answers, and databases come back fresh.
//!
//! Run alone (`cargo test -p rhone-testkit`) these tests start their own servers; under
//! `scripts/test.sh` they use the run's shared ones.

use std::process::Output;

use anyhow::{Context, Result, ensure};
use tokio::process::Command;

async fn run(command: &mut Command) -> Result<Output> {
    let out = command
        .kill_on_drop(true)
        .output()
        .await
        .context("running a client")?;
    ensure!(
        out.status.success(),
        "{:?} failed ({}): {}",
        command.as_std().get_program(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

async fn psql(url: &str, sql: &str) -> Result<String> {
    let out = run(Command::new("psql").args(["-X", "-q", "-A", "-t", "-w", "-d", url, "-c", sql]))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn temporal_server_answers() -> Result<()> {
    let temporal = rhone_testkit::temporal::server().await?;
    assert_eq!(temporal.namespace, "default");
    assert!(
        temporal.target.starts_with("127.0.0.1:"),
        "{}",
        temporal.target
    );

    let out = run(Command::new("temporal").args([
        "operator",
        "namespace",
        "list",
        "--address",
        &temporal.target,
    ]))
    .await?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("default"),
        "namespace list printed: {listed}"
    );

    // A second call in the same process shares the server.
    assert_eq!(rhone_testkit::temporal::server().await?, temporal);
    Ok(())
}

#[tokio::test]
async fn postgres_database_answers_and_is_fresh() -> Result<()> {
    let name = rhone_testkit::unique_name("postgres_database_answers_and_is_fresh");
    let url = rhone_testkit::postgres::database(&name).await?;
    assert!(url.ends_with(&format!("/{name}")), "{url}");
    assert_eq!(psql(&url, "select 1").await?, "1");
    assert_eq!(psql(&url, "select current_database()").await?, name);

    psql(
        &url,
        "create table leftover (id int); insert into leftover values (1)",
    )
    .await?;
    // Asking again for the same name drops the old database, even with a client on it.
    let again = rhone_testkit::postgres::database(&name).await?;
    assert_eq!(again, url);
    let tables = psql(
        &url,
        "select count(*) from pg_tables where tablename = 'leftover'",
    )
    .await?;
    assert_eq!(tables, "0");
    Ok(())
}

#[tokio::test]
async fn postgres_databases_can_be_created_concurrently() -> Result<()> {
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..8 {
        let name = rhone_testkit::unique_name(&format!("concurrent_{i}"));
        creates.spawn(async move { rhone_testkit::postgres::database(&name).await });
    }
    while let Some(created) = creates.join_next().await {
        let url = created.context("a create task panicked")??;
        assert_eq!(psql(&url, "select 1").await?, "1");
    }
    Ok(())
}
