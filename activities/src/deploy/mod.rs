//! The Deploy pipeline's side effects: cloning the source ([`source`]), building and
//! storing the artifact ([`build`], [`package`], with the build log in [`buildlog`]) and
//! validating it against the environment ([`validate`], decided in [`gates`]).
//!
//! Each step is a plain async function over the control DB and a [`DeployConfig`], so tests
//! call it directly; [`DeployActivities`] only wraps them as Temporal activities and maps
//! [`DeployError`] to retryable or non-retryable failures.

pub mod build;
pub mod buildlog;
pub mod error;
pub mod gates;
pub mod package;
pub mod process;
pub mod source;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rhone_store::ArtifactStore;
use rhone_workflows::activities::{
    BuildInput, Built, CloneInput, Cloned, ValidateInput, Validation, defs,
};
use sea_orm::DatabaseConnection;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::allocate::Heartbeat;

pub use build::build_artifact;
pub use error::{DeployError, deploy_activity_error};
pub use source::clone_source;
pub use validate::validate_deployment;

/// What the deploy activities need beyond the control DB.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// Scratch space: a deployment's clone and build go in `<work_dir>/<deployment id>/`
    /// (removed when its build ends), validation unpacks into a temporary directory here.
    /// Default: `rhone-work` under the system temporary directory.
    pub work_dir: PathBuf,
    /// Where artifacts are stored by digest. Default: a local store in `rhone-artifacts`
    /// under the system temporary directory.
    pub store: ArtifactStore,
    /// The git program. Default: `git` on `PATH`.
    pub git: PathBuf,
    /// Time limit of each git command (clone, checkout); default 5 minutes.
    pub clone_timeout: Duration,
    /// The OCI runtime that runs build commands in their sandboxes. Default `crun`.
    pub runtime: PathBuf,
    /// Whether a repository may be a path or `file://` URL on this host (`rhone dev`; an
    /// operator's `RHONE_ALLOW_LOCAL_REPOSITORIES=1`). Default off: git is then allowed the
    /// https, http, ssh and git transports only.
    pub local_repositories: bool,
}

impl DeployConfig {
    /// Where builds' sandboxes keep their state: `<work_dir>/sandbox`.
    pub fn sandbox(&self) -> rhone_sandbox::SandboxConfig {
        rhone_sandbox::SandboxConfig {
            runtime: self.runtime.clone(),
            state_dir: self.work_dir.join("sandbox"),
            cgroup_parent: "/".to_owned(),
        }
    }
}

impl DeployConfig {
    /// Scratch space in `dir/work` and a local artifact store in `dir/artifacts`: what a
    /// single-machine setup (`rhone dev`) keeps in its data directory.
    pub fn under(dir: &Path) -> Self {
        DeployConfig {
            work_dir: dir.join("work"),
            store: ArtifactStore::local(dir.join("artifacts")),
            ..DeployConfig::default()
        }
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        let tmp = std::env::temp_dir();
        DeployConfig {
            work_dir: tmp.join("rhone-work"),
            store: ArtifactStore::local(tmp.join("rhone-artifacts")),
            git: PathBuf::from("git"),
            clone_timeout: Duration::from_secs(300),
            runtime: PathBuf::from(rhone_sandbox::DEFAULT_RUNTIME),
            local_repositories: false,
        }
    }
}

pub struct DeployActivities {
    pub db: DatabaseConnection,
    pub config: DeployConfig,
}

#[activities]
impl DeployActivities {
    #[activity(definition = defs::CloneSource)]
    pub async fn clone_source(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: CloneInput,
    ) -> Result<Cloned, ActivityError> {
        Heartbeat::of(&ctx)
            .during(clone_source(&self.config, &input))
            .await
            .map_err(deploy_activity_error)
    }

    #[activity(definition = defs::BuildArtifact)]
    pub async fn build_artifact(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: BuildInput,
    ) -> Result<Built, ActivityError> {
        Heartbeat::of(&ctx)
            .during(build_artifact(&self.db, &self.config, &input))
            .await
            .map_err(deploy_activity_error)
    }

    #[activity(definition = defs::ValidateDeployment)]
    pub async fn validate_deployment(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ValidateInput,
    ) -> Result<Validation, ActivityError> {
        Heartbeat::of(&ctx)
            .during(validate_deployment(&self.db, &self.config, &input))
            .await
            .map_err(deploy_activity_error)
    }
}
