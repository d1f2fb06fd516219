//! Secrets at rest (`rhone_schema::secrets`): versions, an allocation's bundle that stays as
//! it started when the environment's secrets change, and a key rotation that re-seals every
//! row and bundle so the old key can go.

use anyhow::Result;
use rhone_core::secret::Secret;
use rhone_schema::{
    entity::secret,
    fixtures,
    secrets::{self, Keyring},
};
use sea_orm::{DatabaseConnection, EntityTrait};

use crate::support::on_both_backends;

on_both_backends!(an_allocation_keeps_its_secrets_and_rotation_reseals_everything,);

const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const B: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
const DIGEST: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000bb";

async fn an_allocation_keeps_its_secrets_and_rotation_reseals_everything(
    db: DatabaseConnection,
) -> Result<()> {
    let t = fixtures::tenancy(&db, "secrets", "preview").await?;
    fixtures::artifact(&db, DIGEST).await?;
    let d = fixtures::deployment(&db, &t, DIGEST, "validating").await?;
    let alloc = fixtures::allocation(&db, &d).await?;
    let old = Keyring::new(A, &[])?;

    // Without a keyring: an environment with no secrets gives none.
    assert!(secrets::of_allocation(&db, None, &alloc).await?.is_empty());

    let v1 = secrets::set(
        &db,
        &old,
        t.environment.id,
        "API_KEY",
        &Secret::new("one"),
        "user:a",
    )
    .await?;
    assert_eq!((v1.version, v1.set_by.as_str()), (1, "user:a"));
    let err = secrets::of_allocation(&db, None, &alloc).await.map(|_| ());
    assert!(err.is_err_and(|e| {
        e.to_string()
            .starts_with("the environment has secrets (API_KEY) and this worker has no key")
    }),);
    let first = secrets::of_allocation(&db, Some(&old), &alloc).await?;
    assert_eq!(first["API_KEY"].expose(), "one");

    // The environment's value changes; the allocation keeps what it started with.
    let v2 = secrets::set(
        &db,
        &old,
        t.environment.id,
        "API_KEY",
        &Secret::new("two"),
        "user:b",
    )
    .await?;
    assert_eq!(v2.version, 2);
    let reread = rhone_schema::entity::allocation::Entity::find_by_id(alloc.id)
        .one(&db)
        .await?
        .ok_or_else(|| anyhow::anyhow!("allocation gone"))?;
    assert!(
        reread
            .sealed_secrets
            .as_deref()
            .is_some_and(|b| !b.contains("one"))
    );
    assert_eq!(
        secrets::of_allocation(&db, Some(&old), &reread).await?["API_KEY"].expose(),
        "one"
    );

    // Rotation: B is the key, A an old one; everything is re-sealed under B, once.
    let rotating = Keyring::new(B, &[A])?;
    assert_eq!(secrets::reseal_all(&db, &rotating).await?, 2);
    assert_eq!(secrets::reseal_all(&db, &rotating).await?, 0);
    let only_new = Keyring::new(B, &[])?;
    let rows = secret::Entity::find().all(&db).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(only_new.open(&rows[0])?.expose(), "two");
    let reread = rhone_schema::entity::allocation::Entity::find_by_id(alloc.id)
        .one(&db)
        .await?
        .ok_or_else(|| anyhow::anyhow!("allocation gone"))?;
    assert_eq!(
        secrets::of_allocation(&db, Some(&only_new), &reread).await?["API_KEY"].expose(),
        "one"
    );
    assert!(
        old.open(&rows[0]).is_err(),
        "the old key no longer opens it"
    );

    // Without the key, an allocation whose secrets are sealed is refused, even once the
    // environment has none left: it never starts without what it started with.
    secret::Entity::delete_many().exec(&db).await?;
    let err = secrets::of_allocation(&db, None, &reread).await.map(|_| ());
    assert!(err.is_err_and(|e| {
        e.to_string().starts_with(&format!(
            "the environment has secrets (sealed with allocation {})",
            alloc.id
        ))
    }));
    Ok(())
}
