//! The immutable artifact store: deterministic archives addressed by sha256, kept in a
//! local directory or an S3 bucket, and pushed to or pulled from OCI registries.
//!
//! - [`archive::pack_dir`] turns a build's output tree into a [`Packed`] archive whose
//!   [`Digest`] depends on content only; [`archive::unpack`] verifies and extracts one.
//! - [`ArtifactStore`] stores archives by digest: `put` is idempotent, `get` always
//!   re-hashes what it read and fails with [`StoreError::DigestMismatch`] on any change.
//! - [`oci::push`] / [`oci::pull`] move an archive through a registry as an OCI artifact.
//!
//! The stores and the registry client are the default feature `backends`; without it the
//! crate is [`archive`] and [`StoreError`] alone, for builds that must stay small (`fuzz/`).
//!
//! ```no_run
//! # #[cfg(feature = "backends")]
//! # async fn example(dist: &std::path::Path) -> Result<(), rhone_store::StoreError> {
//! use rhone_store::{ArtifactStore, archive};
//! let store = ArtifactStore::local("/var/lib/rhone/artifacts");
//! let packed = archive::pack_dir(dist)?;
//! let digest = store.put(&packed).await?;
//! let bytes = store.get(&digest).await?;
//! archive::unpack(&bytes, std::path::Path::new("/srv/app"), &digest)?;
//! # Ok(())
//! # }
//! ```

pub mod archive;
mod error;
#[cfg(feature = "backends")]
pub mod local;
#[cfg(feature = "backends")]
pub mod oci;
#[cfg(feature = "backends")]
pub mod s3;

#[cfg(feature = "backends")]
use std::path::PathBuf;

pub use archive::Packed;
pub use error::{BoxError, Result, StoreError};
#[cfg(feature = "backends")]
pub use local::LocalStore;
pub use rhone_core::digest::{Digest, InvalidDigest};
#[cfg(feature = "backends")]
pub use s3::{S3Config, S3Store, SecretKey};

/// Media type of an artifact archive: an uncompressed, deterministic tar.
pub const ARTIFACT_MEDIA_TYPE: &str = "application/vnd.rhone.artifact.v1.tar";

/// Where artifacts are kept. Every backend has the same contract: content-addressed,
/// idempotent `put`, verified `get`.
#[cfg(feature = "backends")]
#[derive(Clone, Debug)]
pub enum ArtifactStore {
    /// A local directory: the embedded default.
    Local(LocalStore),
    /// A bucket on an S3 API server.
    S3(S3Store),
}

#[cfg(feature = "backends")]
impl ArtifactStore {
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        ArtifactStore::Local(LocalStore::new(dir))
    }

    pub fn s3(config: &S3Config) -> Result<Self> {
        Ok(ArtifactStore::S3(S3Store::new(config)?))
    }

    /// Stores the archive under its digest and returns the digest. Storing a digest that
    /// is already there writes nothing.
    pub async fn put(&self, packed: &Packed) -> Result<Digest> {
        match self {
            ArtifactStore::Local(store) => store.put(packed).await,
            ArtifactStore::S3(store) => store.put(packed).await,
        }
    }

    /// The archive with this digest, after checking that its bytes hash to it:
    /// [`StoreError::NotFound`] when absent, [`StoreError::DigestMismatch`] when altered.
    pub async fn get(&self, digest: &Digest) -> Result<Vec<u8>> {
        match self {
            ArtifactStore::Local(store) => store.get(digest).await,
            ArtifactStore::S3(store) => store.get(digest).await,
        }
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool> {
        match self {
            ArtifactStore::Local(store) => store.exists(digest).await,
            ArtifactStore::S3(store) => store.exists(digest).await,
        }
    }
}

/// `bytes` if they hash to `expected`, else [`StoreError::DigestMismatch`]. Hashing a
/// large artifact takes a while, so it runs off the async worker threads.
#[cfg(feature = "backends")]
pub(crate) async fn verified(bytes: Vec<u8>, expected: &Digest) -> Result<Vec<u8>> {
    let packed = blocking(move || Ok(Packed::from_bytes(bytes))).await?;
    if packed.digest() != expected {
        return Err(StoreError::DigestMismatch {
            expected: expected.clone(),
            actual: packed.digest().clone(),
        });
    }
    Ok(packed.into_bytes())
}

/// Runs file work and hashing on tokio's blocking threads.
#[cfg(feature = "backends")]
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::io("a blocking store task failed", std::io::Error::other(e)))?
}
