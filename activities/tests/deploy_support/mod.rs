//! Fixtures of the deploy activity tests: a migrated SQLite control DB with a workspace, app
//! and environment; `examples/counter` committed to a fresh git repository (with edits per
//! test); deployment and operation rows as the API writes them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use rhone_activities::deploy::{DeployConfig, DeployError, build_artifact, clone_source};
use rhone_core::{OperationId, OperationKind, workflow_id};
use rhone_schema::entity::{deployment, environment};
use rhone_schema::{new_id, ops};
use rhone_store::ArtifactStore;
use rhone_workflows::activities::{BuildInput, Built, CloneInput, SourceSpec};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection};
use serde_json::json;
use uuid::Uuid;

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub db: DatabaseConnection,
    pub config: DeployConfig,
    pub env: environment::Model,
}

/// A test repository and the commit its `main` branch is at.
pub struct Repo {
    pub path: PathBuf,
    pub head: String,
}

/// A deployment row with its Deploy operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Deployment {
    pub id: Uuid,
    pub operation_id: OperationId,
}

impl Fixture {
    pub async fn new() -> Result<Fixture> {
        let tmp = tempfile::tempdir()?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            tmp.path().join("rhone.db").display()
        );
        let db = rhone_schema::connect(&url).await?;
        rhone_schema::migrate(&db).await?;
        let config = DeployConfig {
            work_dir: tmp.path().join("work"),
            store: ArtifactStore::local(tmp.path().join("artifacts")),
            // Test repositories are local git directories.
            local_repositories: true,
            ..DeployConfig::default()
        };
        let env = environment(&db).await?;
        Ok(Fixture {
            tmp,
            db,
            config,
            env,
        })
    }

    /// `examples/counter` with `edit` applied, committed as the first commit of `main`.
    pub fn repo(&self, name: &str, edit: impl FnOnce(&Path) -> Result<()>) -> Result<Repo> {
        let path = self.tmp.path().join(name);
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/counter");
        copy_tree(&example, &path)?;
        edit(&path)?;
        git(&path, &["init", "--quiet", "--initial-branch", "main"])?;
        commit(&path, "first")
    }

    /// The source of a deploy of `repo` at `git_ref`.
    pub fn source(repo: &Repo, git_ref: &str) -> SourceSpec {
        SourceSpec {
            repository: repo.path.display().to_string(),
            git_ref: git_ref.to_owned(),
        }
    }

    /// A deployment into the fixture's environment, with its Deploy operation, as the API
    /// creates them.
    pub async fn deployment(&self, source: &SourceSpec) -> Result<Deployment> {
        let id = new_id();
        let operation_id = OperationId(new_id());
        let kind = OperationKind::Deploy;
        ops::create_operation(
            &self.db,
            ops::NewOperation {
                id: operation_id.0,
                workspace_id: Some(self.env.workspace_id),
                kind: kind.as_str(),
                actor: "system",
                target_type: "deployment",
                target_id: &id.to_string(),
                initial_stage: kind.initial_stage(),
                status: "running",
                workflow_id: &workflow_id(kind, operation_id),
            },
        )
        .await?;
        let now = Utc::now();
        deployment::ActiveModel {
            id: Set(id),
            workspace_id: Set(self.env.workspace_id),
            app_id: Set(self.env.app_id),
            environment_id: Set(self.env.id),
            artifact_digest: Set(None),
            source: Set(json!({ "repository": source.repository, "ref": source.git_ref })),
            stage: Set("queued".into()),
            operation_id: Set(Some(operation_id.0)),
            promoted_from: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&self.db)
        .await?;
        Ok(Deployment { id, operation_id })
    }

    pub fn clone_input(d: Deployment, source: &SourceSpec) -> CloneInput {
        CloneInput {
            operation_id: d.operation_id,
            deployment_id: d.id,
            source: source.clone(),
        }
    }

    pub fn build_input(d: Deployment, source: &SourceSpec, commit_sha: &str) -> BuildInput {
        BuildInput {
            operation_id: d.operation_id,
            deployment_id: d.id,
            source: source.clone(),
            commit_sha: commit_sha.to_owned(),
        }
    }

    /// A new deployment of `repo` at `main`, cloned and built with `config`.
    pub async fn deploy_with(
        &self,
        config: &DeployConfig,
        repo: &Repo,
    ) -> Result<(Deployment, Result<Built, DeployError>)> {
        let source = Fixture::source(repo, "main");
        let d = self.deployment(&source).await?;
        let cloned = clone_source(config, &Fixture::clone_input(d, &source)).await?;
        let input = Fixture::build_input(d, &source, &cloned.commit_sha);
        Ok((d, build_artifact(&self.db, config, &input).await))
    }

    pub async fn deploy(&self, repo: &Repo) -> Result<(Deployment, Result<Built, DeployError>)> {
        self.deploy_with(&self.config, repo).await
    }

    /// Every chunk of the operation's build log, concatenated.
    pub async fn build_log(&self, d: Deployment) -> Result<String> {
        let chunks = rhone_schema::logs::read(&self.db, d.operation_id.0, 0, 10_000).await?;
        Ok(chunks.into_iter().map(|c| c.chunk).collect())
    }
}

/// Replaces `from` with `to` in the file at `path`, which must contain it.
pub fn replace_in(path: &Path, from: &str, to: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    if !text.contains(from) {
        bail!("{} does not contain {from:?}", path.display());
    }
    std::fs::write(path, text.replacen(from, to, 1))?;
    Ok(())
}

/// Changes the codec of the persisted primitive `counter.count` (a cold state change),
/// regenerates the schema hash as the app's build does, and commits; the new head.
pub fn change_counter_codec(repo: &Repo) -> Result<Repo> {
    replace_in(
        &repo.path.join("vango_state_schema.json"),
        "\"json:int:v1\"",
        "\"json:int:v2\"",
    )?;
    let output = std::process::Command::new("python3")
        .args(["build.py", "--write-schema-hash"])
        .current_dir(&repo.path)
        .output()?;
    if !output.status.success() {
        bail!("build.py --write-schema-hash: {output:?}");
    }
    commit(&repo.path, "change the counter's codec")
}

/// Commits everything in `repo`; the new head.
pub fn commit(repo: &Path, message: &str) -> Result<Repo> {
    git(repo, &["add", "--all"])?;
    git(
        repo,
        &[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "--quiet",
            "-m",
            message,
        ],
    )?;
    Ok(Repo {
        path: repo.to_owned(),
        head: git(repo, &["rev-parse", "HEAD"])?,
    })
}

/// Runs git in `dir`; its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running git")?;
    if !output.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Copies a source tree, leaving out build outputs.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "dist" || name == "__pycache__" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

async fn environment(db: &DatabaseConnection) -> Result<environment::Model> {
    let name = format!("ws-{}", &new_id().simple().to_string()[20..]);
    Ok(rhone_schema::fixtures::tenancy(db, &name, "preview")
        .await?
        .environment)
}
