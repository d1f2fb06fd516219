//! The Database Migration workflow on a real PostgreSQL, a real Temporal and a real worker:
//! an expand migration goes `classified → dry_run → locked → applying → verified` and is
//! recorded once; each failure mode of the gallery is a tested outcome with nothing applied
//! before it is cleared: a destructive migration (blocked until approved or aborted), an old
//! app that still serves (blocked naming its artifact), a preview that would mutate
//! production (refused before any statement), a lock held by another session (failed after
//! `lock_timeout`); and a file that does not parse fails naming its line and column.

use std::time::Duration;

use anyhow::{Context, Result};
use rhone_manifest::{
    ARTIFACT_FORMAT_VERSION, AppManifest, ArtifactManifest,
    artifact::{AppSubset, ArtifactAssets, MigrationFile, SourceFacts},
};
use rhone_schema::{
    entity::{applied_migration, artifact, audit_log, deployment, environment, route_owner},
    fixtures, new_id,
    secrets::{self, Keyring},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::harness::{Api, Caller, OPERATION, SECRETS_KEY, environment_row, tenancy};

/// The advisory lock a Migration takes (`rhone_activities::database::migrate::LOCK_KEY`).
const LOCK_KEY: i64 = rhone_activities::database::migrate::LOCK_KEY;

struct World {
    api: Api,
    admin: Caller,
    app: String,
    preview: environment::Model,
    _worker: rhone_activities::WorkerHandle,
}

impl World {
    async fn start(name: &str) -> Result<World> {
        let api = Api::start_postgres(name).await?;
        let worker = api.worker()?;
        let admin = api.admin().await?;
        let url = rhone_testkit::postgres::admin_url().await?;
        admin
            .data(
                "mutation($u: String!) { addDatabaseProvider(name: \"main\", adminUrl: $u) { provider { name } } }",
                json!({ "u": url }),
            )
            .await?;
        let (_, _, app) = tenancy(&admin, "acme").await?;
        let preview = environment_row(&api, &app, "preview", "preview").await?;
        let w = World {
            api,
            admin,
            app,
            preview,
            _worker: worker,
        };
        w.bind(w.preview.id, None, false).await?;
        Ok(w)
    }

    async fn bind(&self, env: uuid::Uuid, database: Option<&str>, read_only: bool) -> Result<()> {
        let op = self
            .admin
            .data(
                "mutation($e: UUID!, $d: String, $r: Boolean!) { bindDatabase(environmentId: $e, provider: \"main\", database: $d, readOnly: $r) { operation { id } } }",
                json!({ "e": env, "d": database, "r": read_only }),
            )
            .await?["bindDatabase"]["operation"]["id"]
            .as_str()
            .context("operation")?
            .to_owned();
        let op = self.final_op(&op).await?;
        anyhow::ensure!(op["status"] == "SUCCEEDED", "binding: {op}");
        Ok(())
    }

    /// An artifact carrying `files` (path, SQL), put in the worker's store and recorded,
    /// and a deployment of it to `env`.
    async fn deployment(
        &self,
        env: &environment::Model,
        files: &[(&str, &str)],
    ) -> Result<(uuid::Uuid, String)> {
        let dir = tempfile::tempdir()?;
        let mut migrations = Vec::new();
        for (path, sql) in files {
            let at = dir.path().join(path);
            std::fs::create_dir_all(at.parent().context("parent")?)?;
            std::fs::write(&at, sql)?;
            migrations.push(MigrationFile {
                path: (*path).to_owned(),
                sha256: hex::encode(sha2::Sha256::digest(sql.as_bytes())),
            });
        }
        migrations.sort_by(|a, b| a.path.cmp(&b.path));
        let packed = rhone_store::archive::pack_dir(dir.path())?;
        let digest = self.api.store.put(&packed).await?.to_string();
        let app = AppManifest::parse(
            "[build]\ncommand = \"true\"\n[run]\ncommand = \"exit 1\"\nhealth_path = \"/\"\n[migrations]\ndir = \"migrations\"\n",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let manifest = ArtifactManifest {
            format_version: ARTIFACT_FORMAT_VERSION,
            app: AppSubset::from(&app),
            assets: ArtifactAssets {
                dir: "public".into(),
                manifest: "manifest.json".into(),
                entries: Vec::new(),
            },
            state_schema: None,
            migrations,
            source: SourceFacts {
                repository: "test".into(),
                git_ref: "main".into(),
                commit_sha: "c".repeat(40),
                build_command: "true".into(),
            },
        };
        if artifact::Entity::find_by_id(digest.clone())
            .one(&self.api.db)
            .await?
            .is_none()
        {
            artifact::ActiveModel {
                digest: Set(digest.clone()),
                size_bytes: Set(packed.size() as i64),
                manifest: Set(serde_json::to_value(&manifest)?),
                store_uri: Set(format!("local://{digest}")),
                created_at: Set(chrono::Utc::now()),
            }
            .insert(&self.api.db)
            .await?;
        }
        let now = chrono::Utc::now();
        let dep = deployment::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(env.workspace_id),
            app_id: Set(env.app_id),
            environment_id: Set(env.id),
            artifact_digest: Set(Some(digest.clone())),
            source: Set(json!({ "repository": "test", "ref": "main" })),
            stage: Set("preview_ready".into()),
            operation_id: Set(None),
            promoted_from: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&self.api.db)
        .await?;
        Ok((dep.id, digest))
    }

    /// Starts the Migration of `env` to deployment `dep`; its operation id.
    async fn migrate(&self, env: uuid::Uuid, dep: uuid::Uuid) -> Result<String> {
        let d = self
            .admin
            .data(
                "mutation($e: UUID!, $d: UUID!) { migrate(environmentId: $e, deploymentId: $d) { id kind currentStage } }",
                json!({ "e": env, "d": dep }),
            )
            .await?;
        assert_eq!(d["migrate"]["kind"], "MIGRATION");
        assert_eq!(d["migrate"]["currentStage"], "classified");
        Ok(d["migrate"]["id"].as_str().context("id")?.to_owned())
    }

    async fn final_op(&self, id: &str) -> Result<Value> {
        self.api
            .wait_final(&self.admin, id, Duration::from_secs(90))
            .await
    }

    /// Polls until the operation waits for a decision.
    async fn waiting(&self, id: &str) -> Result<Value> {
        self.waiting_after(id, 0).await
    }

    /// Polls until the operation waits for a decision with more than `seen` stage records.
    async fn waiting_after(&self, id: &str, seen: usize) -> Result<Value> {
        for _ in 0..600 {
            let op = self.admin.data(OPERATION, json!({ "id": id })).await?["operation"].take();
            if op["status"] == "WAITING" && stages(&op).len() > seen {
                return Ok(op);
            }
            anyhow::ensure!(
                !matches!(
                    op["status"].as_str(),
                    Some("SUCCEEDED" | "FAILED" | "ABORTED")
                ),
                "ended instead of waiting: {op}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("operation {id} never waited")
    }

    async fn decide(&self, id: &str, decision: &str) -> Result<()> {
        self.admin
            .data(
                "mutation($id: UUID!, $d: Decision!) { decideOperation(id: $id, decision: $d, reason: \"test\") { id } }",
                json!({ "id": id, "d": decision }),
            )
            .await?;
        Ok(())
    }

    /// A connection to `env`'s database as its own role.
    async fn database(&self, env: uuid::Uuid) -> Result<sea_orm::DatabaseConnection> {
        let keys = Keyring::new(SECRETS_KEY, &[])?;
        let url = secrets::open_all(&self.api.db, &keys, env)
            .await?
            .into_iter()
            .find(|(n, _)| n == "DATABASE_URL")
            .context("DATABASE_URL")?
            .1;
        Ok(sea_orm::Database::connect(url.expose()).await?)
    }
}

fn stages(op: &Value) -> Vec<&str> {
    op["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["stage"].as_str())
        .collect()
}

fn stage<'a>(op: &'a Value, name: &str) -> &'a Value {
    op["stages"]
        .as_array()
        .and_then(|s| s.iter().rev().find(|s| s["stage"] == name))
        .unwrap_or(&Value::Null)
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> Result<i64> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            sql.to_owned(),
        ))
        .await?
        .context("a row")?;
    Ok(row.try_get_by_index::<i64>(0)?)
}

const INIT: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, note text);\n\
CREATE INDEX orders_note ON orders (note);\n\
INSERT INTO orders VALUES (1, 'first');\n";

#[tokio::test]
async fn an_expand_migration_is_rehearsed_locked_applied_and_recorded_once() -> Result<()> {
    let w = World::start("migration_expand").await?;
    let (dep, _) = w
        .deployment(&w.preview, &[("migrations/0001_init.sql", INIT)])
        .await?;
    let id = w.migrate(w.preview.id, dep).await?;
    let op = w.final_op(&id).await?;
    assert_eq!(op["status"], "SUCCEEDED", "{op}");
    assert_eq!(
        stages(&op),
        ["classified", "dry_run", "locked", "applying", "verified"]
    );
    let dry = &stage(&op, "dry_run")["evidence"];
    assert_eq!(dry["pending"], json!(["migrations/0001_init.sql"]));
    assert_eq!(dry["classification"][0]["class"], "expand");
    assert_eq!(
        dry["classification"][0]["statements"][1]["rule"],
        "new-table"
    );
    let locked = &stage(&op, "locked")["evidence"];
    assert_eq!(locked["lock"]["lock_key"], LOCK_KEY);
    assert_eq!(locked["dry_run"]["backup"]["posture"], "dump");
    let dump = locked["dry_run"]["backup"]["location"]
        .as_str()
        .context("dump")?;
    assert!(std::fs::metadata(dump)?.len() > 0, "the dump is on disk");
    assert_eq!(
        locked["dry_run"]["scratch"]["files"][0]["path"],
        "migrations/0001_init.sql"
    );
    let verified = &stage(&op, "verified")["evidence"];
    assert_eq!(verified["schema"]["tables"], json!(["orders"]));
    assert_eq!(
        verified["recorded_now"],
        json!(["migrations/0001_init.sql"])
    );
    let db = w.database(w.preview.id).await?;
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await?, 1);

    // Again: nothing pending, nothing applied twice, recorded once.
    let again = w.final_op(&w.migrate(w.preview.id, dep).await?).await?;
    assert_eq!(again["status"], "SUCCEEDED", "{again}");
    assert_eq!(stage(&again, "dry_run")["evidence"]["pending"], json!([]));
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await?, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM rhone.applied_migrations").await?,
        1
    );
    assert_eq!(
        applied_migration::Entity::find()
            .all(&w.api.db)
            .await?
            .len(),
        1
    );
    db.close().await?;
    Ok(())
}

const DROP_NOTE: &str = "ALTER TABLE orders DROP COLUMN note;\n";
const DROP_NOTE_DOWN: &str = "ALTER TABLE orders ADD COLUMN note text;\n";

#[tokio::test]
async fn a_destructive_migration_waits_for_an_approval_naming_each_statement() -> Result<()> {
    let w = World::start("migration_destructive").await?;
    let (first, _) = w
        .deployment(&w.preview, &[("migrations/0001_init.sql", INIT)])
        .await?;
    w.final_op(&w.migrate(w.preview.id, first).await?).await?;
    let db = w.database(w.preview.id).await?;
    let notes = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'";

    // Aborted: nothing applied.
    let (dropping, _) = w
        .deployment(
            &w.preview,
            &[
                ("migrations/0001_init.sql", INIT),
                ("migrations/0002_drop_note.sql", DROP_NOTE),
                ("migrations/0002_drop_note.down.sql", DROP_NOTE_DOWN),
            ],
        )
        .await?;
    let id = w.migrate(w.preview.id, dropping).await?;
    let blocked = w.waiting(&id).await?;
    assert_eq!(blocked["currentStage"], "blocked");
    let error = blocked["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("destructive migration")
            && error.contains("migrations/0002_drop_note.sql:1:1 drop-column"),
        "{error}"
    );
    let evidence = &stage(&blocked, "blocked")["evidence"];
    assert_eq!(evidence["gate"], "expand_contract_safe");
    assert_eq!(
        evidence["classification"][0]["rollback"],
        "down: migrations/0002_drop_note.down.sql"
    );
    assert_eq!(
        count(&db, notes).await?,
        1,
        "nothing applied before the approval"
    );
    w.decide(&id, "ABORT").await?;
    let aborted = w.final_op(&id).await?;
    assert_eq!(aborted["status"], "ABORTED", "{aborted}");
    assert_eq!(count(&db, notes).await?, 1);

    // Approved: applied.
    let id = w.migrate(w.preview.id, dropping).await?;
    w.waiting(&id).await?;
    w.decide(&id, "APPROVE").await?;
    let done = w.final_op(&id).await?;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(
        stages(&done),
        [
            "classified",
            "blocked",
            "classified",
            "dry_run",
            "locked",
            "applying",
            "verified"
        ]
    );
    assert_eq!(
        stage(&done, "dry_run")["evidence"]["approved_by"],
        blocked["actor"]
    );
    // The API's audit row is the approval's only one: the workflow found it (marked it
    // taken, in the stage it waited in) and so kept the approver's actor.
    let approvals: Vec<_> = audit_log::Entity::find()
        .filter(audit_log::Column::OperationId.eq(id.parse::<uuid::Uuid>()?))
        .filter(audit_log::Column::Action.eq("operation.approve"))
        .all(&w.api.db)
        .await?
        .into_iter()
        .map(|r| {
            (
                r.actor,
                r.detail["stage"].clone(),
                r.detail["taken_by"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        approvals,
        [(
            blocked["actor"].as_str().unwrap_or_default().to_owned(),
            json!("blocked"),
            true
        )]
    );
    assert_eq!(count(&db, notes).await?, 0);

    // A contract file with neither a down migration nor a declaration fails at once.
    let (bare, _) = w
        .deployment(
            &w.preview,
            &[
                ("migrations/0001_init.sql", INIT),
                ("migrations/0002_drop_note.sql", DROP_NOTE),
                ("migrations/0002_drop_note.down.sql", DROP_NOTE_DOWN),
                ("migrations/0003_drop.sql", "DROP TABLE orders;\n"),
            ],
        )
        .await?;
    let failed = w.final_op(&w.migrate(w.preview.id, bare).await?).await?;
    assert_eq!(failed["status"], "FAILED");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("migrations/0003_drop.sql is a contract migration without a rollback plan"),
        "{error}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM orders").await?, 1);
    db.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_contract_migration_waits_while_an_old_artifact_serves() -> Result<()> {
    let w = World::start("migration_old_app").await?;
    let (first, old_digest) = w
        .deployment(&w.preview, &[("migrations/0001_init.sql", INIT)])
        .await?;
    w.final_op(&w.migrate(w.preview.id, first).await?).await?;
    let (cell, _) = fixtures::local_cell(&w.api.db).await?;
    let owner = route_owner::ActiveModel {
        route_key: Set("preview.web.shop.acme.rhone.localhost".into()),
        environment_id: Set(w.preview.id),
        deployment_id: Set(first),
        artifact_digest: Set(old_digest.clone()),
        region_id: Set(cell.region_id),
        cell_id: Set(cell.id),
        epoch: Set(1),
        operation_id: Set(None),
        instances: Set(1),
        updated_at: Set(chrono::Utc::now()),
    }
    .insert(&w.api.db)
    .await?;
    let (next, next_digest) = w
        .deployment(
            &w.preview,
            &[
                ("migrations/0001_init.sql", INIT),
                ("migrations/0002_drop_note.sql", DROP_NOTE),
                ("migrations/0002_drop_note.down.sql", DROP_NOTE_DOWN),
            ],
        )
        .await?;
    let id = w.migrate(w.preview.id, next).await?;
    let blocked = w.waiting(&id).await?;
    let error = blocked["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("old app incompatible") && error.contains(&old_digest),
        "{error}"
    );
    let evidence = &stage(&blocked, "blocked")["evidence"];
    assert_eq!(evidence["gate"], "old_artifact_compatibility");
    assert_eq!(evidence["serving"][0]["digest"], old_digest);
    assert_eq!(
        evidence["serving"][0]["lacks"],
        json!(["migrations/0002_drop_note.sql"])
    );
    // An approval cannot clear it: only a retry once the route has moved, or an abort.
    let (code, message) = w
        .admin
        .error(
            "mutation($id: UUID!) { decideOperation(id: $id, decision: APPROVE) { id } }",
            json!({ "id": id }),
        )
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");

    let mut moved: route_owner::ActiveModel = owner.into();
    moved.deployment_id = Set(next);
    moved.artifact_digest = Set(next_digest);
    moved.update(&w.api.db).await?;
    w.decide(&id, "RETRY").await?;
    // Now only the destructive gate stands: approve it.
    let again = w.waiting_after(&id, stages(&blocked).len()).await?;
    assert_eq!(
        stage(&again, "blocked")["evidence"]["gate"],
        "expand_contract_safe"
    );
    w.decide(&id, "APPROVE").await?;
    let done = w.final_op(&id).await?;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(
        stages(&done),
        [
            "classified",
            "blocked",
            "classified",
            "blocked",
            "classified",
            "dry_run",
            "locked",
            "applying",
            "verified"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_preview_reading_production_is_refused_before_any_statement() -> Result<()> {
    let w = World::start("migration_prod_guard").await?;
    let production = environment_row(&w.api, &w.app, "production", "production").await?;
    w.bind(production.id, None, false).await?;
    let prod_db = rhone_schema::providers::database_name(production.id);
    let review = environment_row(&w.api, &w.app, "review", "preview").await?;
    w.bind(review.id, Some(&prod_db), true).await?;
    let (dep, _) = w
        .deployment(&review, &[("migrations/0001_init.sql", INIT)])
        .await?;
    let op = w.final_op(&w.migrate(review.id, dep).await?).await?;
    assert_eq!(op["status"], "FAILED");
    assert_eq!(stages(&op), ["classified", "failed"]);
    let error = op["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("preview mutates production") && error.contains(&prod_db),
        "{error}"
    );
    let prod = w.database(production.id).await?;
    assert_eq!(
        count(&prod, "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')").await?,
        0,
        "nothing ran on production's database"
    );
    prod.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_held_lock_fails_the_migration_after_lock_timeout_with_nothing_applied() -> Result<()> {
    let w = World::start("migration_lock").await?;
    let holder = w.database(w.preview.id).await?;
    holder
        .execute_unprepared(&format!("SELECT pg_advisory_lock({LOCK_KEY})"))
        .await?;
    let (dep, _) = w
        .deployment(&w.preview, &[("migrations/0001_init.sql", INIT)])
        .await?;
    let op = w.final_op(&w.migrate(w.preview.id, dep).await?).await?;
    assert_eq!(op["status"], "FAILED", "{op}");
    assert_eq!(stages(&op), ["classified", "dry_run", "failed"]);
    let error = op["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("manual lock timeout") && error.contains("2000 ms"),
        "{error}"
    );
    let evidence = &stage(&op, "failed")["evidence"]["lock"];
    assert_eq!(evidence["lock_timeout_ms"], 2000);
    assert!(
        evidence["waited_ms"].as_u64().is_some_and(|ms| ms >= 2000),
        "{evidence}"
    );
    assert!(
        evidence["holders"][0]["pid"].as_i64().is_some(),
        "the holder is named: {evidence}"
    );
    assert_eq!(
        count(
            &holder,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'orders'"
        )
        .await?,
        0,
        "nothing applied"
    );
    holder.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_file_that_does_not_parse_fails_classification_naming_file_line_and_column() -> Result<()>
{
    let w = World::start("migration_parse").await?;
    let (dep, _) = w
        .deployment(
            &w.preview,
            &[(
                "migrations/0001_bad.sql",
                "-- orders\nCREATE TABLE orders (id bigint);\nALTER TABLE orders ADD COLUMN;\n",
            )],
        )
        .await?;
    let op = w.final_op(&w.migrate(w.preview.id, dep).await?).await?;
    assert_eq!(op["status"], "FAILED");
    assert_eq!(stages(&op), ["classified", "failed"]);
    let error = op["error"].as_str().unwrap_or_default();
    assert!(error.contains("migrations/0001_bad.sql:3:"), "{error}");
    Ok(())
}
