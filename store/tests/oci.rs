//! OCI push and pull against a real registry (docker-registry).

use anyhow::Result;
use rhone_store::{archive, oci};

#[tokio::test]
async fn push_then_pull_gives_the_same_bytes_and_digest() -> Result<()> {
    let registry = rhone_testkit::registry::server().await?;
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dist"))?;
    std::fs::write(src.join("dist/index.html"), "<h1>hi</h1>")?;
    let packed = archive::pack_dir(&src)?;

    let repository = rhone_testkit::unique_name("push_then_pull");
    let reference = registry.reference(&repository, "v1");
    let manifest = oci::push(&reference, &packed).await?;

    let pulled = oci::pull(&reference).await?;
    assert_eq!(pulled.digest(), packed.digest());
    assert_eq!(pulled.bytes(), packed.bytes());

    // The manifest digest pins this push.
    let pinned = format!("{}/{repository}@{manifest}", registry.address);
    assert_eq!(oci::pull(&pinned).await?, packed);

    // Pushing the same artifact again gives the same manifest.
    assert_eq!(oci::push(&reference, &packed).await?, manifest);

    let dest = tmp.path().join("out");
    archive::unpack(pulled.bytes(), &dest, pulled.digest())?;
    assert_eq!(
        std::fs::read_to_string(dest.join("dist/index.html"))?,
        "<h1>hi</h1>"
    );
    Ok(())
}

#[tokio::test]
async fn pulling_a_missing_tag_is_an_oci_error() -> Result<()> {
    let registry = rhone_testkit::registry::server().await?;
    let reference = registry.reference(&rhone_testkit::unique_name("missing_tag"), "nope");
    let err = oci::pull(&reference).await.expect_err("nothing was pushed");
    let text = err.to_string();
    assert!(
        text.contains("pull manifest") && text.contains(&reference),
        "{text}"
    );
    Ok(())
}
