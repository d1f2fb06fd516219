//! Pack determinism, round trips, and one hand-built malicious archive per refusal.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tar::{EntryType, Header};

use super::{Packed, files, pack_dir, unpack};
use crate::error::StoreError;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A small tree with every kind of thing an artifact holds, including a path longer than
/// the 100 bytes a tar header has room for.
fn sample_tree(root: &Path) -> std::io::Result<()> {
    fs::create_dir_all(root.join("bin"))?;
    fs::create_dir_all(root.join("dist/assets"))?;
    fs::create_dir_all(root.join("empty"))?;
    fs::write(root.join("bin/server"), b"#!/bin/sh\necho hi\n")?;
    fs::set_permissions(root.join("bin/server"), fs::Permissions::from_mode(0o700))?;
    fs::write(
        root.join("dist/manifest.json"),
        br#"{"app.js":"app.1234abcd.js"}"#,
    )?;
    fs::write(root.join("dist/assets/app.1234abcd.js"), b"console.log(1)")?;
    std::os::unix::fs::symlink("assets/app.1234abcd.js", root.join("dist/app.js"))?;
    let long = root.join("dist").join("x".repeat(120));
    fs::write(long, b"long name")?;
    Ok(())
}

/// Every path in the tree with what identifies it: kind, content or target, exec bit.
fn listing(root: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(root).map_err(std::io::Error::other)?;
            let meta = fs::symlink_metadata(&path)?;
            let what = if meta.is_symlink() {
                format!("-> {}", fs::read_link(&path)?.display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                format!(
                    "exec={exec} {:?}",
                    String::from_utf8_lossy(&fs::read(&path)?)
                )
            };
            out.push(format!("{} {what}", rel.display()));
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn pack_is_deterministic_and_ignores_times_and_owner_bits() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    sample_tree(&a)?;
    sample_tree(&b)?;
    // Same content, different metadata: other mtimes, other non-exec permission bits.
    let file = fs::File::options()
        .write(true)
        .open(b.join("dist/manifest.json"))?;
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))?;
    fs::set_permissions(
        b.join("dist/manifest.json"),
        fs::Permissions::from_mode(0o600),
    )?;

    let first = pack_dir(&a)?;
    assert_eq!(pack_dir(&a)?.digest(), first.digest(), "same tree twice");
    assert_eq!(
        pack_dir(&b)?.digest(),
        first.digest(),
        "same content elsewhere"
    );

    fs::write(b.join("dist/assets/app.1234abcd.js"), b"console.log(2)")?;
    assert_ne!(pack_dir(&b)?.digest(), first.digest(), "one byte changed");
    Ok(())
}

#[test]
fn pack_then_unpack_gives_the_same_tree() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    sample_tree(&src)?;
    let packed = pack_dir(&src)?;
    let dest = tmp.path().join("out");
    unpack(packed.bytes(), &dest, packed.digest())?;
    assert_eq!(listing(&dest)?, listing(&src)?);
    assert!(listing(&dest)?.contains(&"bin/server exec=true \"#!/bin/sh\\necho hi\\n\"".into()));
    Ok(())
}

#[test]
fn pack_refuses_links_out_of_the_tree_and_special_files() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub"))?;
    std::os::unix::fs::symlink("../../etc", src.join("sub/out"))?;
    let err = pack_dir(&src).expect_err("packing must fail");
    assert!(
        matches!(&err, StoreError::UnsafeEntry { path, reason }
            if path == "sub/out" && reason.contains("outside")),
        "{err}"
    );

    let src = tmp.path().join("src2");
    fs::create_dir_all(&src)?;
    let _socket = std::os::unix::net::UnixListener::bind(src.join("sock"))?;
    let err = pack_dir(&src).expect_err("packing must fail");
    assert!(
        matches!(&err, StoreError::UnsafeEntry { path, .. } if path == "sock"),
        "{err}"
    );
    Ok(())
}

/// Appends one raw entry, with the name and link name written straight into the header
/// so none of the `tar` crate's own checks get in the way.
fn raw(out: &mut Vec<u8>, name: &str, kind: EntryType, link: &str, data: &[u8]) {
    let mut header = Header::new_gnu();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// An archive that starts with a harmless file (so a half-done extraction would leave
/// something behind), then `bad`.
fn malicious(bad: &[(&str, EntryType, &str)]) -> Packed {
    let mut out = Vec::new();
    raw(
        &mut out,
        "ok/first.txt",
        EntryType::Regular,
        "",
        b"harmless",
    );
    for (name, kind, link) in bad {
        let data: &[u8] = if *kind == EntryType::Regular {
            b"evil"
        } else {
            b""
        };
        raw(&mut out, name, *kind, link, data);
    }
    out.extend_from_slice(&[0; 1024]);
    Packed::from_bytes(out)
}

/// Unpacking `packed` fails with `UnsafeEntry` for `entry`, with a reason that contains
/// `reason`, and leaves the parent directory as empty as it was.
fn check_rejected(packed: &Packed, entry: &str, reason: &str) -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dest = tmp.path().join("dest");
    let err = unpack(packed.bytes(), &dest, packed.digest()).expect_err("unpacking must fail");
    match &err {
        StoreError::UnsafeEntry { path, reason: why } if path == entry && why.contains(reason) => {
            assert!(
                err.to_string().contains(entry),
                "message names the entry: {err}"
            );
        }
        _ => panic!("expected UnsafeEntry({entry:?}, ~{reason:?}), got {err:?}"),
    }
    let left: Vec<_> = fs::read_dir(tmp.path())?.collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[test]
fn unpack_rejects_unsafe_entries_and_leaves_nothing() -> TestResult {
    use EntryType::*;
    // (entries after a harmless file, the entry named in the error, part of the reason)
    type Case<'a> = (&'a [(&'a str, EntryType, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("/tmp/rhone-evil", Regular, "")],
            "/tmp/rhone-evil",
            "absolute",
        ),
        (&[("../evil", Regular, "")], "../evil", "`..`"),
        (&[("ok/../../evil", Regular, "")], "ok/../../evil", "`..`"),
        (&[("link", Symlink, "/etc/passwd")], "link", "absolute"),
        (&[("ok/link", Symlink, "../../x")], "ok/link", "outside"),
        (&[("link", Symlink, "..")], "link", "outside"),
        (&[("hard", Link, "ok/first.txt")], "hard", "hard link"),
        (&[("tty", Char, "")], "tty", "device"),
        (&[("disk", Block, "")], "disk", "device"),
        (&[("pipe", Fifo, "")], "pipe", "fifo"),
        // A link that is harmless alone, then an entry written through it.
        (
            &[("d", Symlink, "."), ("d/f", Regular, "")],
            "d/f",
            "through a symlink",
        ),
        (
            &[("d", Symlink, "."), ("d/l", Symlink, "../x")],
            "d/l",
            "through a symlink",
        ),
        // Each target's text stays inside the tree; through `b/c` (the root) it leaves.
        (
            &[("b/c", Symlink, ".."), ("a", Symlink, "b/c/b/c/../../..")],
            "a",
            "outside the tree through another symlink",
        ),
        (
            &[("b/up", Symlink, ".."), ("b/x", Symlink, "up/b/up/..")],
            "b/x",
            "outside the tree through another symlink",
        ),
        (&[("ok/first.txt", Regular, "")], "ok/first.txt", "twice"),
        // A directory named twice: `unpack` took it (creating a directory that exists is no
        // error) while `files` refused it. Found by the `archive` fuzz target
        // (`fuzz/corpus/archive/crash-directory-twice.tar`).
        (
            &[("d/", Directory, ""), ("d/", Directory, "")],
            "d/",
            "twice",
        ),
        (
            &[("ok", Directory, ""), ("ok", Directory, "")],
            "ok",
            "twice",
        ),
        (
            &[("ok/first.txt/x", Regular, "")],
            "ok/first.txt/x",
            "has a file",
        ),
    ];
    for (bad, entry, reason) in cases {
        let packed = malicious(bad);
        check_rejected(&packed, entry, reason)?;
        // `files` refuses the same archives, for the same reason.
        match files(packed.bytes()) {
            Err(StoreError::UnsafeEntry { path, reason: why })
                if path == *entry && why.contains(reason) => {}
            other => panic!("files: expected UnsafeEntry({entry:?}, ~{reason:?}), got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn files_reads_what_pack_wrote_without_unpacking() -> TestResult {
    let tmp = tempfile::tempdir()?;
    sample_tree(tmp.path())?;
    fs::create_dir_all(tmp.path().join("public"))?;
    // A directory link and a link to a link, both inside the tree.
    std::os::unix::fs::symlink("../dist/assets", tmp.path().join("public/assets"))?;
    std::os::unix::fs::symlink("app.js", tmp.path().join("dist/again.js"))?;
    std::os::unix::fs::symlink("loop", tmp.path().join("loop"))?;
    let packed = pack_dir(tmp.path())?;
    let files = files(packed.bytes())?;
    let read = |path: &str| {
        files
            .get(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let js = Some("console.log(1)".to_owned());
    assert_eq!(read("dist/assets/app.1234abcd.js"), js);
    assert_eq!(read("./dist//assets/app.1234abcd.js"), js);
    assert_eq!(read("dist/app.js"), js, "a symlink is followed");
    assert_eq!(read("dist/again.js"), js, "and a link to a link");
    assert_eq!(
        read("public/assets/app.1234abcd.js"),
        js,
        "and a directory link"
    );
    assert_eq!(read("bin/server"), Some("#!/bin/sh\necho hi\n".to_owned()));
    assert_eq!(
        read(&format!("dist/{}", "x".repeat(120))),
        Some("long name".to_owned())
    );
    for absent in [
        "dist",
        "empty",
        "dist/missing.js",
        "bin/server/x",
        "../dist/app.js",
        "/dist/app.js",
        "dist/../dist/app.js",
        "loop",
        "",
    ] {
        assert_eq!(read(absent), None, "{absent:?}");
    }
    Ok(())
}

#[test]
fn unpack_checks_the_digest_before_writing_anything() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let good = malicious(&[]);
    let other = Packed::from_bytes(b"something else".to_vec());
    let dest = tmp.path().join("dest");
    let err = unpack(good.bytes(), &dest, other.digest()).expect_err("wrong digest");
    assert!(
        matches!(&err, StoreError::DigestMismatch { expected, actual }
            if expected == other.digest() && actual == good.digest()),
        "{err:?}"
    );
    assert_eq!(fs::read_dir(tmp.path())?.count(), 0);

    unpack(good.bytes(), &dest, good.digest())?;
    assert_eq!(fs::read(dest.join("ok/first.txt"))?, b"harmless");
    let again = unpack(good.bytes(), &dest, good.digest());
    assert!(
        matches!(again, Err(StoreError::Io { .. })),
        "dest exists: {again:?}"
    );
    Ok(())
}
