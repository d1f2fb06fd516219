//! The EnvironmentCreate workflow on a real Temporal dev server and a real worker, over
//! SQLite and PostgreSQL: stage records, idempotency, refusal, and the needs-attention path
//! that on-call resolves with `retry`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use rhone_activities::{
    Worker, WorkerConfig, WorkerHandle,
    temporal::{self, Client, TemporalConfig},
};
use rhone_core::{OperationId, OperationKind, workflow_id};
use rhone_schema::{
    entity::{app, environment, operation, project, workspace},
    new_id, ops,
};
use rhone_workflows::{
    Decision, DecisionKind, DecisionUpdate, EnvironmentCreateInput, EnvironmentCreateWorkflow,
    activities::CreateEnvironmentInput,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait,
};
use temporalio_client::WorkflowStartOptions;
use uuid::Uuid;

struct Harness {
    db: DatabaseConnection,
    client: Client,
    queue: String,
    worker: WorkerHandle,
}

impl Harness {
    /// A worker over `db_url`; `migrate` is false where the test migrated the schema as
    /// another role.
    async fn start(test: &str, db_url: &str, migrate: bool) -> Result<Harness> {
        let server = rhone_testkit::temporal::server().await?;
        let config = TemporalConfig {
            address: Some(server.target.clone()),
            namespace: Some(server.namespace.clone()),
        };
        let client = temporal::connect(&config).await?;
        let db = rhone_schema::connect(db_url).await?;
        if migrate {
            rhone_schema::migrate(&db).await?;
        }
        let queue = rhone_testkit::unique_name(test);
        let worker = Worker::spawn(
            WorkerConfig {
                task_queue: queue.clone(),
                ..WorkerConfig::default()
            },
            client.clone(),
            db.clone(),
        )?;
        Ok(Harness {
            db,
            client,
            queue,
            worker,
        })
    }

    async fn stop(self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(30), self.worker.shutdown())
            .await
            .context("worker shutdown")??;
        Ok(())
    }

    /// A workspace, project and app to put environments in.
    async fn app(&self) -> Result<app::Model> {
        let now = Utc::now();
        let ws = workspace::ActiveModel {
            id: Set(new_id()),
            name: Set(format!("ws-{}", &new_id().simple().to_string()[20..])),
            display_name: Set("Test".into()),
            created_at: Set(now),
        }
        .insert(&self.db)
        .await?;
        let project = project::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(ws.id),
            name: Set("shop".into()),
            created_at: Set(now),
        }
        .insert(&self.db)
        .await?;
        Ok(app::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(ws.id),
            project_id: Set(project.id),
            name: Set("web".into()),
            created_at: Set(now),
        }
        .insert(&self.db)
        .await?)
    }

    /// Creates the operation row as the API does and starts its workflow.
    async fn create_environment(&self, app: &app::Model, name: &str) -> Result<OperationId> {
        let op_id = OperationId(new_id());
        let kind = OperationKind::EnvironmentCreate;
        let wf_id = workflow_id(kind, op_id);
        let env_id = new_id();
        ops::create_operation(
            &self.db,
            ops::NewOperation {
                id: op_id.0,
                workspace_id: Some(app.workspace_id),
                kind: kind.as_str(),
                actor: "system",
                target_type: "environment",
                target_id: &env_id.to_string(),
                initial_stage: kind.initial_stage(),
                status: "running",
                workflow_id: &wf_id,
            },
        )
        .await?;
        let input = EnvironmentCreateInput {
            operation_id: op_id,
            environment: CreateEnvironmentInput {
                operation_id: op_id,
                environment_id: env_id,
                workspace_id: app.workspace_id,
                app_id: app.id,
                name: name.to_owned(),
                kind: "production".into(),
                self_approval: None,
                requires_approval: true,
                scale_to_zero: false,
                wake_budget_ms: 10_000,
            },
        };
        self.client
            .start_workflow(
                EnvironmentCreateWorkflow::run,
                input,
                WorkflowStartOptions::new(self.queue.clone(), wf_id).build(),
            )
            .await?;
        Ok(op_id)
    }

    /// Waits until the operation has `status`, failing after a deadline with what it has.
    async fn wait_status(&self, id: OperationId, status: &str) -> Result<operation::Model> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let op = operation::Entity::find_by_id(id.0)
                .one(&self.db)
                .await?
                .context("operation row")?;
            if op.status == status {
                return Ok(op);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "operation {id} is {} at {} (error {:?}), not {status}",
                    op.status,
                    op.current_stage,
                    op.error
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// With `RHONE_RECORD_HISTORIES=DIR`, saves the workflow's history as `DIR/NAME.json`
    /// for the replay test in `workflows/tests/replay.rs`.
    async fn record_history(&self, op: &operation::Model, name: &str) -> Result<()> {
        let Ok(dir) = std::env::var("RHONE_RECORD_HISTORIES") else {
            return Ok(());
        };
        let json = self
            .client
            .get_workflow_handle::<temporalio_common::UntypedWorkflow>(op.workflow_id.clone())
            .fetch_history(Default::default())
            .to_json()
            .await?;
        std::fs::write(
            std::path::Path::new(&dir).join(format!("{name}.json")),
            json,
        )?;
        Ok(())
    }

    async fn stages(&self, id: OperationId) -> Result<Vec<(String, i32, i32)>> {
        Ok(ops::stages(&self.db, id.0)
            .await?
            .into_iter()
            .map(|s| (s.stage, s.seq, s.attempt))
            .collect())
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("rhone.db").display()
    )
}

async fn creates_and_refuses_duplicates(test: &str, db_url: &str) -> Result<()> {
    let h = Harness::start(test, db_url, true).await?;
    let app = h.app().await?;

    let first = h.create_environment(&app, "production").await?;
    let op = h.wait_status(first, "succeeded").await?;
    assert_eq!(op.current_stage, "applied");
    assert_eq!(
        op.workflow_id,
        workflow_id(OperationKind::EnvironmentCreate, first)
    );
    assert_eq!(
        h.stages(first).await?,
        vec![("requested".into(), 1, 1), ("applied".into(), 2, 1)],
        "one record per stage, in order"
    );
    let env_id: Uuid = op.target_id.parse()?;
    let env = environment::Entity::find_by_id(env_id)
        .one(&h.db)
        .await?
        .context("environment row")?;
    assert_eq!(
        (env.name.as_str(), env.app_id, env.requires_approval),
        ("production", app.id, true)
    );

    // The same name again is refused for good: failed with a reason naming it, no new row.
    let second = h.create_environment(&app, "production").await?;
    let op = h.wait_status(second, "failed").await?;
    assert_eq!(op.current_stage, "failed");
    let error = op.error.context("a failed operation says why")?;
    assert!(error.contains("\"production\" already exists"), "{error}");
    assert_eq!(h.stages(second).await?.len(), 2);
    let count = environment::Entity::find().all(&h.db).await?.len();
    assert_eq!(count, 1);
    h.record_history(
        &h.wait_status(first, "succeeded").await?,
        "environment_create_applied",
    )
    .await?;
    h.record_history(&op_after(&h, second).await?, "environment_create_refused")
        .await?;
    h.stop().await
}

#[tokio::test]
async fn environment_create_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    creates_and_refuses_duplicates("environment_create_on_sqlite", &sqlite_url(&dir)).await
}

#[tokio::test]
async fn environment_create_on_postgres() -> Result<()> {
    let url = rhone_testkit::postgres::database("environment_create_on_postgres").await?;
    creates_and_refuses_duplicates("environment_create_on_postgres", &url).await
}

/// A step whose activity keeps failing (the worker's DB role lost its INSERT grant) parks
/// the operation as needs_attention; once on-call restores the grant, `retry` finishes it.
#[tokio::test]
async fn exhausted_retries_need_attention_then_retry_succeeds() -> Result<()> {
    let test = "exhausted_retries_need_attention";
    let admin_url = rhone_testkit::postgres::database(test).await?;
    let admin = rhone_schema::connect(&admin_url).await?;
    rhone_schema::migrate(&admin).await?;
    let role = rhone_testkit::unique_name("worker");
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"),
        format!("REVOKE INSERT ON environments FROM {role}"),
    ] {
        admin
            .execute_unprepared(&sql)
            .await
            .with_context(|| sql.clone())?;
    }
    let worker_url = with_user(&admin_url, &role)?;
    let h = Harness::start(test, &worker_url, false).await?;
    let app = h.app().await?;

    let id = h.create_environment(&app, "staging").await?;
    let op = h.wait_status(id, "needs_attention").await?;
    assert_eq!(
        op.current_stage, "requested",
        "the stage does not move while it waits"
    );
    let error = op.error.context("needs_attention says why")?;
    assert!(
        error.contains("permission denied") || error.contains("query failed"),
        "{error}"
    );

    admin
        .execute_unprepared(&format!("GRANT INSERT ON environments TO {role}"))
        .await?;
    h.client
        .get_workflow_handle::<temporalio_common::UntypedWorkflow>(op.workflow_id.clone())
        .execute_update(
            DecisionUpdate(DecisionKind::Retry),
            Decision {
                actor: "oncall".into(),
                reason: Some("grant restored".into()),
                ..Decision::default()
            },
            Default::default(),
        )
        .await?;
    let op = h.wait_status(id, "succeeded").await?;
    assert_eq!(
        op.error, None,
        "the attention reason is cleared once resolved"
    );
    h.record_history(&op, "environment_create_attention_retry")
        .await?;
    assert_eq!(
        h.stages(id).await?,
        vec![("requested".into(), 1, 1), ("applied".into(), 2, 1)]
    );
    h.stop().await
}

async fn op_after(h: &Harness, id: OperationId) -> Result<operation::Model> {
    operation::Entity::find_by_id(id.0)
        .one(&h.db)
        .await?
        .context("operation row")
}

/// `postgres://admin@host/db` with another user.
fn with_user(url: &str, user: &str) -> Result<String> {
    let (scheme, rest) = url.split_once("://").context("URL has a scheme")?;
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    Ok(format!("{scheme}://{user}@{rest}"))
}
