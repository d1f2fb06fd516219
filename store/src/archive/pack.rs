//! `pack_dir`: a directory tree to deterministic tar bytes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{Packed, check_link_target};
use crate::error::{Result, StoreError};

const FILE_MODE: u32 = 0o644;
const EXEC_MODE: u32 = 0o755;
const DIR_MODE: u32 = 0o755;
const LINK_MODE: u32 = 0o777;

enum Kind {
    Dir,
    File { executable: bool },
    Symlink(PathBuf),
}

struct Item {
    /// Relative to the packed directory.
    path: PathBuf,
    kind: Kind,
}

/// Packs the tree under `dir` (not `dir` itself) into a deterministic tar archive.
///
/// Regular files, directories and symlinks that stay inside the tree are packed; a
/// symlink pointing outside it, or any other kind of file (socket, fifo, device), is an
/// [`StoreError::UnsafeEntry`], since [`super::unpack`] would refuse it anyway.
pub fn pack_dir(dir: &Path) -> Result<Packed> {
    let mut items = Vec::new();
    collect(dir, Path::new(""), &mut items)?;
    // Component-wise order: a directory comes right before what it holds.
    items.sort_by(|a, b| a.path.cmp(&b.path));

    let mut builder = tar::Builder::new(Vec::new());
    for item in &items {
        append(&mut builder, dir, item).map_err(|e| {
            StoreError::io(format!("adding {} to the archive", item.path.display()), e)
        })?;
    }
    let bytes = builder
        .into_inner()
        .map_err(|e| StoreError::io("finishing the archive", e))?;
    let packed = Packed::from_bytes(bytes);
    tracing::debug!(dir = %dir.display(), digest = %packed.digest(), size = packed.size(), "packed");
    Ok(packed)
}

fn collect(root: &Path, rel: &Path, items: &mut Vec<Item>) -> Result<()> {
    let dir = root.join(rel);
    let entries =
        fs::read_dir(&dir).map_err(|e| StoreError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("reading {}", dir.display()), e))?;
        let path = rel.join(entry.file_name());
        let full = entry.path();
        // `symlink_metadata`, not `metadata`: a symlink is packed as a symlink.
        let meta = fs::symlink_metadata(&full)
            .map_err(|e| StoreError::io(format!("reading {}", full.display()), e))?;
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_file() {
            Kind::File {
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full)
                .map_err(|e| StoreError::io(format!("reading link {}", full.display()), e))?;
            let depth = path.components().count() - 1;
            check_link_target(depth, &target)
                .map_err(|reason| StoreError::unsafe_entry(path.display().to_string(), reason))?;
            Kind::Symlink(target)
        } else {
            return Err(StoreError::unsafe_entry(
                path.display().to_string(),
                "not a regular file, directory or symlink",
            ));
        };
        let is_dir = matches!(kind, Kind::Dir);
        items.push(Item {
            path: path.clone(),
            kind,
        });
        if is_dir {
            collect(root, &path, items)?;
        }
    }
    Ok(())
}

fn append(builder: &mut tar::Builder<Vec<u8>>, root: &Path, item: &Item) -> std::io::Result<()> {
    match &item.kind {
        Kind::Dir => {
            let mut header = header(EntryType::Directory, DIR_MODE, 0);
            builder.append_data(&mut header, &item.path, std::io::empty())
        }
        Kind::File { executable } => {
            // Read whole, so a file that changes while we pack cannot make the size in
            // the header disagree with the data after it.
            let data = fs::read(root.join(&item.path))?;
            let mode = if *executable { EXEC_MODE } else { FILE_MODE };
            let mut header = header(EntryType::Regular, mode, data.len() as u64);
            builder.append_data(&mut header, &item.path, data.as_slice())
        }
        Kind::Symlink(target) => {
            let mut header = header(EntryType::Symlink, LINK_MODE, 0);
            builder.append_link(&mut header, &item.path, target)
        }
    }
}

/// A GNU header with every field that could vary between machines fixed: mtime, uid and
/// gid 0, and no user or group names (a fresh GNU header has them zeroed).
fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}
