//! `StoreError`: every way packing, storing, pushing or unpacking an artifact fails.

use rhone_core::digest::{Digest, InvalidDigest};

/// A boxed cause, for the SDK errors whose concrete types differ per operation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the artifact store. Each variant names the phase that failed and keeps the
/// cause as its `source`, so `{:#}` (anyhow) prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file system operation; `context` says which and on what path.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// An S3 request; `op` is the S3 operation (`PutObject`, `GetObject` …).
    #[error("S3 {op} of {key} failed")]
    S3 {
        op: &'static str,
        key: String,
        #[source]
        source: BoxError,
    },
    /// The S3 configuration is unusable, before any request is made.
    #[error("invalid S3 configuration: {0}")]
    S3Config(String),
    /// An OCI registry request; `op` is what was being done (`push blob`, `pull manifest` …).
    #[error("OCI {op} for {reference} failed")]
    Oci {
        op: &'static str,
        reference: String,
        #[source]
        source: BoxError,
    },
    /// The OCI manifest or config is not the shape of a Rhone artifact.
    #[error("{reference} is not a Rhone artifact: {reason}")]
    NotAnArtifact { reference: String, reason: String },
    /// What was read does not hash to the digest it was asked for or recorded with.
    #[error("digest mismatch: expected {expected}, the bytes read hash to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// No artifact with this digest is stored.
    #[error("artifact {0} not found")]
    NotFound(Digest),
    #[error(transparent)]
    InvalidDigest(#[from] InvalidDigest),
    /// An archive entry (or a file being packed) that could write outside the tree or is
    /// of a kind artifacts never hold.
    #[error("unsafe archive entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn unsafe_entry(path: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::UnsafeEntry {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
