//! The runner's artifact cache: each digest is fetched from the artifact store (which
//! verifies the bytes), unpacked (which verifies again and refuses unsafe entries) into
//! `artifacts/<hex>` once, and shared by every allocation of that digest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rhone_store::{ArtifactStore, Digest, StoreError};

/// Why an artifact could not be made ready to run. The messages are what a failed
/// allocation reports.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("fetching {digest} from the artifact store failed: {source}")]
    Fetch {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("unpacking {digest} failed: {source}")]
    Unpack {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("checking the cache for {digest} failed: {source}")]
    Cache {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
}

/// Unpacked artifacts by digest under one directory.
#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    store: ArtifactStore,
    /// One lock per digest, so two allocations of a new digest fetch and unpack it once.
    locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, store: ArtifactStore) -> Self {
        ArtifactCache {
            dir,
            store,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The root of the unpacked artifact, fetching and unpacking it first if needed.
    /// `unpack` renames a complete tree into place, so an existing directory is whole.
    pub(crate) async fn ensure(&self, digest: &Digest) -> Result<PathBuf, PullError> {
        let dest = self.dir.join(digest.hex());
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(digest.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let cached = tokio::fs::try_exists(&dest)
            .await
            .map_err(|source| PullError::Cache {
                digest: digest.clone(),
                source,
            })?;
        if cached {
            tracing::debug!(%digest, "artifact already unpacked");
            return Ok(dest);
        }
        let bytes = self
            .store
            .get(digest)
            .await
            .map_err(|source| PullError::Fetch {
                digest: digest.clone(),
                source,
            })?;
        let (target, expected) = (dest.clone(), digest.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Io {
                    context: format!("creating {}", parent.display()),
                    source: e,
                })?;
            }
            rhone_store::archive::unpack(&bytes, &target, &expected)
        })
        .await;
        let unpack_error = |source| PullError::Unpack {
            digest: digest.clone(),
            source,
        };
        match unpacked {
            Ok(result) => result.map_err(unpack_error)?,
            Err(join) => {
                return Err(unpack_error(StoreError::Io {
                    context: "the unpack task failed".into(),
                    source: std::io::Error::other(join),
                }));
            }
        }
        tracing::info!(%digest, dir = %dest.display(), "artifact unpacked");
        Ok(dest)
    }
}
