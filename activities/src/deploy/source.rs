//! Cloning: a real `git clone` of a repository URL or local path into the deployment's work
//! directory, and a checkout of the asked ref (or of an exact commit, for the build).
//!
//! A clone is made in a temporary directory and renamed to `<work_dir>/<deployment>/src`
//! only once complete, so a retry either finds a whole clone and reuses it, or clears what a
//! killed attempt left and clones again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rhone_workflows::activities::{CloneInput, Cloned, SourceSpec};
use tokio::process::Command;
use uuid::Uuid;

use super::DeployConfig;
use super::error::DeployError;
use super::process::{RunError, describe_exit, run_captured};

/// Prefix of the temporary directory a clone is made in, next to its final place.
const PARTIAL_PREFIX: &str = ".src-partial-";

/// Phrases of git's stderr that mean the repository itself is unusable as given.
const REJECTED: &[&str] = &[
    "does not exist",
    "not found",
    "does not appear to be a git repository",
    "not a git repository",
    "authentication failed",
    "could not read username",
    "could not read password",
    "permission denied",
    "invalid username or password",
    "unsupported protocol",
    "transport '",
];

/// A checkout of one commit, ready to build.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub dir: PathBuf,
    pub commit_sha: String,
}

/// Clones the deployment's source and checks out its ref; the full commit sha it resolved to.
#[tracing::instrument(skip_all, fields(
    operation_id = %input.operation_id,
    deployment_id = %input.deployment_id,
    repository = %redact(&input.source.repository),
    git_ref = %input.source.git_ref,
))]
pub async fn clone_source(
    config: &DeployConfig,
    input: &CloneInput,
) -> Result<Cloned, DeployError> {
    let checkout = ensure_checkout(config, input.deployment_id, &input.source, None).await?;
    tracing::info!(commit = %checkout.commit_sha, "cloned");
    Ok(Cloned {
        commit_sha: checkout.commit_sha,
    })
}

/// Where a deployment's clone lives.
pub fn checkout_dir(config: &DeployConfig, deployment_id: Uuid) -> PathBuf {
    config.work_dir.join(deployment_id.to_string()).join("src")
}

/// Makes sure the deployment's clone exists and has `commit` (when given, for a build) or
/// the source's ref checked out, with a clean tree; returns the full commit sha.
pub async fn ensure_checkout(
    config: &DeployConfig,
    deployment_id: Uuid,
    source: &SourceSpec,
    commit: Option<&str>,
) -> Result<Checkout, DeployError> {
    let git = Git::new(config, source);
    let git_ref = normalized_ref(&source.git_ref);
    // The API checked both; a workflow started around it (the Temporal UI, a script) was not.
    if let Err(why) = rhone_core::repository::check(&source.repository, config.local_repositories) {
        return Err(git.rejected(format!("repository {why}")));
    }
    if git_ref.is_empty() || git_ref.starts_with('-') || git_ref.chars().any(char::is_control) {
        return Err(git.rejected(format!("invalid ref {git_ref:?}")));
    }
    let dir = checkout_dir(config, deployment_id);
    if !tokio::fs::try_exists(&dir)
        .await
        .map_err(|e| DeployError::io(format!("checking {}", dir.display()), e))?
    {
        git.clone_into(&dir).await?;
    }
    let target = commit.unwrap_or(git_ref);
    let sha = git.resolve(&dir, target).await?;
    git.run(
        &dir,
        "checkout",
        &["checkout", "--quiet", "--force", "--detach", &sha],
    )
    .await?;
    git.run(&dir, "clean", &["clean", "-ffdxq"]).await?;
    let head = git.run(&dir, "rev-parse", &["rev-parse", "HEAD"]).await?;
    if head != sha {
        return Err(git.failed("checkout", format!("HEAD is {head}, expected {sha}")));
    }
    Ok(Checkout {
        dir,
        commit_sha: sha,
    })
}

fn normalized_ref(git_ref: &str) -> &str {
    match git_ref.trim() {
        "" => "HEAD",
        r => r,
    }
}

/// `git` for one repository, with the deploy's time limit and no terminal prompts.
struct Git<'a> {
    program: &'a Path,
    limit: Duration,
    source: &'a SourceSpec,
    /// Whether the file transport (local paths, `file://`) is allowed.
    local: bool,
}

impl<'a> Git<'a> {
    fn new(config: &'a DeployConfig, source: &'a SourceSpec) -> Self {
        Git {
            program: &config.git,
            limit: config.clone_timeout,
            source,
            local: config.local_repositories,
        }
    }

    fn command(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(self.program);
        command
            .args(args)
            .current_dir(cwd)
            .env(
                "GIT_ALLOW_PROTOCOL",
                rhone_core::repository::git_allow_protocol(self.local),
            )
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "never")
            .env("LC_ALL", "C");
        command
    }

    /// Clones into a temporary directory beside `dir` and renames it into place.
    async fn clone_into(&self, dir: &Path) -> Result<(), DeployError> {
        let parent = dir.parent().unwrap_or(dir);
        remove_partials(parent).await?;
        let partial = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .tempdir_in(parent)
            .map_err(|e| {
                DeployError::io(format!("creating a directory in {}", parent.display()), e)
            })?;
        let target = partial.path().to_string_lossy().into_owned();
        let args = [
            "clone",
            "--quiet",
            "--no-checkout",
            "--",
            &self.source.repository,
            &target,
        ];
        let output = self.output(parent, "clone", &args).await?;
        if !output.status.success() {
            let line = last_line(&output.stderr, &self.source.repository);
            let lower = line.to_lowercase();
            let detail = format!("git clone {}: {line}", describe_exit(output.status));
            return Err(if REJECTED.iter().any(|p| lower.contains(p)) {
                self.rejected(detail)
            } else {
                self.failed("clone", detail)
            });
        }
        let kept = partial.keep();
        tokio::fs::rename(&kept, dir).await.map_err(|e| {
            DeployError::io(
                format!("renaming {} to {}", kept.display(), dir.display()),
                e,
            )
        })
    }

    /// The full sha of `target`: a remote branch, a tag, or anything `rev-parse` takes.
    async fn resolve(&self, dir: &Path, target: &str) -> Result<String, DeployError> {
        let candidates = if target == "HEAD" {
            vec![target.to_owned()]
        } else {
            vec![
                format!("refs/remotes/origin/{target}"),
                format!("refs/tags/{target}"),
                target.to_owned(),
            ]
        };
        for candidate in candidates {
            let spec = format!("{candidate}^{{commit}}");
            let args = ["rev-parse", "--verify", "--quiet", &spec];
            let output = self.output(dir, "rev-parse", &args).await?;
            if output.status.success() {
                return Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned());
            }
        }
        Err(self.rejected(format!(
            "unknown ref {target:?}: no branch, tag or commit of that name"
        )))
    }

    /// Runs a git command that must succeed; its trimmed stdout.
    async fn run(
        &self,
        dir: &Path,
        what: &'static str,
        args: &[&str],
    ) -> Result<String, DeployError> {
        let output = self.output(dir, what, args).await?;
        if !output.status.success() {
            let line = last_line(&output.stderr, &self.source.repository);
            let detail = format!("git {what} {}: {line}", describe_exit(output.status));
            return Err(self.failed(what, detail));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    async fn output(
        &self,
        dir: &Path,
        what: &'static str,
        args: &[&str],
    ) -> Result<std::process::Output, DeployError> {
        run_captured(self.command(dir, args), self.limit)
            .await
            .map_err(|err: RunError| self.failed(what, err.to_string()))
    }

    fn rejected(&self, detail: String) -> DeployError {
        DeployError::SourceRejected {
            repository: redact(&self.source.repository),
            git_ref: normalized_ref(&self.source.git_ref).to_owned(),
            detail,
        }
    }

    fn failed(&self, what: &'static str, detail: String) -> DeployError {
        DeployError::Git {
            what,
            repository: redact(&self.source.repository),
            detail,
        }
    }
}

/// Removes temporary clone directories a killed attempt left in `parent`.
async fn remove_partials(parent: &Path) -> Result<(), DeployError> {
    let context = |e| DeployError::io(format!("clearing {}", parent.display()), e);
    tokio::fs::create_dir_all(parent).await.map_err(context)?;
    let mut entries = tokio::fs::read_dir(parent).await.map_err(context)?;
    while let Some(entry) = entries.next_entry().await.map_err(context)? {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            tokio::fs::remove_dir_all(entry.path())
                .await
                .map_err(context)?;
        }
    }
    Ok(())
}

/// git's last non-empty line of stderr, with the repository's credentials redacted.
fn last_line(stderr: &[u8], repository: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no output)");
    match userinfo(repository) {
        Some(secret) => line.replace(secret, "***"),
        None => line.to_owned(),
    }
}

/// The `user:password` part of a URL like `https://user:password@host/repo`.
fn userinfo(repository: &str) -> Option<&str> {
    let (_, rest) = repository.split_once("://")?;
    let authority = rest.split('/').next()?;
    let (info, _) = authority.rsplit_once('@')?;
    Some(info).filter(|i| !i.is_empty())
}

/// The repository as it may be shown: without the credentials a URL may carry.
pub fn redact(repository: &str) -> String {
    match userinfo(repository) {
        Some(info) => repository.replacen(info, "***", 1),
        None => repository.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        for (input, expected) in [
            (
                "https://u:tok@example.com/a.git",
                "https://***@example.com/a.git",
            ),
            ("https://example.com/a@b.git", "https://example.com/a@b.git"),
            ("git@example.com:a.git", "git@example.com:a.git"),
            ("/srv/git/a", "/srv/git/a"),
        ] {
            assert_eq!(redact(input), expected, "{input}");
        }
        let stderr = b"fatal: unable to access 'https://u:tok@example.com/a.git/': 403\n";
        assert_eq!(
            last_line(stderr, "https://u:tok@example.com/a.git"),
            "fatal: unable to access 'https://***@example.com/a.git/': 403"
        );
    }
}
