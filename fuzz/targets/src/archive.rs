//! Artifact archives: [`archive::unpack`] and [`archive::files`] on any bytes.

use std::fs;
use std::path::{Component, Path, PathBuf};

use rhone_store::{Digest, archive};

/// How many symlinks one lookup follows, as `archive`'s own resolver and Linux.
const MAX_LINKS: usize = 40;

/// Unpacks `data` as an artifact archive (with its own digest) into a fresh directory three
/// levels below a scratch root. Whatever the outcome, nothing appears outside the destination:
/// each directory above it holds only the way down. Refused, the destination does not exist
/// (all or nothing). Unpacked, every path of the tree resolves inside it (symlinks followed
/// on the real file system), [`archive::files`] accepts the same bytes and reads each regular
/// file as written, and packing the tree again gives an archive with the same files.
pub fn archive(data: &[u8]) {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let a = scratch.path().join("a");
    let b = a.join("b");
    fs::create_dir_all(&b).expect("the directories above the destination");
    let dest = b.join("dest");

    let unpacked = archive::unpack(data, &dest, &Digest::of(data));

    for (dir, expected) in [
        (scratch.path(), &["a"][..]),
        (a.as_path(), &["b"][..]),
        (
            b.as_path(),
            if unpacked.is_ok() {
                &["dest"][..]
            } else {
                &[][..]
            },
        ),
    ] {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("a scratch directory reads")
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, expected, "{} after {unpacked:?}", dir.display());
    }
    if unpacked.is_err() {
        return;
    }

    let files =
        archive::files(data).unwrap_or_else(|e| panic!("unpack accepted what files refuses: {e}"));
    let mut written = Vec::new();
    walk(&dest, Path::new(""), &mut written);
    for path in &written {
        assert!(
            resolves_inside(&dest, path),
            "{} resolves outside the tree",
            path.display()
        );
        let on_disk = dest.join(path);
        let meta = fs::symlink_metadata(&on_disk).expect("a written entry");
        if meta.file_type().is_file() {
            let content = fs::read(&on_disk).expect("a written file reads");
            if let Some(name) = path.to_str() {
                assert_eq!(
                    files.get(name),
                    Some(content.as_slice()),
                    "files and unpack disagree on {name}"
                );
            }
        }
    }

    let packed = archive::pack_dir(&dest).expect("an unpacked tree packs again");
    let repacked = archive::files(packed.bytes()).expect("a packed tree reads");
    for path in &written {
        let Some(name) = path.to_str() else { continue };
        if fs::symlink_metadata(dest.join(path)).is_ok_and(|m| m.file_type().is_file()) {
            assert_eq!(
                repacked.get(name),
                files.get(name),
                "packed again, {name} differs"
            );
        }
    }
}

/// Every path below `dir`, relative to the tree's root, without following symlinks.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(root.join(dir)).expect("a written directory reads") {
        let entry = entry.expect("a directory entry");
        let path = dir.join(entry.file_name());
        let is_dir = entry.file_type().expect("a file type").is_dir();
        out.push(path.clone());
        if is_dir {
            walk(root, &path, out);
        }
    }
}

/// Whether `path` (relative to `root`) stays inside `root` when every symlink on the way is
/// followed as the kernel would, on the file system itself; a path that names nothing (a
/// dangling link, a loop) is inside as long as the lookup never climbed out.
fn resolves_inside(root: &Path, path: &Path) -> bool {
    let mut pending: Vec<PathBuf> = Vec::new();
    if !push_reversed(&mut pending, path) {
        return false;
    }
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            if !resolved.pop() {
                return false;
            }
            continue;
        }
        resolved.push(&part);
        let here = root.join(&resolved);
        if fs::symlink_metadata(&here).is_ok_and(|m| m.file_type().is_symlink()) {
            links += 1;
            if links > MAX_LINKS {
                return true;
            }
            let target = fs::read_link(&here).expect("a symlink reads");
            resolved.pop();
            if !push_reversed(&mut pending, &target) {
                return false;
            }
        }
    }
    true
}

/// Pushes `path`'s components in reverse (`..` kept, `.` dropped); false if it is absolute.
fn push_reversed(pending: &mut Vec<PathBuf>, path: &Path) -> bool {
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push(PathBuf::from(name)),
            Component::ParentDir => pending.push(PathBuf::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}
