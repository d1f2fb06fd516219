//! The embedded artifact store: one file per artifact at `dir/sha256/<hex>`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::archive::Packed;
use crate::error::{Result, StoreError};
use crate::{blocking, verified};
use rhone_core::digest::Digest;

/// Artifacts in a local directory. Writes go to a temporary file in the same directory
/// and are renamed into place, so a reader never sees half an artifact.
#[derive(Clone, Debug)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// A store rooted at `dir`; directories are created on the first `put`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalStore { dir: dir.into() }
    }

    /// Where the artifact with this digest lives (whether or not it is there).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    pub async fn put(&self, packed: &Packed) -> Result<Digest> {
        let target = self.path_of(packed.digest());
        if self.exists(packed.digest()).await? {
            return Ok(packed.digest().clone());
        }
        // The archive is copied so the blocking task owns it; artifacts are held in memory
        // anyway and the copy is small next to the disk write.
        let bytes = packed.bytes().to_vec();
        blocking(move || write_atomically(&target, &bytes)).await?;
        tracing::debug!(digest = %packed.digest(), dir = %self.dir.display(), "stored artifact");
        Ok(packed.digest().clone())
    }

    pub async fn get(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.path_of(digest);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(digest.clone()));
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        verified(bytes, digest).await
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool> {
        let path = self.path_of(digest);
        tokio::fs::try_exists(&path)
            .await
            .map_err(|e| StoreError::io(format!("checking {}", path.display()), e))
    }
}

fn write_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| StoreError::io("storing an artifact", io::Error::other("no parent")))?;
    let context = |what: &str| format!("{what} in {}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(context("creating"), e))?;
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| StoreError::io(context("creating a temporary file"), e))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| StoreError::io(context("writing a temporary file"), e))?;
    // Two writers of one digest write the same bytes, so whichever rename wins is right.
    file.persist(target)
        .map_err(|e| StoreError::io(format!("renaming into {}", target.display()), e.error))?;
    Ok(())
}
