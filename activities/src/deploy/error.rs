//! `DeployError`: every way cloning, building or validating a deployment fails, and the one
//! place that says which of them a retry can cure.

use rhone_schema::SchemaError;
use rhone_store::StoreError;
use temporalio_common::error::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;

/// Errors of the deploy activities. Messages are written for the person reading the
/// operation's error: they name the repository, ref, file or command concerned, and never a
/// secret (repository URLs are shown with their credentials redacted).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The repository or ref cannot be used as given (absent, unknown ref, refused
    /// credentials): cloning again will not help.
    #[error("cannot clone {repository} at {git_ref}: {detail}")]
    SourceRejected {
        repository: String,
        git_ref: String,
        detail: String,
    },
    /// A git command failed in a way that may pass on a retry (network, a busy disk).
    #[error("git {what} of {repository} failed: {detail}")]
    Git {
        what: &'static str,
        repository: String,
        detail: String,
    },
    /// `rhone.toml` is malformed: the message is exactly its problems, one per line.
    #[error("{0}")]
    Manifest(#[from] rhone_manifest::ManifestError),
    /// The app's build broke a rule of the artifact (no rhone.toml, no output directory, an
    /// invalid Vango file, a missing migrations directory, an unpackable tree).
    #[error("{0}")]
    Invalid(String),
    #[error("build timed out after {0} s")]
    BuildTimedOut(u64),
    /// The build command failed; `tail` holds the last lines of its log.
    #[error("build command {status}; last lines of the build log:\n{tail}")]
    BuildFailed { status: String, tail: String },
    /// What the store returned is not what was put: never re-uploaded silently.
    #[error("build digest mismatch: stored {stored}, read back {read_back}")]
    DigestMismatch { stored: String, read_back: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("artifact store: {0}")]
    Store(#[source] StoreError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Local file work (the work directory, unpacking for validation).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl DeployError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DeployError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether a retry cannot help: the input or the app is wrong, or an invariant broke.
    pub fn is_final(&self) -> bool {
        match self {
            DeployError::SourceRejected { .. }
            | DeployError::Manifest(_)
            | DeployError::Invalid(_)
            | DeployError::BuildTimedOut(_)
            | DeployError::BuildFailed { .. }
            | DeployError::DigestMismatch { .. }
            | DeployError::NotFound { .. } => true,
            DeployError::Store(err) => matches!(
                err,
                StoreError::DigestMismatch { .. }
                    | StoreError::NotFound(_)
                    | StoreError::UnsafeEntry { .. }
                    | StoreError::InvalidDigest(_)
            ),
            DeployError::Schema(err) => matches!(
                err,
                SchemaError::NotFound { .. }
                    | SchemaError::Conflict { .. }
                    | SchemaError::MissingReference { .. }
                    | SchemaError::IllegalTransition(_)
            ),
            DeployError::Git { .. } | DeployError::Io { .. } => false,
        }
    }
}

impl From<StoreError> for DeployError {
    fn from(err: StoreError) -> Self {
        DeployError::Store(err)
    }
}

/// The activity failure for `err`: non-retryable when [`DeployError::is_final`]. The message
/// carries the whole source chain, since the workflow records only the message.
pub fn deploy_activity_error(err: DeployError) -> ActivityError {
    let final_ = err.is_final();
    let message = chain(&err);
    tracing::warn!(error = %message, retryable = !final_, "deploy activity failed");
    let failure = if final_ {
        ApplicationFailure::non_retryable(message)
    } else {
        ApplicationFailure::new(message)
    };
    ActivityError::application(failure)
}

/// `err: cause: cause…`, skipping a cause whose text the message already holds.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
