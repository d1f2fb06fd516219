//! The world of a promotion activity test: a migrated control DB (SQLite file or a fresh
//! PostgreSQL database) with workspace `acme`, app `shop/web`, a `production` environment
//! (the one promotions move) and a `preview` environment of the same app; artifacts with
//! manifests made to order; deployments and operations as the API writes them; and, where
//! a test needs one, a real runner on loopback running small Python artifacts.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use rhone_activities::{PromotionActivities, PromotionConfig};
use rhone_core::{OperationId, OperationKind, workflow_id};
use rhone_manifest::{
    AppManifest, ArtifactManifest,
    artifact::{
        ARTIFACT_FORMAT_VERSION, AppSubset, ArtifactAssets, ArtifactStateSchema, MigrationFile,
        SourceFacts,
    },
    vango::{PersistedPrimitive, StateSchema},
};
use rhone_runner::{ArtifactStore, RunnerConfig, RunnerIdentity, RunnerState};
use rhone_schema::{
    entity::{
        allocation, artifact, deployment, environment, operation_stage, runtime_service_binding,
    },
    fixtures::{self, Tenancy},
    new_id, ops,
};
use rhone_workflows::activities::{MoveRouteInput, RouteMoved};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection};
use serde_json::json;
use temporalio_common::ActivityError;
use uuid::Uuid;

/// Runs each listed case (an `async fn(DatabaseConnection) -> Result<()>` of the calling
/// module) on both backends, as `<module>::sqlite::<case>` and `<module>::postgres::<case>`.
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let dir = tempfile::tempdir()?;
                    super::$case(crate::support::sqlite(&dir).await?).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let name = concat!(module_path!(), "::", stringify!($case));
                    super::$case(crate::support::postgres(name).await?).await
                }
            )+
        }
    };
}
pub(crate) use on_both_backends;

pub async fn sqlite(dir: &tempfile::TempDir) -> Result<DatabaseConnection> {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("rhone.db").display()
    );
    let db = rhone_schema::connect(&url).await?;
    rhone_schema::migrate(&db).await?;
    Ok(db)
}

pub async fn postgres(test: &str) -> Result<DatabaseConnection> {
    let url = rhone_testkit::postgres::database(test).await?;
    let db = rhone_schema::connect(&url).await?;
    rhone_schema::migrate(&db).await?;
    Ok(db)
}

/// The message of a non-retryable refusal; anything else fails the test.
#[track_caller]
pub fn refusal<T: std::fmt::Debug>(result: Result<T, ActivityError>) -> String {
    match result {
        Err(ActivityError::Application(f)) if f.is_non_retryable() => f.source_error().to_string(),
        other => panic!("expected a non-retryable refusal, got {other:?}"),
    }
}

/// What an artifact's manifest says, as far as promotion reads it.
#[derive(Clone, Default)]
pub struct Made {
    /// Migration file paths.
    pub migrations: Vec<&'static str>,
    /// Persisted primitives as `id:codec` words; `None` for no state schema.
    pub state: Option<&'static str>,
    /// `[services] required`.
    pub services: Vec<&'static str>,
    /// `[run] command`; a placeholder when the artifact never runs.
    pub command: Option<String>,
}

impl Made {
    pub fn manifest(&self) -> Result<ArtifactManifest> {
        let services: Vec<String> = self.services.iter().map(|s| format!("{s:?}")).collect();
        let toml = format!(
            "[build]\ncommand = \"true\"\n[run]\ncommand = {:?}\nhealth_path = \"/\"\nreadiness_timeout_secs = 20\n[services]\nrequired = [{}]\n",
            self.command.as_deref().unwrap_or("exit 1"),
            services.join(", ")
        );
        let app = AppManifest::parse(&toml).map_err(|e| anyhow::anyhow!("{e}"))?;
        let state_schema = self.state.map(|spec| ArtifactStateSchema {
            path: "vango_state_schema.json".into(),
            schema: StateSchema {
                schema_version: 1.into(),
                persisted_primitives: spec
                    .split_whitespace()
                    .map(|word| {
                        let (id, codec) = word.split_once(':').unwrap_or((word, "v1"));
                        PersistedPrimitive {
                            id: id.into(),
                            codec_fingerprint: codec.into(),
                            persisted: true,
                        }
                    })
                    .collect(),
                session_keys: Vec::new(),
                schema_hash: format!("sha256:{}", "a".repeat(64)),
            },
        });
        Ok(ArtifactManifest {
            format_version: ARTIFACT_FORMAT_VERSION,
            app: AppSubset::from(&app),
            assets: ArtifactAssets {
                dir: "public".into(),
                manifest: "manifest.json".into(),
                entries: Vec::new(),
            },
            state_schema,
            migrations: self
                .migrations
                .iter()
                .map(|p| MigrationFile {
                    path: (*p).into(),
                    sha256: "b".repeat(64),
                })
                .collect(),
            source: SourceFacts {
                repository: "test".into(),
                git_ref: "main".into(),
                commit_sha: "c".repeat(40),
                build_command: "true".into(),
            },
        })
    }
}

pub struct World {
    pub db: DatabaseConnection,
    pub acts: PromotionActivities,
    pub t: Tenancy,
    pub preview_env: environment::Model,
    /// The production host.
    pub route_key: String,
}

impl World {
    pub async fn new(db: DatabaseConnection) -> Result<World> {
        let t = fixtures::tenancy(&db, "acme", "production").await?;
        let preview_env = environment::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(t.workspace.id),
            app_id: Set(t.app.id),
            name: Set("preview".into()),
            kind: Set("preview".into()),
            requires_approval: Set(false),
            self_approval: Set(true),
            scale_to_zero: Set(false),
            wake_budget_ms: Set(environment::DEFAULT_WAKE_BUDGET_MS),
            sleep_after_ms: Set(environment::DEFAULT_SLEEP_AFTER_MS),
            wake_state: Set(environment::WAKE_STATE_HOT.into()),
            created_at: Set(Utc::now()),
        }
        .insert(&db)
        .await?;
        let acts = PromotionActivities {
            db: db.clone(),
            config: PromotionConfig::default(),
            domain: "rhone.localhost".into(),
            runners: rhone_activities::RunnerClient::new(
                reqwest::Client::new(),
                Some(rhone_testkit::runner_key()),
            ),
        };
        Ok(World {
            db,
            acts,
            t,
            preview_env,
            route_key: "web.shop.acme.rhone.localhost".into(),
        })
    }

    /// Records artifact `digest` with the manifest `made` describes.
    pub async fn artifact_as(&self, digest: &str, made: &Made) -> Result<String> {
        artifact::ActiveModel {
            digest: Set(digest.to_owned()),
            size_bytes: Set(1),
            manifest: Set(serde_json::to_value(made.manifest()?)?),
            store_uri: Set(format!("local://{digest}")),
            created_at: Set(Utc::now()),
        }
        .insert(&self.db)
        .await?;
        Ok(digest.to_owned())
    }

    /// Records artifact `fixtures::digest(n)`.
    pub async fn artifact(&self, n: u64, made: &Made) -> Result<String> {
        self.artifact_as(&fixtures::digest(n), made).await
    }

    /// An operation row of `kind`, as the API creates it.
    pub async fn operation(&self, kind: OperationKind) -> Result<OperationId> {
        let id = OperationId(new_id());
        ops::create_operation(
            &self.db,
            ops::NewOperation {
                id: id.0,
                workspace_id: Some(self.t.workspace.id),
                kind: kind.as_str(),
                actor: "system",
                target_type: "environment",
                target_id: &self.t.environment.id.to_string(),
                initial_stage: kind.initial_stage(),
                status: "running",
                workflow_id: &workflow_id(kind, id),
            },
        )
        .await?;
        Ok(id)
    }

    async fn deployment_row(
        &self,
        env: &environment::Model,
        digest: &str,
        operation_id: Option<Uuid>,
        promoted_from: Option<Uuid>,
    ) -> Result<deployment::Model> {
        let now = Utc::now();
        Ok(deployment::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(self.t.workspace.id),
            app_id: Set(self.t.app.id),
            environment_id: Set(env.id),
            artifact_digest: Set(Some(digest.to_owned())),
            source: Set(json!({ "repository": "test", "ref": "main" })),
            stage: Set("queued".into()),
            operation_id: Set(operation_id),
            promoted_from: Set(promoted_from),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&self.db)
        .await?)
    }

    /// A preview deployment of `digest` whose Deploy operation reached `preview_ready`
    /// when `reached`.
    pub async fn preview(&self, digest: &str, reached: bool) -> Result<deployment::Model> {
        let op = self.operation(OperationKind::Deploy).await?;
        if reached {
            operation_stage::ActiveModel {
                operation_id: Set(op.0),
                seq: Set(2),
                stage: Set("preview_ready".into()),
                attempt: Set(1),
                record_key: Set("preview_ready:1".into()),
                entered_at: Set(Utc::now()),
                evidence: Set(json!({})),
                error: Set(None),
                ..Default::default()
            }
            .insert(&self.db)
            .await?;
        }
        self.deployment_row(&self.preview_env, digest, Some(op.0), None)
            .await
    }

    /// A production deployment of `digest`, promoted from `from`.
    pub async fn production(
        &self,
        digest: &str,
        from: Option<&deployment::Model>,
    ) -> Result<deployment::Model> {
        self.deployment_row(&self.t.environment, digest, None, from.map(|d| d.id))
            .await
    }

    /// Sets the status of a runtime service binding of the production environment,
    /// binding it first if needed.
    pub async fn bind(&self, service: &str, status: &str) -> Result<()> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let existing = runtime_service_binding::Entity::find()
            .filter(runtime_service_binding::Column::EnvironmentId.eq(self.t.environment.id))
            .filter(runtime_service_binding::Column::Service.eq(service))
            .one(&self.db)
            .await?;
        if let Some(row) = existing {
            let mut row: runtime_service_binding::ActiveModel = row.into();
            row.status = Set(status.into());
            row.update(&self.db).await?;
            return Ok(());
        }
        runtime_service_binding::ActiveModel {
            id: Set(new_id()),
            environment_id: Set(self.t.environment.id),
            service: Set(service.into()),
            status: Set(status.into()),
            config: Set(json!({})),
            created_at: Set(Utc::now()),
            // Not probed: written as a provisioner would.
            ..Default::default()
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    pub fn move_input(
        &self,
        op: OperationId,
        dep: &deployment::Model,
        expected_epoch: i64,
    ) -> MoveRouteInput {
        MoveRouteInput {
            operation_id: op,
            route_key: self.route_key.clone(),
            environment_id: self.t.environment.id,
            deployment_id: dep.id,
            digest: dep.artifact_digest.clone().unwrap_or_default(),
            expected_epoch,
        }
    }

    /// Points the production route at `dep` (placed on the fixtures' runner first) from
    /// `expected_epoch`, as a promotion of its own.
    pub async fn make_live(
        &self,
        dep: &deployment::Model,
        expected_epoch: i64,
    ) -> Result<RouteMoved> {
        fixtures::allocation(&self.db, dep).await?;
        let op = self.operation(OperationKind::Promotion).await?;
        self.acts
            .route(&self.move_input(op, dep, expected_epoch))
            .await
            .or_fail()
    }
}

/// A runner on loopback (registered as the one ready runner) with a local artifact store
/// the test fills.
pub struct Runner {
    pub store: ArtifactStore,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), rhone_runner::RunnerError>>,
}

impl Runner {
    pub async fn start(db: &DatabaseConnection, dir: &Path) -> Result<Runner> {
        let store = ArtifactStore::local(dir.join("store"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let mut config = RunnerConfig::new(dir.join("runner"));
        config.drain_timeout = Duration::from_secs(2);
        config.call_token_sha256 = Some(rhone_testkit::runner_call_token_sha256("runner-1"));
        let state = RunnerState {
            identity: RunnerIdentity {
                name: "runner-1".into(),
                region: "local".into(),
                cell: "cell-1".into(),
            },
            store: store.clone(),
            config,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(rhone_runner::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        rhone_schema::topology::ensure_runner(db, "local", "cell-1", "runner-1", &address).await?;
        Ok(Runner {
            store,
            address,
            stop,
            task,
        })
    }

    /// Packs `files` into an artifact, stores it and records it with `command` as the
    /// process (health at `/`); its digest.
    pub async fn artifact(
        &self,
        world: &World,
        dir: &Path,
        files: &[(&str, &str)],
        command: &str,
    ) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in files {
            std::fs::write(dir.join(name), text)?;
        }
        let packed = rhone_store::archive::pack_dir(dir)?;
        let digest = self.store.put(&packed).await?;
        let made = Made {
            command: Some(command.to_owned()),
            ..Made::default()
        };
        world.artifact_as(digest.as_str(), &made).await
    }

    /// What the runner says about allocation `id`.
    pub async fn status(&self, id: Uuid) -> Result<rhone_runner::AllocationStatus> {
        Ok(reqwest::Client::new()
            .get(format!("{}/v1/allocations/{id}", self.address))
            .bearer_auth(rhone_testkit::runner_key().call_token("runner-1").expose())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(joined) => Ok(joined??),
            Err(_) => bail!("the runner did not stop in 30 s"),
        }
    }
}

/// The allocation row `id`.
pub async fn allocation_row(db: &DatabaseConnection, id: Uuid) -> Result<allocation::Model> {
    use sea_orm::EntityTrait;
    allocation::Entity::find_by_id(id)
        .one(db)
        .await?
        .with_context(|| format!("allocation {id}"))
}

/// `?` for an activity's result: its error (which is no `std::error::Error`) as an
/// `anyhow::Error` saying whether it would be retried.
pub trait OrFail<T> {
    fn or_fail(self) -> Result<T>;
}

impl<T> OrFail<T> for Result<T, ActivityError> {
    fn or_fail(self) -> Result<T> {
        self.map_err(|e| match e {
            ActivityError::Application(f) => anyhow::anyhow!(
                "activity failed ({}): {}",
                if f.is_non_retryable() {
                    "final"
                } else {
                    "retryable"
                },
                f.source_error()
            ),
            other => anyhow::anyhow!("activity failed: {other:?}"),
        })
    }
}
