//! `unpack`: verified, all-or-nothing extraction of an artifact archive.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use std::collections::HashMap;

use super::{Followed, Kind, LEAVES_THROUGH_LINKS, check_link_target, follow, safe_components};
use crate::error::{Result, StoreError};
use rhone_core::digest::Digest;

/// Unpacks the tar archive `bytes` into `dest`, which must not exist yet.
///
/// The sha256 of `bytes` is checked against `expected` first: on a mismatch nothing is
/// read or written. Entries are extracted into a temporary directory next to `dest`,
/// which is renamed to `dest` only once every entry is in place; on any error it is
/// removed, so `dest` either holds the whole tree or does not exist.
///
/// Refused, as [`StoreError::UnsafeEntry`] naming the entry: absolute paths, `..`
/// components, symlinks that are absolute or lead out of the tree, entries whose path goes
/// through a symlink, duplicate entries, hard links, devices, fifos, and any other kind.
pub fn unpack(bytes: &[u8], dest: &Path, expected: &Digest) -> Result<()> {
    let actual = Digest::of(bytes);
    if actual != *expected {
        return Err(StoreError::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Ok(_) => {
            return Err(StoreError::io(
                format!("unpacking into {}", dest.display()),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        Err(e) => return Err(StoreError::io(format!("checking {}", dest.display()), e)),
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".rhone-unpack-")
        .tempdir_in(parent)
        .map_err(|e| StoreError::io(format!("creating a directory in {}", parent.display()), e))?;

    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| StoreError::io("reading the archive", e))?;
    // What each entry made, by its path in the tree, to follow every link through it.
    let mut tree: HashMap<PathBuf, Made> = HashMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| StoreError::io("reading an archive entry", e))?;
        if let Some((path, made)) = extract(&mut entry, staging.path())? {
            // A file or a link named twice fails to be created again; a directory would
            // not, and `files` refuses it too.
            if tree.insert(path, made).is_some() {
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                return Err(StoreError::unsafe_entry(name, TWICE));
            }
        }
    }
    for (path, made) in &tree {
        if let Made::Link { name, .. } = made {
            let followed = follow(path, |p| {
                Some(match tree.get(p)? {
                    Made::Dir => Kind::Dir,
                    Made::File => Kind::File,
                    Made::Link { target, .. } => Kind::Link(target),
                })
            });
            if followed == Followed::Outside {
                return Err(StoreError::unsafe_entry(name.clone(), LEAVES_THROUGH_LINKS));
            }
        }
    }

    let io_err = |what: &str, e| StoreError::io(format!("{what} {}", dest.display()), e);
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(|e| io_err("setting permissions of", e))?;
    // From here the rename, not the `TempDir`, decides what happens to the directory.
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, dest) {
        let _ = fs::remove_dir_all(&staged);
        return Err(io_err("moving the unpacked tree to", e));
    }
    Ok(())
}

/// What an entry made in the tree.
enum Made {
    Dir,
    File,
    /// A symlink, with the entry's name as the archive wrote it (for the error).
    Link {
        target: PathBuf,
        name: String,
    },
}

/// Extracts one entry under `root`; its path in the tree and what it made (`None` for the
/// root itself).
fn extract<R: Read>(entry: &mut tar::Entry<'_, R>, root: &Path) -> Result<Option<(PathBuf, Made)>> {
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let fail = |reason: &str| StoreError::unsafe_entry(name.clone(), reason);
    let path = entry
        .path()
        .map_err(|_| fail("the path is not valid"))?
        .into_owned();
    let components = safe_components(&path).map_err(fail)?;
    let kind = entry.header().entry_type();
    let Some((last, parents)) = components.split_last() else {
        // `./`, which common tar tools write for the root, names nothing to create.
        return match kind {
            EntryType::Directory => Ok(None),
            _ => Err(fail("the path is empty")),
        };
    };
    let in_tree: PathBuf = components.iter().collect();
    let made = match kind {
        EntryType::Regular | EntryType::Continuous => {
            let executable = entry.header().mode().map_err(|_| fail("bad mode field"))? & 0o111;
            let mode = if executable != 0 { 0o755 } else { 0o644 };
            let target = make_parents(root, parents, &name)?.join(last);
            let mut file = fs::OpenOptions::new()
                .write(true)
                // Never opens an existing file or follows an existing symlink.
                .create_new(true)
                .mode(mode)
                .open(&target)
                .map_err(|e| exists_or_io(e, &name))?;
            io::copy(entry, &mut file).map_err(|e| StoreError::io(format!("writing {name}"), e))?;
            Made::File
        }
        EntryType::Directory => {
            let target = make_parents(root, parents, &name)?.join(last);
            make_dir(&target, &name)?;
            Made::Dir
        }
        EntryType::Symlink => {
            let link = entry
                .link_name()
                .map_err(|_| fail("the symlink target is not valid"))?
                .ok_or_else(|| fail("the symlink has no target"))?
                .into_owned();
            check_link_target(parents.len(), &link).map_err(fail)?;
            let target = make_parents(root, parents, &name)?.join(last);
            std::os::unix::fs::symlink(&link, &target).map_err(|e| exists_or_io(e, &name))?;
            Made::Link {
                target: link,
                name: name.clone(),
            }
        }
        EntryType::Link => return Err(fail("hard links are not allowed")),
        EntryType::Char | EntryType::Block => return Err(fail("device files are not allowed")),
        EntryType::Fifo => return Err(fail("fifos are not allowed")),
        other => return Err(fail(&format!("unsupported entry type {other:?}"))),
    };
    Ok(Some((in_tree, made)))
}

/// Creates the directories `parents` under `root` one at a time, refusing to go through
/// anything that is not a real directory (a symlink above all), and returns their path.
fn make_parents(root: &Path, parents: &[&OsStr], name: &str) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for part in parents {
        dir.push(part);
        make_dir(&dir, name)?;
    }
    Ok(dir)
}

/// Makes sure `dir` is a real directory, creating it if missing.
fn make_dir(dir: &Path, name: &str) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_dir() => Ok(()),
        Ok(meta) if meta.file_type().is_symlink() => Err(StoreError::unsafe_entry(
            name,
            "the path goes through a symlink",
        )),
        Ok(_) => Err(StoreError::unsafe_entry(
            name,
            "a directory is needed where the archive has a file",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e)),
        Err(e) => Err(StoreError::io(format!("checking {}", dir.display()), e)),
    }
}

/// Why an entry whose path an earlier entry already named is refused.
const TWICE: &str = "the archive holds this path twice";

fn exists_or_io(e: io::Error, name: &str) -> StoreError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        StoreError::unsafe_entry(name, TWICE)
    } else {
        StoreError::io(format!("creating {name}"), e)
    }
}
