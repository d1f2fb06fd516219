//! `files`: reading single files out of an archive held in memory, with `unpack`'s rules.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use tar::EntryType;

use super::{Followed, Kind, LEAVES_THROUGH_LINKS, check_link_target, follow, safe_components};
use crate::error::{Result, StoreError};

/// The files of an archive in memory, looked up by their path inside the tree. Built by
/// [`files`]; borrows the archive's bytes, so a file is a slice of them, never a copy.
pub struct Files<'a> {
    bytes: &'a [u8],
    nodes: HashMap<String, Node>,
}

enum Node {
    Dir,
    File {
        start: usize,
        len: usize,
    },
    /// The link's target as written in the archive (relative, checked to stay in the tree).
    Symlink(String),
}

/// Indexes the tar archive `bytes` (as [`crate::ArtifactStore::get`] returns it, already
/// verified against its digest) without extracting anything.
///
/// The archive is refused, as [`StoreError::UnsafeEntry`] naming the entry, for what
/// [`super::unpack`] refuses: absolute paths, `..` components, symlinks that are absolute or
/// lead out of the tree, duplicate entries, hard links, devices, fifos and any other kind.
/// Entries whose path is not UTF-8 cannot be asked for and are left out.
pub fn files(bytes: &[u8]) -> Result<Files<'_>> {
    let mut nodes = HashMap::new();
    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| StoreError::io("reading the archive", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("reading an archive entry", e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let fail = |reason: &str| StoreError::unsafe_entry(name.clone(), reason);
        let path = entry.path().map_err(|_| fail("the path is not valid"))?;
        let components = safe_components(&path).map_err(fail)?;
        let Some(parts) = components
            .iter()
            .map(|c| c.to_str())
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let node = match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                let start = usize::try_from(entry.raw_file_position()).ok();
                let len = usize::try_from(entry.size()).ok();
                match (start, len) {
                    (Some(start), Some(len))
                        if start.checked_add(len).is_some_and(|end| end <= bytes.len()) =>
                    {
                        Node::File { start, len }
                    }
                    _ => return Err(fail("the file's data runs past the end of the archive")),
                }
            }
            EntryType::Directory => Node::Dir,
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|_| fail("the symlink target is not valid"))?
                    .ok_or_else(|| fail("the symlink has no target"))?;
                check_link_target(parts.len().saturating_sub(1), &link).map_err(fail)?;
                let Some(target) = link.to_str() else {
                    continue;
                };
                Node::Symlink(target.to_owned())
            }
            EntryType::Link => return Err(fail("hard links are not allowed")),
            EntryType::Char | EntryType::Block => return Err(fail("device files are not allowed")),
            EntryType::Fifo => return Err(fail("fifos are not allowed")),
            other => return Err(fail(&format!("unsupported entry type {other:?}"))),
        };
        if parts.is_empty() && !matches!(node, Node::Dir) {
            return Err(fail("the path is empty"));
        }
        // As `unpack`, which never creates an entry through a symlink or below a file.
        for end in 1..parts.len() {
            match nodes.get(&parts[..end].join("/")) {
                Some(Node::Symlink(_)) => return Err(fail("the path goes through a symlink")),
                Some(Node::File { .. }) => {
                    return Err(fail("a directory is needed where the archive has a file"));
                }
                Some(Node::Dir) | None => {}
            }
        }
        match nodes.entry(parts.join("/")) {
            Entry::Occupied(_) if parts.is_empty() => {}
            Entry::Occupied(_) => return Err(fail("the archive holds this path twice")),
            Entry::Vacant(slot) => {
                slot.insert(node);
            }
        }
    }
    let files = Files { bytes, nodes };
    // Every link, against the whole tree: `unpack` refuses the same ones.
    for (path, node) in &files.nodes {
        if matches!(node, Node::Symlink(_)) && files.follow(Path::new(path)) == Followed::Outside {
            return Err(StoreError::unsafe_entry(path.clone(), LEAVES_THROUGH_LINKS));
        }
    }
    Ok(files)
}

impl<'a> Files<'a> {
    /// The content of the regular file at `path` (relative to the tree's root, `/`
    /// separated), following symlinks inside the tree; `None` when there is no such file,
    /// when `path` is absolute or has a `..` component, or when it is a directory.
    pub fn get(&self, path: &str) -> Option<&'a [u8]> {
        let path = Path::new(path);
        safe_components(path).ok()?;
        let Followed::Inside(resolved) = self.follow(path) else {
            return None;
        };
        match self.nodes.get(resolved.to_str()?)? {
            Node::File { start, len } => self.bytes.get(*start..start + len),
            Node::Dir | Node::Symlink(_) => None,
        }
    }

    fn follow(&self, path: &Path) -> Followed {
        follow(path, |p| {
            Some(match self.nodes.get(p.to_str()?)? {
                Node::Dir => Kind::Dir,
                Node::File { .. } => Kind::File,
                Node::Symlink(target) => Kind::Link(Path::new(target)),
            })
        })
    }

    /// How many entries (files, directories, symlinks) the archive has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl std::fmt::Debug for Files<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("entries", &self.nodes.len())
            .field("archive_size", &self.bytes.len())
            .finish()
    }
}
