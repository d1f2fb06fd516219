//! Deterministic tar archives of a build's output tree, and safe unpacking.
//!
//! [`pack_dir`] writes entries sorted by path with mtime 0, uid/gid 0, no owner names and
//! modes 0644/0755 (only the executable bit survives), so the same tree always gives the
//! same bytes and the same [`Digest`]. The archive is not compressed: its digest is then
//! also its OCI layer digest. [`unpack`] checks the digest before reading a single entry
//! and refuses anything that could write outside the destination. [`files`] reads single
//! files of an archive in memory under the same rules, without writing anything.

mod pack;
mod read;
#[cfg(test)]
mod tests;
mod unpack;

use std::ffi::OsStr;
use std::path::{Component, Path};

pub use pack::pack_dir;
pub use read::{Files, files};
pub use unpack::unpack;

use rhone_core::digest::Digest;

/// An archive held in memory together with its digest. The digest is always that of the
/// bytes: both come from [`pack_dir`] or [`Packed::from_bytes`].
#[derive(Clone, PartialEq, Eq)]
pub struct Packed {
    bytes: Vec<u8>,
    digest: Digest,
}

impl Packed {
    /// Wraps archive bytes, computing their digest.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let digest = Digest::of(&bytes);
        Packed { bytes, digest }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Length of the archive in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("digest", &self.digest)
            .field("size", &self.size())
            .finish()
    }
}

/// The normal components of a relative entry path (`.` dropped), or why it is unsafe.
/// An empty result (`.` or `./`) is left to the caller.
fn safe_components(path: &Path) -> Result<Vec<&OsStr>, &'static str> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("the path has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("the path is absolute"),
        }
    }
    Ok(out)
}

/// Checks that a symlink at `depth` directories below the root (0 for a link in the root
/// directory) whose target is `target` resolves inside the tree, judging by its text
/// alone. This is sound because [`unpack`] never writes through a symlink.
fn check_link_target(depth: usize, target: &Path) -> Result<(), &'static str> {
    if target.as_os_str().is_empty() {
        return Err("the symlink has an empty target");
    }
    let mut depth = depth;
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("the symlink points outside the tree")?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("the symlink target is absolute");
            }
        }
    }
    Ok(())
}
