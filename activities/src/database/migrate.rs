//! The Migration's activities: plan (classify what is pending, check the gates' facts),
//! dry run (a scratch copy of the schema, and the backup), apply (under the advisory lock,
//! in a transaction), verify (the schema read back, each file recorded once).
//!
//! What is applied is tracked inside the database itself, in `rhone.applied_migrations`,
//! written in the same transaction as the files: a retried or concurrent apply finds what
//! an earlier one committed and skips it. The control DB's `applied_migrations` is the
//! copy the gates read, written by verify.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rhone_core::secret::Secret;
use rhone_manifest::ArtifactManifest;
use rhone_migrate::Class;
use rhone_schema::{
    SchemaError,
    entity::{
        applied_migration, artifact, database_provider,
        environment::{self, KIND_PRODUCTION},
        provider_binding::{self, ACCESS_READ_ONLY, ACCESS_READ_WRITE, STATUS_READY},
        route_owner,
    },
    new_id, providers,
    secrets::{self, Keyring},
};
use rhone_store::{ArtifactStore, Digest, archive};
use rhone_workflows::activities::{
    ApplyReport, ContractStatement, DryRunReport, MigrationPhase, MigrationPlan,
    MigrationStepInput, ServingArtifact, VerifyReport,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    Statement, TransactionTrait, sea_query::OnConflict,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{DatabaseError, connect, statement_error};

/// The advisory lock every Migration of a database takes (`pg_advisory_lock`, one bigint:
/// "rhone" in ASCII). Tools that change a schema beside Rhone take it too.
pub const LOCK_KEY: i64 = 0x72_686f_6e65;

/// A first line that declares a migration irreversible (it has no down migration).
pub const IRREVERSIBLE: &str = "-- rhone:irreversible";

/// How Migrations run on this worker.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// How long a Migration waits for the advisory lock, and each statement for the locks
    /// it needs, before it gives up with nothing applied. Default 10 s.
    pub lock_timeout: Duration,
    /// Where dumps taken before applying go (`<dir>/<environment>/<operation>.dump`), for
    /// providers without point-in-time recovery. Default: `rhone-backups` under the system
    /// temporary directory.
    pub backup_dir: PathBuf,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(10),
            backup_dir: std::env::temp_dir().join("rhone-backups"),
        }
    }
}

impl MigrationConfig {
    /// Dumps kept under `<data_dir>/backups`.
    pub fn under(data_dir: &Path) -> Self {
        Self {
            backup_dir: data_dir.join("backups"),
            ..Self::default()
        }
    }
}

/// The database a Migration runs on, and how to reach it.
struct Target {
    env: environment::Model,
    binding: provider_binding::Model,
    provider: database_provider::Model,
    /// The environment's `DATABASE_URL`: its owner role.
    url: Secret,
    admin: Secret,
}

impl Target {
    fn who(&self) -> String {
        format!(
            "database {} on {} ({})",
            self.binding.resource, self.provider.name, self.provider.host
        )
    }
}

fn schema(e: impl Into<SchemaError>) -> DatabaseError {
    DatabaseError::Schema(e.into())
}

/// The environment's own database; refused, before any statement, where the environment
/// only reads a database (a preview reading production's) or has none.
async fn target(
    db: &DatabaseConnection,
    keys: &Keyring,
    environment_id: uuid::Uuid,
) -> Result<Target, DatabaseError> {
    let env = environment::Entity::find_by_id(environment_id)
        .one(db)
        .await
        .map_err(schema)?
        .ok_or_else(|| DatabaseError::Refused(format!("environment {environment_id} is gone")))?;
    let bindings = providers::bindings_of(db, env.id).await?;
    let Some(binding) = bindings
        .iter()
        .find(|b| b.access == ACCESS_READ_WRITE)
        .cloned()
    else {
        if let Some(read) = bindings.iter().find(|b| b.access == ACCESS_READ_ONLY) {
            let owner = owner_of(db, &read.provider, &read.resource).await?;
            let whose = owner.map_or("another environment's".to_owned(), |o| {
                format!("{} environment {:?}'s", o.kind, o.name)
            });
            let label = if owner_is_production(db, &read.provider, &read.resource).await? {
                "preview mutates production: "
            } else {
                ""
            };
            return Err(DatabaseError::Refused(format!(
                "{label}environment {:?} only reads database {} on {} ({whose}, read-only); a migration runs only on a database the environment owns, and nothing was run",
                env.name, read.resource, read.provider
            )));
        }
        return Err(DatabaseError::Refused(format!(
            "environment {:?} has no database to migrate: bind one with `rhone databases bind`",
            env.name
        )));
    };
    if binding.status != STATUS_READY {
        return Err(DatabaseError::Refused(format!(
            "the database binding of environment {:?} is {}, not ready{}",
            env.name,
            binding.status,
            binding
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    if env.kind != KIND_PRODUCTION
        && owner_is_production(db, &binding.provider, &binding.resource).await?
    {
        return Err(DatabaseError::Refused(format!(
            "preview mutates production: database {} on {} is written by a production environment; nothing was run",
            binding.resource, binding.provider
        )));
    }
    let provider = providers::named(db, &binding.provider).await?;
    let admin = keys
        .open_provider(&provider)
        .map_err(|e| DatabaseError::Refused(e.to_string()))?;
    let url = secrets::open_all(db, keys, env.id)
        .await
        .map_err(|e| DatabaseError::Refused(e.to_string()))?
        .into_iter()
        .find(|(name, _)| name == "DATABASE_URL")
        .map(|(_, v)| v)
        .ok_or_else(|| {
            DatabaseError::Refused(format!(
                "environment {:?} has no DATABASE_URL: bind its database again (`rhone databases bind`)",
                env.name
            ))
        })?;
    let names_it = url::Url::parse(url.expose()).is_ok_and(|u| {
        u.path().trim_start_matches('/') == binding.resource
            && u.host_str().is_some_and(|h| provider.host.starts_with(h))
    });
    if !names_it {
        return Err(DatabaseError::Refused(format!(
            "environment {:?}'s DATABASE_URL does not name its bound database {} on {}: bind it again (`rhone databases bind`) before migrating",
            env.name, binding.resource, binding.provider
        )));
    }
    Ok(Target {
        env,
        binding,
        provider,
        url,
        admin,
    })
}

async fn owner_of(
    db: &DatabaseConnection,
    provider: &str,
    database: &str,
) -> Result<Option<environment::Model>, DatabaseError> {
    Ok(provider_binding::Entity::find()
        .filter(provider_binding::Column::Provider.eq(provider))
        .filter(provider_binding::Column::Resource.eq(database))
        .filter(provider_binding::Column::Access.eq(ACCESS_READ_WRITE))
        .find_also_related(environment::Entity)
        .all(db)
        .await
        .map_err(schema)?
        .into_iter()
        .find_map(|(_, env)| env))
}

async fn owner_is_production(
    db: &DatabaseConnection,
    provider: &str,
    database: &str,
) -> Result<bool, DatabaseError> {
    Ok(owner_of(db, provider, database)
        .await?
        .is_some_and(|e| e.kind == KIND_PRODUCTION))
}

/// A migration file of the artifact.
#[derive(Debug, Clone)]
struct File {
    path: String,
    sha256: String,
    sql: String,
}

impl File {
    /// `expand` or `contract`, as recorded; a file that does not classify counts as a
    /// contract.
    fn class(&self) -> &'static str {
        match rhone_migrate::classify(&self.path, &self.sql).map(|c| c.class()) {
            Ok(Class::Expand) => "expand",
            _ => "contract",
        }
    }

    fn irreversible(&self) -> bool {
        self.sql
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .is_some_and(|l| l.starts_with(IRREVERSIBLE))
    }
}

/// The down migration of `path` (`0002_x.sql` → `0002_x.down.sql`).
fn down_path(path: &str) -> String {
    format!("{}.down.sql", path.strip_suffix(".sql").unwrap_or(path))
}

/// The artifact's forward migrations in order, and its down migrations by path.
async fn artifact_files(
    db: &DatabaseConnection,
    store: &ArtifactStore,
    digest: &str,
) -> Result<(Vec<File>, BTreeMap<String, File>), DatabaseError> {
    let manifest = manifest_of(db, digest).await?;
    let parsed = Digest::parse(digest)
        .map_err(|e| DatabaseError::Refused(format!("artifact digest: {e}")))?;
    let bytes = store
        .get(&parsed)
        .await
        .map_err(|e| DatabaseError::Unreachable(format!("reading artifact {digest}: {e}")))?;
    let files = archive::files(&bytes)
        .map_err(|e| DatabaseError::Refused(format!("artifact {digest}: {e}")))?;
    let (mut forward, mut down) = (Vec::new(), BTreeMap::new());
    for m in manifest
        .migrations
        .iter()
        .filter(|m| m.path.ends_with(".sql"))
    {
        let bytes = files.get(&m.path).ok_or_else(|| {
            DatabaseError::Refused(format!("artifact {digest} lacks its migration {}", m.path))
        })?;
        if hex::encode(Sha256::digest(bytes)) != m.sha256 {
            return Err(DatabaseError::Refused(format!(
                "migration {} of artifact {digest} does not match its recorded sha256",
                m.path
            )));
        }
        let sql = String::from_utf8(bytes.to_vec()).map_err(|_| {
            DatabaseError::Refused(format!("migration {} is not UTF-8 text", m.path))
        })?;
        let file = File {
            path: m.path.clone(),
            sha256: m.sha256.clone(),
            sql,
        };
        if m.path.ends_with(".down.sql") {
            down.insert(m.path.clone(), file);
        } else {
            forward.push(file);
        }
    }
    Ok((forward, down))
}

async fn manifest_of(
    db: &DatabaseConnection,
    digest: &str,
) -> Result<ArtifactManifest, DatabaseError> {
    let row = artifact::Entity::find_by_id(digest.to_owned())
        .one(db)
        .await
        .map_err(schema)?
        .ok_or_else(|| DatabaseError::Refused(format!("artifact {digest} is not recorded")))?;
    ArtifactManifest::parse(&row.manifest.to_string())
        .map_err(|e| DatabaseError::Refused(format!("artifact {digest}: {e}")))
}

/// `path → sha256` of what `rhone.applied_migrations` says was applied.
async fn applied_in<C: ConnectionTrait>(
    conn: &C,
    hidden: &[&Secret],
) -> Result<BTreeMap<String, String>, DatabaseError> {
    let exists = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT to_regclass('rhone.applied_migrations') IS NOT NULL AS present",
        ))
        .await
        .map_err(|e| statement_error(e, "reading rhone.applied_migrations", hidden))?
        .and_then(|r| r.try_get::<bool>("", "present").ok())
        .unwrap_or(false);
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT path, sha256 FROM rhone.applied_migrations",
        ))
        .await
        .map_err(|e| statement_error(e, "reading rhone.applied_migrations", hidden))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.try_get("", "path").ok()?, r.try_get("", "sha256").ok()?)))
        .collect())
}

/// The files of `forward` not applied yet; an applied file whose content changed is
/// refused (an applied migration never changes).
fn pending(
    forward: &[File],
    applied: &BTreeMap<String, String>,
) -> Result<Vec<File>, DatabaseError> {
    let mut out = Vec::new();
    for f in forward {
        match applied.get(&f.path) {
            Some(sha) if *sha == f.sha256 => {}
            Some(sha) => {
                return Err(DatabaseError::Refused(format!(
                    "{} was applied with sha256 {sha} and the artifact's differs ({}): an applied migration never changes; add a new file",
                    f.path, f.sha256
                )));
            }
            None => out.push(f.clone()),
        }
    }
    Ok(out)
}

/// `todo` (pending files, in order) split into what `phase` applies and what it leaves
/// for after the route moves: before the route, the files before the first contract or
/// irreversible one.
fn split(phase: MigrationPhase, mut todo: Vec<File>) -> (Vec<File>, Vec<File>) {
    if phase != MigrationPhase::BeforeRoute {
        return (todo, Vec::new());
    }
    let first = todo
        .iter()
        .position(|f| f.class() == "contract" || f.irreversible())
        .unwrap_or(todo.len());
    let deferred = todo.split_off(first);
    (todo, deferred)
}

/// The target, the artifact's files, and what of them is pending in this phase and left
/// for after it.
async fn load(
    db: &DatabaseConnection,
    keys: Option<&Keyring>,
    store: &ArtifactStore,
    input: &MigrationStepInput,
) -> Result<
    (
        Target,
        Vec<File>,
        BTreeMap<String, File>,
        Vec<File>,
        Vec<File>,
    ),
    DatabaseError,
> {
    let keys = super::keys(keys)?;
    let target = target(db, keys, input.environment_id).await?;
    let (forward, down) = artifact_files(db, store, &input.digest).await?;
    let conn = connect(&target.url, &target.who()).await?;
    let applied = applied_in(&conn, &[&target.url]).await;
    conn.close().await.ok();
    let (todo, deferred) = split(input.phase, pending(&forward, &applied?)?);
    Ok((target, forward, down, todo, deferred))
}

pub(super) async fn plan(
    db: &DatabaseConnection,
    keys: Option<&Keyring>,
    store: &ArtifactStore,
    input: &MigrationStepInput,
) -> Result<MigrationPlan, DatabaseError> {
    let (target, _, down, todo, deferred) = load(db, keys, store, input).await?;
    let sources: Vec<(String, String)> = todo
        .iter()
        .map(|f| (f.path.clone(), f.sql.clone()))
        .collect();
    let classified = rhone_migrate::classify_all(&sources)
        .map_err(|e| DatabaseError::Refused(format!("classification failed: {e}")))?;
    let mut classification = Vec::new();
    let mut contract = Vec::new();
    let mut irreversible = Vec::new();
    let mut contract_files = Vec::new();
    for (file, c) in todo.iter().zip(&classified) {
        let rollback = if c.class() == Class::Expand {
            "not needed (expand)".to_owned()
        } else if down.contains_key(&down_path(&file.path)) {
            format!("down: {}", down_path(&file.path))
        } else if file.irreversible() {
            irreversible.push(file.path.clone());
            "irreversible (declared)".to_owned()
        } else {
            return Err(DatabaseError::Refused(format!(
                "{} is a contract migration without a rollback plan: add {} or declare it irreversible with a first line `{IRREVERSIBLE}`",
                file.path,
                down_path(&file.path)
            )));
        };
        if c.class() == Class::Contract {
            contract_files.push(file.path.clone());
        }
        contract.extend(c.contract().map(|s| ContractStatement {
            file: file.path.clone(),
            line: s.line,
            column: s.column,
            rule: s.rule.to_owned(),
            reason: s.reason.clone(),
            sql: s.sql.clone(),
        }));
        classification.push(json!({
            "path": file.path,
            "sha256": file.sha256,
            "class": c.class(),
            "rollback": rollback,
            "statements": c.statements,
        }));
    }
    let incompatible = if contract_files.is_empty() {
        Vec::new()
    } else {
        serving_without(db, target.env.id, &contract_files).await?
    };
    Ok(MigrationPlan {
        provider: target.provider.name,
        database: target.binding.resource,
        pending: todo.into_iter().map(|f| f.path).collect(),
        classification: Value::Array(classification),
        contract,
        irreversible,
        incompatible,
        point_in_time_recovery: target.provider.point_in_time_recovery,
        deferred: deferred.into_iter().map(|f| f.path).collect(),
    })
}

/// The artifacts serving routes of the environment that lack some of `contract_files`.
async fn serving_without(
    db: &DatabaseConnection,
    environment_id: uuid::Uuid,
    contract_files: &[String],
) -> Result<Vec<ServingArtifact>, DatabaseError> {
    let owners = route_owner::Entity::find()
        .filter(route_owner::Column::EnvironmentId.eq(environment_id))
        .all(db)
        .await
        .map_err(schema)?;
    let mut out = Vec::new();
    for owner in owners {
        let carried = manifest_of(db, &owner.artifact_digest).await?;
        let lacks: Vec<String> = contract_files
            .iter()
            .filter(|f| !carried.migrations.iter().any(|m| &m.path == *f))
            .cloned()
            .collect();
        if !lacks.is_empty() {
            out.push(ServingArtifact {
                route_key: owner.route_key,
                deployment_id: owner.deployment_id,
                digest: owner.artifact_digest,
                lacks,
            });
        }
    }
    Ok(out)
}

/// `name` from the newest `/usr/lib/postgresql/N/bin`, else from `PATH`.
fn pg_tool(name: &str) -> Result<PathBuf, DatabaseError> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let tool = e.path().join("bin").join(name);
            tool.is_file().then_some((version, tool))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, t)| t);
    newest
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        })
        .ok_or_else(|| {
            DatabaseError::Refused(format!(
                "{name} not found on the worker's host: install the PostgreSQL client (postgresql-client)"
            ))
        })
}

/// A PostgreSQL client tool for `url`: the URL without its password on the command line,
/// the password in `PGPASSWORD` (not visible to other users of the host).
fn pg_command(tool: &Path, url: &Secret) -> Result<tokio::process::Command, DatabaseError> {
    let mut parsed = url::Url::parse(url.expose())
        .map_err(|e| DatabaseError::Refused(format!("a database URL is not a URL ({e})")))?;
    let password = parsed.password().map(percent_decode);
    let _ = parsed.set_password(None);
    let mut command = tokio::process::Command::new(tool);
    command
        .arg("--dbname")
        .arg(parsed.as_str())
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    if let Some(p) = password {
        command.env("PGPASSWORD", p);
    }
    Ok(command)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

/// Runs `command`, feeding it `input`; its stdout, or the refusal naming `doing` with its
/// stderr (scrubbed).
async fn run_tool(
    mut command: tokio::process::Command,
    input: Option<Vec<u8>>,
    doing: &str,
    hidden: &[&Secret],
) -> Result<Vec<u8>, DatabaseError> {
    use tokio::io::AsyncWriteExt;
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if input.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    let mut child = command
        .spawn()
        .map_err(|e| DatabaseError::Refused(format!("{doing}: {e}")))?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(&bytes)
            .await
            .map_err(|e| DatabaseError::Refused(format!("{doing}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| DatabaseError::Refused(format!("{doing}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(DatabaseError::Refused(format!(
            "{doing}: {}",
            providers::scrub(stderr.trim(), hidden)
        )));
    }
    Ok(out.stdout)
}

pub(super) async fn dry_run(
    db: &DatabaseConnection,
    keys: Option<&Keyring>,
    store: &ArtifactStore,
    config: &MigrationConfig,
    input: &MigrationStepInput,
) -> Result<DryRunReport, DatabaseError> {
    let (target, _, _, todo, _) = load(db, keys, store, input).await?;
    let hidden = [&target.url, &target.admin];
    let backup = if target.provider.point_in_time_recovery {
        json!({ "posture": "point_in_time_recovery", "provider": target.provider.name })
    } else {
        let dir = config.backup_dir.join(target.env.id.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| DatabaseError::Refused(format!("creating {}: {e}", dir.display())))?;
        let file = dir.join(format!("{}.dump", input.operation_id.0));
        let mut dump = pg_command(&pg_tool("pg_dump")?, &target.url)?;
        dump.args(["--format=custom", "--file"]).arg(&file);
        let started = Instant::now();
        run_tool(dump, None, "taking the backup dump", &hidden).await?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        json!({
            "posture": "dump",
            "location": file.display().to_string(),
            "bytes": bytes,
            "ms": started.elapsed().as_millis() as u64,
        })
    };

    // A scratch database owned by the environment's role, holding a copy of the schema.
    let scratch = format!("scratch_{}", input.operation_id.0.simple());
    let admin = connect(&target.admin, &format!("provider {}", target.provider.name)).await?;
    let drop_scratch = format!(r#"DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)"#);
    let make = async {
        admin
            .execute_unprepared(&drop_scratch)
            .await
            .map_err(|e| statement_error(e, "dropping an earlier scratch database", &hidden))?;
        admin
            .execute_unprepared(&format!(
                r#"CREATE DATABASE "{scratch}" OWNER "{}""#,
                target.binding.role
            ))
            .await
            .map_err(|e| statement_error(e, "creating the scratch database", &hidden))
    };
    make.await?;
    let outcome = rehearse(&target, &scratch, &todo, &hidden).await;
    admin.execute_unprepared(&drop_scratch).await.ok();
    admin.close().await.ok();
    let rehearsed = outcome?;
    Ok(DryRunReport {
        evidence: json!({ "backup": backup, "scratch": rehearsed }),
    })
}

/// The schema copied into `scratch`, then `todo` applied there, timed.
async fn rehearse(
    target: &Target,
    scratch: &str,
    todo: &[File],
    hidden: &[&Secret],
) -> Result<Value, DatabaseError> {
    let mut dump = pg_command(&pg_tool("pg_dump")?, &target.url)?;
    dump.args(["--schema-only", "--no-owner", "--no-privileges"]);
    let schema_sql = run_tool(dump, None, "copying the schema (pg_dump)", hidden).await?;
    let scratch_url =
        providers::in_database(&target.url, scratch).map_err(DatabaseError::Refused)?;
    let mut restore = pg_command(&pg_tool("psql")?, &scratch_url)?;
    restore.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    run_tool(
        restore,
        Some(schema_sql),
        "copying the schema (psql)",
        hidden,
    )
    .await?;
    let conn = connect(&scratch_url, "the scratch database").await?;
    let mut files = Vec::new();
    let started = Instant::now();
    for file in todo {
        let t = Instant::now();
        let result = apply_file(&conn, file).await;
        if let Err(e) = result {
            conn.close().await.ok();
            return Err(DatabaseError::Refused(format!(
                "dry run: {}: {}; nothing was applied to {}",
                file.path,
                providers::scrub(&e.to_string(), hidden),
                target.binding.resource
            )));
        }
        files.push(json!({ "path": file.path, "ms": t.elapsed().as_millis() as u64 }));
    }
    conn.close().await.ok();
    Ok(json!({
        "database": scratch,
        "files": files,
        "ms": started.elapsed().as_millis() as u64,
    }))
}

/// One file: in a transaction, or alone when it builds an index concurrently (which no
/// transaction may hold).
async fn apply_file(conn: &DatabaseConnection, file: &File) -> Result<(), sea_orm::DbErr> {
    if concurrent(file) {
        return conn.execute_unprepared(&file.sql).await.map(|_| ());
    }
    let txn = conn.begin().await?;
    txn.execute_unprepared(&file.sql).await?;
    txn.commit().await
}

fn concurrent(file: &File) -> bool {
    rhone_migrate::classify(&file.path, &file.sql)
        .is_ok_and(|c| c.statements.iter().any(|s| s.concurrent))
}

pub(super) async fn apply(
    db: &DatabaseConnection,
    keys: Option<&Keyring>,
    store: &ArtifactStore,
    config: &MigrationConfig,
    input: &MigrationStepInput,
) -> Result<ApplyReport, DatabaseError> {
    let (target, forward, _, _, _) = load(db, keys, store, input).await?;
    let hidden = [&target.url, &target.admin];
    let conn = connect(&target.url, &target.who()).await?;
    let timeout_ms = config.lock_timeout.as_millis() as u64;
    conn.execute_unprepared(&format!("SET lock_timeout = {timeout_ms}"))
        .await
        .map_err(|e| statement_error(e, "setting lock_timeout", &hidden))?;
    let started = Instant::now();
    let locked = conn
        .execute_unprepared(&format!("SELECT pg_advisory_lock({LOCK_KEY})"))
        .await;
    if let Err(e) = locked {
        let message = e.to_string();
        conn.close().await.ok();
        if !message.contains("lock timeout") {
            return Err(statement_error(e, "taking the migration lock", &hidden));
        }
        let holders = lock_holders(&target, &hidden).await;
        return Ok(ApplyReport {
            lock: None,
            applied: Value::Null,
            failure: Some(format!(
                "manual lock timeout: another session holds the migration lock of {} (advisory lock {LOCK_KEY}) and it was not granted within {timeout_ms} ms; nothing was applied",
                target.who()
            )),
            failure_evidence: json!({
                "lock_key": LOCK_KEY,
                "lock_timeout_ms": timeout_ms,
                "waited_ms": started.elapsed().as_millis() as u64,
                "holders": holders,
            }),
        });
    }
    let lock = json!({
        "lock_key": LOCK_KEY,
        "lock_timeout_ms": timeout_ms,
        "waited_ms": started.elapsed().as_millis() as u64,
    });
    let outcome = apply_locked(&conn, &forward, input, &hidden).await;
    conn.execute_unprepared(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"))
        .await
        .ok();
    conn.close().await.ok();
    let (applied, failure) = outcome?;
    Ok(ApplyReport {
        lock: Some(lock.clone()),
        failure_evidence: match &failure {
            Some((file, error)) => {
                json!({ "lock": lock, "file": file, "error": error, "applied_before": applied })
            }
            None => Value::Null,
        },
        failure: failure.map(|(file, error)| {
            format!("{file}: {error}; its transaction rolled back, so nothing of it was applied")
        }),
        applied: json!({ "files": applied }),
    })
}

/// Under the lock: what is pending now (an earlier attempt may have committed some), each
/// run of files between concurrent ones in one transaction with their records in
/// `rhone.applied_migrations`. Returns what was applied and, if a file failed, which and
/// why.
async fn apply_locked(
    conn: &DatabaseConnection,
    forward: &[File],
    input: &MigrationStepInput,
    hidden: &[&Secret],
) -> Result<(Vec<Value>, Option<(String, String)>), DatabaseError> {
    conn.execute_unprepared(
        "CREATE SCHEMA IF NOT EXISTS rhone; \
         CREATE TABLE IF NOT EXISTS rhone.applied_migrations (\
           path text PRIMARY KEY, sha256 text NOT NULL, class text NOT NULL, \
           operation_id uuid NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(|e| statement_error(e, "creating rhone.applied_migrations", hidden))?;
    let (todo, _) = split(
        input.phase,
        pending(forward, &applied_in(conn, hidden).await?)?,
    );
    let mut applied = Vec::new();
    let mut group: Vec<&File> = Vec::new();
    let groups = todo.iter().fold(Vec::<Vec<&File>>::new(), |mut acc, f| {
        if concurrent(f) {
            if !group.is_empty() {
                acc.push(std::mem::take(&mut group));
            }
            acc.push(vec![f]);
        } else {
            group.push(f);
        }
        acc
    });
    let mut groups = groups;
    if !group.is_empty() {
        groups.push(group);
    }
    for files in groups {
        let alone = files.len() == 1 && concurrent(files[0]);
        let started = Instant::now();
        let result = if alone {
            let f = files[0];
            match conn.execute_unprepared(&f.sql).await {
                Ok(_) => record(conn, f, input).await,
                Err(e) => Err((f.path.clone(), e)),
            }
        } else {
            run_group(conn, &files, input).await
        };
        match result {
            Ok(()) => applied.extend(
                files
                    .iter()
                    .map(|f| json!({ "path": f.path, "ms": started.elapsed().as_millis() as u64 })),
            ),
            Err((path, e)) => {
                return Ok((
                    applied,
                    Some((path, providers::scrub(&e.to_string(), hidden))),
                ));
            }
        }
    }
    Ok((applied, None))
}

async fn run_group(
    conn: &DatabaseConnection,
    files: &[&File],
    input: &MigrationStepInput,
) -> Result<(), (String, sea_orm::DbErr)> {
    let first = files.first().map(|f| f.path.clone()).unwrap_or_default();
    let txn = conn.begin().await.map_err(|e| (first.clone(), e))?;
    for f in files {
        txn.execute_unprepared(&f.sql)
            .await
            .map_err(|e| (f.path.clone(), e))?;
        record(&txn, f, input).await?;
    }
    txn.commit().await.map_err(|e| (first, e))
}

async fn record<C: ConnectionTrait>(
    conn: &C,
    f: &File,
    input: &MigrationStepInput,
) -> Result<(), (String, sea_orm::DbErr)> {
    let class = f.class().to_owned();
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO rhone.applied_migrations (path, sha256, class, operation_id) VALUES ($1, $2, $3, $4)",
        [
            f.path.clone().into(),
            f.sha256.clone().into(),
            class.into(),
            input.operation_id.0.into(),
        ],
    ))
    .await
    .map(|_| ())
    .map_err(|e| (f.path.clone(), e))
}

/// Who holds the migration lock of the target's database, as far as its role may see.
async fn lock_holders(target: &Target, hidden: &[&Secret]) -> Value {
    let Ok(conn) = connect(&target.url, &target.who()).await else {
        return Value::Null;
    };
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT a.pid, a.usename::text AS usename, a.application_name, a.state, \
                 to_char(a.backend_start, 'YYYY-MM-DD\"T\"HH24:MI:SS') AS since \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted \
                 AND l.classid = {} AND l.objid = {} AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                LOCK_KEY >> 32,
                LOCK_KEY & 0xffff_ffff
            ),
        ))
        .await;
    conn.close().await.ok();
    match rows {
        Ok(rows) => Value::Array(
            rows.into_iter()
                .map(|r| {
                    json!({
                        "pid": r.try_get::<i32>("", "pid").ok(),
                        "user": r.try_get::<Option<String>>("", "usename").ok().flatten(),
                        "application": r.try_get::<Option<String>>("", "application_name").ok().flatten(),
                        "state": r.try_get::<Option<String>>("", "state").ok().flatten(),
                        "since": r.try_get::<Option<String>>("", "since").ok().flatten(),
                    })
                })
                .collect(),
        ),
        Err(e) => json!({ "unknown": providers::scrub(&e.to_string(), hidden) }),
    }
}

pub(super) async fn verify(
    db: &DatabaseConnection,
    keys: Option<&Keyring>,
    store: &ArtifactStore,
    input: &MigrationStepInput,
) -> Result<VerifyReport, DatabaseError> {
    let keys = super::keys(keys)?;
    let target = target(db, keys, input.environment_id).await?;
    let (forward, _) = artifact_files(db, store, &input.digest).await?;
    let hidden = [&target.url, &target.admin];
    let conn = connect(&target.url, &target.who()).await?;
    let applied = applied_in(&conn, &hidden).await;
    let columns = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT table_name::text AS t, column_name::text AS c, data_type::text AS d, is_nullable::text AS n \
             FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        ))
        .await
        .map_err(|e| statement_error(e, "reading the schema back", &hidden));
    conn.close().await.ok();
    let (applied, columns) = (applied?, columns?);
    // What this phase left for after the route is not expected yet.
    let (missing, deferred) = split(input.phase, pending(&forward, &applied)?);
    let missing: Vec<&str> = missing.iter().map(|f| f.path.as_str()).collect();
    let deferred: Vec<&str> = deferred.iter().map(|f| f.path.as_str()).collect();
    let forward: Vec<&File> = forward
        .iter()
        .filter(|f| !deferred.contains(&f.path.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(DatabaseError::Refused(format!(
            "{} not recorded as applied in {}",
            missing.join(", "),
            target.who()
        )));
    }
    let mut fingerprint = Sha256::new();
    let mut tables: Vec<String> = Vec::new();
    for row in &columns {
        let get = |c: &str| row.try_get::<String>("", c).unwrap_or_default();
        let (t, c, d, n) = (get("t"), get("c"), get("d"), get("n"));
        fingerprint.update(format!("{t}.{c} {d} {n}\n"));
        if tables.last() != Some(&t) {
            tables.push(t);
        }
    }
    // The control DB's copy: each file once, by the operation that applied it.
    let mut recorded = Vec::new();
    for f in &forward {
        let f = *f;
        let row = applied_migration::ActiveModel {
            id: sea_orm::ActiveValue::Set(new_id()),
            provider_id: sea_orm::ActiveValue::Set(target.provider.id),
            database: sea_orm::ActiveValue::Set(target.binding.resource.clone()),
            path: sea_orm::ActiveValue::Set(f.path.clone()),
            sha256: sea_orm::ActiveValue::Set(f.sha256.clone()),
            class: sea_orm::ActiveValue::Set(f.class().to_owned()),
            operation_id: sea_orm::ActiveValue::Set(input.operation_id.0),
            applied_at: sea_orm::ActiveValue::Set(chrono::Utc::now()),
        };
        let inserted = applied_migration::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    applied_migration::Column::ProviderId,
                    applied_migration::Column::Database,
                    applied_migration::Column::Path,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(db)
            .await
            .map_err(schema)?;
        if inserted > 0 {
            recorded.push(f.path.clone());
        }
    }
    Ok(VerifyReport {
        evidence: json!({
            "database": target.binding.resource,
            "schema": {
                "tables": tables,
                "columns": columns.len(),
                "sha256": hex::encode(fingerprint.finalize()),
            },
            "applied": forward.iter().map(|f| &f.path).collect::<Vec<_>>(),
            "recorded_now": recorded,
            "deferred": deferred,
        }),
    })
}

/// Opens the operation row of a Migration that operation `parent_operation_id` started, in
/// `classified`, for that operation's actor; a row already there (a retry) is kept.
pub(super) async fn open(
    db: &DatabaseConnection,
    input: &rhone_workflows::activities::OpenMigrationInput,
) -> Result<(), DatabaseError> {
    use rhone_core::OperationKind;
    use rhone_schema::{entity::operation, ops};
    let id = input.operation_id.0;
    if operation::Entity::find_by_id(id)
        .one(db)
        .await
        .map_err(schema)?
        .is_some()
    {
        return Ok(());
    }
    let parent = operation::Entity::find_by_id(input.parent_operation_id)
        .one(db)
        .await
        .map_err(schema)?
        .ok_or_else(|| {
            DatabaseError::Refused(format!(
                "operation {} that starts this migration is gone",
                input.parent_operation_id
            ))
        })?;
    let manifest = manifest_of(db, &input.digest).await?;
    let files: Vec<&str> = manifest
        .migrations
        .iter()
        .map(|m| m.path.as_str())
        .collect();
    let kind = OperationKind::Migration;
    let workflow_id = rhone_core::workflow_id(kind, input.operation_id);
    let target = input.environment_id.to_string();
    let new = ops::NewOperation {
        id,
        workspace_id: parent.workspace_id,
        kind: kind.as_str(),
        actor: &parent.actor,
        target_type: "environment",
        target_id: &target,
        initial_stage: kind.initial_stage(),
        status: rhone_core::OperationStatus::Running.as_str(),
        workflow_id: &workflow_id,
    };
    let evidence = json!({
        "deployment_id": input.deployment_id,
        "digest": input.digest,
        "files": files,
        "started_by": input.parent_operation_id,
    });
    match ops::create_operation_with(db, new, evidence).await {
        Ok(_) | Err(SchemaError::Conflict { .. }) => Ok(()),
        Err(e) => Err(DatabaseError::Schema(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, sql: &str) -> File {
        File {
            path: path.to_owned(),
            sha256: String::new(),
            sql: sql.to_owned(),
        }
    }

    fn paths(files: &[File]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn before_the_route_only_what_precedes_the_first_contract_file_applies() {
        let todo = vec![
            file("0001_a.sql", "CREATE TABLE a (id int);"),
            file("0002_b.sql", "ALTER TABLE a ADD COLUMN b text;"),
            file("0003_c.sql", "ALTER TABLE a DROP COLUMN b;"),
            file("0004_d.sql", "CREATE TABLE d (id int);"),
        ];
        let (now, later) = split(MigrationPhase::BeforeRoute, todo.clone());
        assert_eq!(paths(&now), ["0001_a.sql", "0002_b.sql"]);
        // An expand file after a contract one waits too: files apply in order.
        assert_eq!(paths(&later), ["0003_c.sql", "0004_d.sql"]);
        for phase in [MigrationPhase::All, MigrationPhase::AfterRoute] {
            let (now, later) = split(phase, todo.clone());
            assert_eq!(now.len(), 4, "{phase:?}");
            assert!(later.is_empty(), "{phase:?}");
        }
        // A file declared irreversible waits for the route as a contract one does.
        let irreversible = vec![
            file("0001_a.sql", "CREATE TABLE a (id int);"),
            file(
                "0002_b.sql",
                "-- rhone:irreversible\nCREATE TABLE b (id int);",
            ),
        ];
        let (now, later) = split(MigrationPhase::BeforeRoute, irreversible);
        assert_eq!(
            (paths(&now), paths(&later)),
            (vec!["0001_a.sql"], vec!["0002_b.sql"])
        );
    }
}
