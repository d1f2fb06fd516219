//! The runner's artifact cache: each digest is fetched from the artifact store (which
//! verifies the bytes), unpacked (which verifies again and refuses unsafe entries) into
//! `artifacts/<hex>` once, and shared by every allocation of that digest, which sees it
//! read-only. Before each start the tree is checked against its digest: a walk of its
//! metadata (path, type, size, inode, change time) is compared with the one taken when its
//! content was last verified, and a tree that changed since, or that this runner has not
//! verified yet (one left by an earlier runner), is packed again and its digest compared;
//! one that no longer matches is removed and unpacked afresh from the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    /// The metadata fingerprint of each tree when its content last matched its digest.
    verified: Mutex<HashMap<Digest, String>>,
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, store: ArtifactStore) -> Self {
        ArtifactCache {
            dir,
            store,
            locks: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Where [`ArtifactCache::ensure`] puts the artifact of `digest`.
    pub(crate) fn path_of(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The root of the unpacked artifact, fetching and unpacking it first if needed.
    /// `unpack` renames a complete tree into place, so an existing directory is whole.
    pub(crate) async fn ensure(&self, digest: &Digest) -> Result<PathBuf, PullError> {
        let dest = self.path_of(digest);
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
            if self.still_whole(digest, &dest).await? {
                tracing::debug!(%digest, "artifact already unpacked and whole");
                return Ok(dest);
            }
            tracing::warn!(%digest, dir = %dest.display(), "the unpacked artifact no longer matches its digest; unpacking it afresh");
            let _ = tokio::fs::remove_dir_all(&dest).await;
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
        let fingerprint = self.fingerprint(digest, &dest).await?;
        self.verified_lock().insert(digest.clone(), fingerprint);
        Ok(dest)
    }

    /// Whether the tree at `dest` is still the artifact `digest`: unchanged since it was
    /// last verified, or packed again to the same digest.
    async fn still_whole(&self, digest: &Digest, dest: &Path) -> Result<bool, PullError> {
        let fingerprint = self.fingerprint(digest, dest).await?;
        if self.verified_lock().get(digest) == Some(&fingerprint) {
            return Ok(true);
        }
        let dir = dest.to_path_buf();
        let packed = tokio::task::spawn_blocking(move || rhone_store::archive::pack_dir(&dir))
            .await
            .map_err(|e| self.cache_error(digest, std::io::Error::other(e)))?;
        let whole = packed.is_ok_and(|p| p.digest() == digest);
        if whole {
            self.verified_lock().insert(digest.clone(), fingerprint);
        }
        Ok(whole)
    }

    async fn fingerprint(&self, digest: &Digest, dest: &Path) -> Result<String, PullError> {
        let dir = dest.to_path_buf();
        tokio::task::spawn_blocking(move || fingerprint(&dir))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| self.cache_error(digest, e))
    }

    fn cache_error(&self, digest: &Digest, source: std::io::Error) -> PullError {
        PullError::Cache {
            digest: digest.clone(),
            source,
        }
    }

    fn verified_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, String>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A digest of the tree's metadata: every entry's path, type, mode, size, inode and change
/// time. Any write to a file or directory moves its change time, which nobody can set back
/// (short of the clock), so an equal fingerprint means untouched content.
fn fingerprint(dir: &Path) -> std::io::Result<String> {
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        entries.push(format!(
            "{rel}\0{:o}\0{}\0{}\0{}.{}\0{}.{}",
            meta.mode(),
            meta.len(),
            meta.ino(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    entries.sort();
    let mut hash = Sha256::new();
    for entry in &entries {
        hash.update(entry.as_bytes());
        hash.update(b"\n");
    }
    Ok(hex::encode(hash.finalize()))
}
