//! `ArtifactStore` against a local directory and a real S3 API server (s3s-fs): round
//! trips, idempotent puts, tampered objects and unknown digests.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_s3::primitives::ByteStream;
use rhone_store::{ArtifactStore, Digest, Packed, S3Config, S3Store, SecretKey, StoreError};

fn packed_sample(root: &Path, content: &str) -> Result<Packed> {
    std::fs::create_dir_all(root.join("dist"))?;
    std::fs::write(root.join("dist/index.html"), content)?;
    std::fs::write(root.join("server"), b"#!/bin/sh\n")?;
    Ok(rhone_store::archive::pack_dir(root)?)
}

/// A store on the test S3 server, in a fresh bucket of its own.
async fn s3_store(test: &str) -> Result<S3Store> {
    let s3 = rhone_testkit::s3::server().await?;
    // Bucket names allow `-` but not `_`.
    let bucket = rhone_testkit::unique_name(test).replace('_', "-");
    let store = S3Store::new(&S3Config {
        endpoint: s3.endpoint,
        region: s3.region,
        bucket,
        prefix: "artifacts".into(),
        access_key_id: s3.access_key,
        secret_access_key: SecretKey::new(s3.secret_key),
    })?;
    store
        .client()
        .create_bucket()
        .bucket(store.bucket())
        .send()
        .await
        .with_context(|| format!("creating bucket {}", store.bucket()))?;
    Ok(store)
}

/// put (twice), exists and get agree, and get gives back exactly what was put.
async fn check_round_trip(store: &ArtifactStore, packed: &Packed) -> Result<()> {
    ensure!(
        !store.exists(packed.digest()).await?,
        "not there before put"
    );
    assert_eq!(&store.put(packed).await?, packed.digest());
    assert_eq!(&store.put(packed).await?, packed.digest(), "second put");
    ensure!(store.exists(packed.digest()).await?, "there after put");
    assert_eq!(store.get(packed.digest()).await?, packed.bytes());
    Ok(())
}

fn check_mismatch(result: Result<Vec<u8>, StoreError>, expected: &Digest, tampered: &[u8]) {
    match result {
        Err(StoreError::DigestMismatch {
            expected: e,
            actual,
        }) => {
            assert_eq!(&e, expected);
            assert_eq!(actual, Digest::of(tampered));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

fn check_not_found(result: Result<Vec<u8>, StoreError>, digest: &Digest) {
    match result {
        Err(StoreError::NotFound(d)) => assert_eq!(&d, digest),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn local_round_trip_is_idempotent_and_atomic() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let packed = packed_sample(&tmp.path().join("src"), "hello")?;
    let dir = tmp.path().join("store");
    let store = ArtifactStore::local(&dir);
    check_round_trip(&store, &packed).await?;
    // One file, named by its digest; no temporary file left over.
    let names: Vec<String> = std::fs::read_dir(dir.join("sha256"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    assert_eq!(names, [packed.digest().hex()]);
    Ok(())
}

#[tokio::test]
async fn local_tampered_object_is_a_digest_mismatch() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let packed = packed_sample(&tmp.path().join("src"), "hello")?;
    let local = rhone_store::LocalStore::new(tmp.path().join("store"));
    local.put(&packed).await?;
    let tampered = b"not the artifact".to_vec();
    std::fs::write(local.path_of(packed.digest()), &tampered)?;
    let store = ArtifactStore::Local(local);
    check_mismatch(store.get(packed.digest()).await, packed.digest(), &tampered);
    // A put of the same digest does not quietly repair (or hide) the damage.
    store.put(&packed).await?;
    check_mismatch(store.get(packed.digest()).await, packed.digest(), &tampered);
    Ok(())
}

#[tokio::test]
async fn local_unknown_digest_is_not_found() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = ArtifactStore::local(tmp.path());
    let digest = Digest::of(b"never stored");
    check_not_found(store.get(&digest).await, &digest);
    ensure!(!store.exists(&digest).await?);
    Ok(())
}

#[tokio::test]
async fn s3_round_trip_is_idempotent() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let packed = packed_sample(tmp.path(), "hello s3")?;
    let store = ArtifactStore::S3(s3_store("s3_round_trip_is_idempotent").await?);
    check_round_trip(&store, &packed).await
}

#[tokio::test]
async fn s3_tampered_object_is_a_digest_mismatch() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let packed = packed_sample(tmp.path(), "hello s3")?;
    let s3 = s3_store("s3_tampered_object_is_a_digest_mismatch").await?;
    s3.put(&packed).await?;
    let tampered = b"overwritten behind the store's back".to_vec();
    s3.client()
        .put_object()
        .bucket(s3.bucket())
        .key(s3.key_of(packed.digest()))
        .body(ByteStream::from(tampered.clone()))
        .send()
        .await
        .context("overwriting the object")?;
    let store = ArtifactStore::S3(s3);
    check_mismatch(store.get(packed.digest()).await, packed.digest(), &tampered);
    Ok(())
}

#[tokio::test]
async fn s3_unknown_digest_is_not_found() -> Result<()> {
    let store = ArtifactStore::S3(s3_store("s3_unknown_digest_is_not_found").await?);
    let digest = Digest::of(b"never stored");
    check_not_found(store.get(&digest).await, &digest);
    ensure!(!store.exists(&digest).await?);
    Ok(())
}

#[tokio::test]
async fn s3_wrong_secret_fails_naming_the_operation_not_the_secret() -> Result<()> {
    let s3 = rhone_testkit::s3::server().await?;
    let store = ArtifactStore::s3(&S3Config {
        endpoint: s3.endpoint,
        region: s3.region,
        bucket: "any".into(),
        prefix: String::new(),
        access_key_id: s3.access_key,
        secret_access_key: SecretKey::new("wrong-secret-value"),
    })?;
    let err = match store.exists(&Digest::of(b"x")).await {
        Err(e @ StoreError::S3 { .. }) => e,
        other => bail!("expected an S3 error, got {other:?}"),
    };
    let chain = format!("{:#}", anyhow::Error::new(err));
    assert!(chain.contains("S3 HeadObject of sha256/"), "{chain}");
    assert!(!chain.contains("wrong-secret-value"), "{chain}");
    Ok(())
}
