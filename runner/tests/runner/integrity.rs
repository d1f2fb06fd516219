//! Artifact integrity at start: the unpacked tree an allocation runs from is checked against
//! the artifact's digest before each start, so a change to it on the host (a bad disk, a
//! hand edit, anything but the artifact store) never runs; it is unpacked afresh instead.

use std::time::Duration;

use anyhow::{Context, Result};
use uuid::Uuid;

use crate::support::{Harness, SERVER_PY};

const WITHIN: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_unpacked_artifact_is_unpacked_afresh_before_the_next_start() -> Result<()> {
    let h = Harness::start().await?;
    let first = Uuid::now_v7();
    h.put(first, &h.spec(first, 1, "serve")?).await?;
    h.wait_stage(first, "ready", WITHIN).await?;
    let tree = h.work.join("artifacts").join(h.digest.hex());
    let server = tree.join("server.py");
    assert_eq!(std::fs::read_to_string(&server)?, SERVER_PY);

    // Someone changes the code on the host: the next start must not run it.
    std::fs::write(&server, "raise SystemExit('tampered')\n")?;
    let second = Uuid::now_v7();
    h.put(second, &h.spec(second, 1, "serve")?).await?;
    let ready = h.wait_stage(second, "ready", WITHIN).await?;
    assert!(ready["address"].as_str().is_some(), "{ready:#}");
    assert_eq!(
        std::fs::read_to_string(&server)?,
        SERVER_PY,
        "the tree was unpacked afresh from the store"
    );

    // Unchanged, a start takes the verified tree as it is (same inode, no new unpack).
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&server)?);
    let third = Uuid::now_v7();
    h.put(third, &h.spec(third, 1, "serve")?).await?;
    h.wait_stage(third, "ready", WITHIN).await?;
    let again = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&server)?);
    assert_eq!(inode, again, "an unchanged tree is kept");
    let _ = h.delete(first).await.context("drain")?;
    h.shutdown().await
}
