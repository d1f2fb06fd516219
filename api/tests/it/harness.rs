//! The API under test: `serve` on `127.0.0.1:0` over a fresh SQLite file, the shared
//! Temporal dev server, and a GraphQL client speaking real HTTP.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rhone_activities::{
    Worker, WorkerConfig, WorkerHandle,
    temporal::{TemporalConfig, connect},
};
use rhone_api::ApiState;
use rhone_schema::entity::{
    api_token, app, audit_log, deployment, environment, grant, operation, operation_stage, project,
    runtime_service_binding, user, workspace,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The key the harness's API seals secrets under.
pub const SECRETS_KEY: &str = "8f1c2e3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A running API and what it runs on. Dropping it stops the server.
pub struct Api {
    pub url: String,
    pub db: DatabaseConnection,
    pub temporal: temporalio_client::Client,
    pub task_queue: String,
    /// The artifact store the harness's worker reads (a local store in the API's
    /// directory).
    pub store: rhone_store::ArtifactStore,
    /// Where the worker's migrations put their dumps.
    pub backups: std::path::PathBuf,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _dir: TempDir,
}

impl Api {
    /// An API for the test `name`, with its own database and task queue.
    pub async fn start(name: &str) -> Result<Api> {
        Api::start_with(name, temporal_client().await?).await
    }

    /// An API for the test `name` over a fresh PostgreSQL database of its own.
    pub async fn start_postgres(name: &str) -> Result<Api> {
        let url = rhone_testkit::postgres::database(&rhone_testkit::unique_name(name)).await?;
        Api::start_on(name, temporal_client().await?, Some(url)).await
    }

    /// An API whose Temporal client is `temporal`.
    pub async fn start_with(name: &str, temporal: temporalio_client::Client) -> Result<Api> {
        Api::start_on(name, temporal, None).await
    }

    /// An API over the database at `db_url`, else over a fresh SQLite file.
    async fn start_on(
        name: &str,
        temporal: temporalio_client::Client,
        db_url: Option<String>,
    ) -> Result<Api> {
        Api::start_full(name, temporal, db_url, true).await
    }

    /// An API as a platform operator runs it: deploys of local repositories refused.
    pub async fn start_without_local_repositories(name: &str) -> Result<Api> {
        Api::start_full(name, temporal_client().await?, None, false).await
    }

    async fn start_full(
        name: &str,
        temporal: temporalio_client::Client,
        db_url: Option<String>,
        local_repositories: bool,
    ) -> Result<Api> {
        let dir = tempfile::Builder::new().prefix("rhone-api-").tempdir()?;
        let url = db_url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("control.db").display()
            )
        });
        let db = rhone_schema::connect(&url).await?;
        rhone_schema::migrate(&db).await?;
        let task_queue = rhone_testkit::unique_name(name);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = ApiState {
            db: db.clone(),
            temporal: temporal.clone(),
            task_queue: task_queue.clone(),
            runner_key: None,
            fleet: rhone_core::fleet::FleetTimings::default(),
            local_repositories,
            secrets: Some(std::sync::Arc::new(rhone_schema::secrets::Keyring::new(
                SECRETS_KEY,
                &[],
            )?)),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = rhone_api::serve(listener, state, shutdown).await {
                eprintln!("API server failed: {e}");
            }
        });
        Ok(Api {
            url,
            db,
            temporal,
            task_queue,
            store: rhone_store::ArtifactStore::local(dir.path().join("artifacts")),
            backups: dir.path().join("backups"),
            http: reqwest::Client::new(),
            _stop: stop,
            _dir: dir,
        })
    }

    /// A caller with no token.
    pub fn anonymous(&self) -> Caller {
        Caller {
            http: self.http.clone(),
            url: format!("{}/graphql", self.url),
            token: None,
        }
    }

    pub fn caller(&self, token: &str) -> Caller {
        Caller {
            token: Some(token.to_owned()),
            ..self.anonymous()
        }
    }

    /// The first user, made by `bootstrap_admin`.
    pub async fn admin(&self) -> Result<Caller> {
        let token = rhone_api::bootstrap_admin(&self.db, "admin@example.com")
            .await?
            .context("bootstrap_admin on a fresh DB returns a token")?;
        Ok(self.caller(&token))
    }

    /// A user with a token and no grant. Made directly in the DB, as an operator would.
    pub async fn user(&self, email: &str) -> Result<Caller> {
        let existing = user::Entity::find()
            .filter(user::Column::Email.eq(email))
            .one(&self.db)
            .await?;
        let id = match existing {
            Some(u) => u.id,
            None => {
                user::ActiveModel {
                    id: Set(rhone_schema::new_id()),
                    email: Set(email.to_owned()),
                    display_name: Set(email.to_owned()),
                    created_at: Set(chrono::Utc::now()),
                    operator: Set(false),
                }
                .insert(&self.db)
                .await?
                .id
            }
        };
        let token = rhone_api::issue_token(&self.db, id, "test").await?;
        Ok(self.caller(&token))
    }

    /// Runs a worker on this API's task queue, with the API's secrets key, on its own
    /// thread, until dropped.
    pub fn worker(&self) -> Result<WorkerHandle> {
        let config = WorkerConfig {
            task_queue: self.task_queue.clone(),
            secrets: Some(std::sync::Arc::new(rhone_schema::secrets::Keyring::new(
                SECRETS_KEY,
                &[],
            )?)),
            deploy: rhone_activities::deploy::DeployConfig {
                store: self.store.clone(),
                ..Default::default()
            },
            migration: rhone_activities::database::MigrationConfig {
                lock_timeout: Duration::from_secs(2),
                backup_dir: self.backups.clone(),
            },
            ..WorkerConfig::default()
        };
        Ok(Worker::spawn(
            config,
            self.temporal.clone(),
            self.db.clone(),
        )?)
    }

    /// Row counts of every table a mutation may write.
    pub async fn counts(&self) -> Result<Value> {
        let db = &self.db;
        Ok(json!({
            "workspaces": workspace::Entity::find().count(db).await?,
            "projects": project::Entity::find().count(db).await?,
            "apps": app::Entity::find().count(db).await?,
            "environments": environment::Entity::find().count(db).await?,
            "deployments": deployment::Entity::find().count(db).await?,
            "users": user::Entity::find().count(db).await?,
            "grants": grant::Entity::find().count(db).await?,
            "api_tokens": api_token::Entity::find().count(db).await?,
            "operations": operation::Entity::find().count(db).await?,
            "operation_stages": operation_stage::Entity::find().count(db).await?,
            "audit_log": audit_log::Entity::find().count(db).await?,
            "runtime_service_bindings": runtime_service_binding::Entity::find().count(db).await?,
        }))
    }

    /// Polls `operation(id)` as `caller` until its status is final, within `deadline`.
    pub async fn wait_final(&self, caller: &Caller, id: &str, deadline: Duration) -> Result<Value> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let op = caller.data(OPERATION, json!({ "id": id })).await?["operation"].take();
            let status = op["status"].as_str().unwrap_or_default();
            if matches!(status, "SUCCEEDED" | "FAILED" | "ABORTED") {
                return Ok(op);
            }
            if start.elapsed() > deadline {
                bail!("operation {id} not final after {deadline:?}: {op}");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

pub const OPERATION: &str = "query($id: UUID!) { operation(id: $id) {
    id kind status currentStage actor targetType targetId workflowId error
    stages { stage seq attempt enteredAt evidence error } } }";

/// A client of the shared Temporal dev server.
pub async fn temporal_client() -> Result<temporalio_client::Client> {
    let server = rhone_testkit::temporal::server().await?;
    let config = TemporalConfig {
        address: Some(server.target),
        namespace: Some(server.namespace),
    };
    Ok(connect(&config).await?)
}

/// A GraphQL client with or without a bearer token.
#[derive(Clone)]
pub struct Caller {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Caller {
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The HTTP status and the whole GraphQL response.
    pub async fn post(&self, body: Value) -> Result<(u16, Value)> {
        let mut request = self.http.post(&self.url).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let json = serde_json::from_str(&text).with_context(|| format!("{status}: {text}"))?;
        Ok((status, json))
    }

    pub async fn gql(&self, query: &str, variables: Value) -> Result<Value> {
        Ok(self
            .post(json!({ "query": query, "variables": variables }))
            .await?
            .1)
    }

    /// The `data` of a response that must have no error.
    pub async fn data(&self, query: &str, variables: Value) -> Result<Value> {
        let response = self.gql(query, variables).await?;
        ensure!(
            response.get("errors").is_none(),
            "unexpected errors: {response}"
        );
        Ok(response["data"].clone())
    }

    /// The code and message of the one error a response must carry.
    pub async fn error(&self, query: &str, variables: Value) -> Result<(String, String)> {
        let response = self.gql(query, variables).await?;
        error_of(&response)
    }
}

/// The code and message of the first error of `response`.
pub fn error_of(response: &Value) -> Result<(String, String)> {
    let error = &response["errors"][0];
    let code = error["extensions"]["code"]
        .as_str()
        .ok_or_else(|| anyhow!("expected an error with a code: {response}"))?;
    let message = error["message"].as_str().unwrap_or_default();
    Ok((code.to_owned(), message.to_owned()))
}

/// Creates workspace, project and app `<prefix>-ws`, `<prefix>-proj`, `<prefix>-app` as
/// `caller`; returns their ids.
pub async fn tenancy(caller: &Caller, prefix: &str) -> Result<(String, String, String)> {
    let ws = caller
        .data(
            "mutation($n: String!) { createWorkspace(name: $n) { workspace { id } } }",
            json!({ "n": format!("{prefix}-ws") }),
        )
        .await?["createWorkspace"]["workspace"]["id"]
        .as_str()
        .context("workspace id")?
        .to_owned();
    let project = caller
        .data(
            "mutation($w: UUID!, $n: String!) { createProject(workspaceId: $w, name: $n) { project { id } } }",
            json!({ "w": ws, "n": format!("{prefix}-proj") }),
        )
        .await?["createProject"]["project"]["id"]
        .as_str()
        .context("project id")?
        .to_owned();
    let app = caller
        .data(
            "mutation($p: UUID!, $n: String!) { createApp(projectId: $p, name: $n) { app { id } } }",
            json!({ "p": project, "n": format!("{prefix}-app") }),
        )
        .await?["createApp"]["app"]["id"]
        .as_str()
        .context("app id")?
        .to_owned();
    Ok((ws, project, app))
}

/// An environment `name` of kind `kind` (`preview`, `staging`, `production`) of the app
/// `app_id`, made directly in the DB as the environment workflow would (scale to zero off,
/// route hot).
pub async fn environment_row(
    api: &Api,
    app_id: &str,
    name: &str,
    kind: &str,
) -> Result<environment::Model> {
    let app = app::Entity::find_by_id(app_id.parse::<uuid::Uuid>()?)
        .one(&api.db)
        .await?
        .context("app")?;
    Ok(environment::ActiveModel {
        id: Set(rhone_schema::new_id()),
        workspace_id: Set(app.workspace_id),
        app_id: Set(app.id),
        name: Set(name.to_owned()),
        kind: Set(kind.to_owned()),
        requires_approval: Set(kind == "production"),
        self_approval: Set(kind != "production"),
        scale_to_zero: Set(false),
        wake_budget_ms: Set(environment::DEFAULT_WAKE_BUDGET_MS),
        sleep_after_ms: Set(environment::DEFAULT_SLEEP_AFTER_MS),
        wake_state: Set(environment::WAKE_STATE_HOT.into()),
        created_at: Set(chrono::Utc::now()),
    }
    .insert(&api.db)
    .await?)
}

/// Grants `role` (`VIEWER`, `DEVELOPER` …) in workspace `ws` to `email` as `admin`, and
/// returns that user as a caller.
pub async fn member(
    api: &Api,
    admin: &Caller,
    ws: &str,
    email: &str,
    role: &str,
) -> Result<Caller> {
    admin
        .data(
            "mutation($w: UUID!, $e: String!, $r: Role!) { grantRole(workspaceId: $w, email: $e, role: $r) { grant { id } } }",
            json!({ "w": ws, "e": email, "r": role }),
        )
        .await?;
    api.user(email).await
}
