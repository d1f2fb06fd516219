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

use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

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
/// directory) whose target is `target` stays inside the tree by its text alone: a quick
/// first refusal. It is not enough (a component of the target may itself be a link going
/// up): once the whole tree is known, every link is [`follow`]ed through it.
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

/// How many symlinks one lookup follows at most, as Linux's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// What a path of the tree is, for [`follow`]; `None` from the lookup is a path the archive
/// has no entry for (a directory it implies, or nothing).
pub(super) enum Kind<'t> {
    Dir,
    File,
    Link(&'t Path),
}

/// Where [`follow`] ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Followed {
    /// The path resolves to this one inside the tree (which may not exist).
    Inside(PathBuf),
    /// Resolving it climbs above the root or reaches an absolute target.
    Outside,
    /// More than [`MAX_LINKS`] links (the kernel's `ELOOP`), or a file used as a directory
    /// (`ENOTDIR`): it names nothing.
    Nothing,
}

/// Resolves `path` (relative to the tree's root) as the kernel would, following every
/// symlink through the tree `lookup` describes: a link's target is read against where the
/// link really is, so `b/c -> ..` and `a -> b/c/b/c/../../..` is seen to leave the tree
/// though each target's text alone stays inside it.
pub(super) fn follow<'t>(path: &Path, lookup: impl Fn(&Path) -> Option<Kind<'t>>) -> Followed {
    let mut pending: Vec<OsString> = Vec::new();
    if !push_reversed(&mut pending, path) {
        return Followed::Outside;
    }
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            if !resolved.pop() {
                return Followed::Outside;
            }
            continue;
        }
        resolved.push(&part);
        match lookup(&resolved) {
            Some(Kind::Link(target)) => {
                links += 1;
                if links > MAX_LINKS {
                    return Followed::Nothing;
                }
                // The target is relative to the link's directory, which `resolved` now is.
                resolved.pop();
                if !push_reversed(&mut pending, target) {
                    return Followed::Outside;
                }
            }
            Some(Kind::File) if !pending.is_empty() => return Followed::Nothing,
            Some(Kind::Dir | Kind::File) | None => {}
        }
    }
    Followed::Inside(resolved)
}

/// Pushes `path`'s components in reverse (`..` kept, `.` dropped); false if it is absolute.
fn push_reversed(pending: &mut Vec<OsString>, path: &Path) -> bool {
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => pending.push(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Why a symlink whose target's text stays inside the tree is still refused.
pub(super) const LEAVES_THROUGH_LINKS: &str =
    "the symlink points outside the tree through another symlink";
