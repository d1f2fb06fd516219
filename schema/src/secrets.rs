//! Secrets at rest: each value is sealed with XChaCha20-Poly1305 under the operator's key
//! (`RHONE_SECRETS_KEY`, or `RHONE_SECRETS_KEY_FILE`), its associated data binding it to its
//! environment, name and version, so a sealed value copied to another row does not open.
//! The `secrets` table holds only ciphertext, a random 24-byte nonce and the sealing key's
//! id. Rotation: the new key becomes `RHONE_SECRETS_KEY`, the old ones are listed in
//! `RHONE_SECRETS_OLD_KEYS` (still opened), and [`reseal_all`] (which `rhone serve api` runs
//! at start while old keys are listed) seals every row and allocation bundle under the new
//! key, after which the old ones can go.

use std::path::Path;

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use chrono::Utc;
use rhone_core::secret::Secret;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    SchemaError,
    entity::{database_provider, secret},
};

/// The operator's key, hex (64 digits: 32 bytes).
pub const KEY_VAR: &str = "RHONE_SECRETS_KEY";
/// A file holding the key, in the same form.
pub const KEY_FILE_VAR: &str = "RHONE_SECRETS_KEY_FILE";
/// Earlier keys, comma-separated, still opened until [`reseal_all`] has run.
pub const OLD_KEYS_VAR: &str = "RHONE_SECRETS_OLD_KEYS";

/// The longest secret value taken.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// What is wrong with a key or a sealed value. Never carries key material or a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{var}: a key is 64 hexadecimal digits (32 bytes), e.g. from `openssl rand -hex 32`")]
    BadKey { var: &'static str },
    #[error("{var}: cannot read the key file {path}: {source}")]
    KeyFile {
        var: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "secret {name} (version {version}) is sealed under key {key_id}, which is neither {KEY_VAR} nor among {OLD_KEYS_VAR}"
    )]
    UnknownKey {
        name: String,
        version: i64,
        key_id: String,
    },
    #[error("secret {name} (version {version}) does not open: it was altered or moved")]
    Tampered { name: String, version: i64 },
    #[error(
        "the environment has secrets ({}) and this worker has no key to open them: set {KEY_VAR} or {KEY_FILE_VAR} as on the API",
        names.join(", ")
    )]
    NoKey { names: Vec<String> },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// One key and its id (the first 16 hex digits of its SHA-256).
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn parse(var: &'static str, hex_key: &str) -> Result<Key, SecretsError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SecretsError::BadKey { var })?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretsError::BadKey { var })?;
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        Ok(Key {
            id,
            cipher: XChaCha20Poly1305::new(&bytes.into()),
        })
    }
}

/// The key secrets are sealed under and the earlier keys they may still be sealed under.
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("old", &self.old.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// Two keyrings are equal when they hold the same keys (compared by id).
impl PartialEq for Keyring {
    fn eq(&self, other: &Self) -> bool {
        let ids = |k: &Keyring| {
            std::iter::once(&k.current)
                .chain(&k.old)
                .map(|k| k.id.clone())
                .collect::<Vec<_>>()
        };
        ids(self) == ids(other)
    }
}

impl Eq for Keyring {}

/// A value as stored.
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

/// What a sealed value is bound to.
fn aad(environment_id: Uuid, name: &str, version: i64) -> Vec<u8> {
    format!("rhone-secret\0{environment_id}\0{name}\0{version}").into_bytes()
}

impl Keyring {
    /// The keyring from `current` and `old` (hex keys).
    pub fn new(current: &str, old: &[&str]) -> Result<Keyring, SecretsError> {
        Ok(Keyring {
            current: Key::parse(KEY_VAR, current)?,
            old: old
                .iter()
                .filter(|k| !k.trim().is_empty())
                .map(|k| Key::parse(OLD_KEYS_VAR, k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The keyring the environment configures through `get` (`std::env::var`, or a test's
    /// map): `None` when neither [`KEY_VAR`] nor [`KEY_FILE_VAR`] is set.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Keyring>, SecretsError> {
        let current = match (get(KEY_VAR), get(KEY_FILE_VAR)) {
            (Some(key), _) => key,
            (None, Some(path)) => read_key_file(Path::new(&path))?,
            (None, None) => return Ok(None),
        };
        let old = get(OLD_KEYS_VAR).unwrap_or_default();
        let old: Vec<&str> = old.split(',').collect();
        Keyring::new(&current, &old).map(Some)
    }

    /// A new random key, hex, for an install that has none (`rhone dev`).
    pub fn generate() -> String {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        hex::encode(key)
    }

    /// Whether earlier keys are listed: a rotation is under way.
    pub fn rotating(&self) -> bool {
        !self.old.is_empty()
    }

    /// The id of the key new values are sealed under.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// `msg` sealed under the current key with `aad`: its random nonce and ciphertext.
    fn seal_bytes(&self, aad: &[u8], msg: &[u8]) -> ([u8; 24], Vec<u8>) {
        use rand::RngCore;
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption into a Vec fails only when the buffer cannot grow.
        let ciphertext = self
            .current
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg, aad })
            .unwrap_or_default();
        (nonce, ciphertext)
    }

    /// The clear bytes of `ciphertext` sealed under key `key_id`; `None` when the key is not
    /// held, `Some(Err)` when the bytes do not open (altered, or bound to other data).
    fn open_bytes(
        &self,
        key_id: &str,
        aad: &[u8],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Option<Result<Vec<u8>, ()>> {
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == key_id)?;
        let Ok(nonce) = <[u8; 24]>::try_from(nonce) else {
            return Some(Err(()));
        };
        let payload = Payload {
            msg: ciphertext,
            aad,
        };
        Some(
            key.cipher
                .decrypt(&XNonce::from(nonce), payload)
                .map_err(|_| ()),
        )
    }

    /// Seals `value` as version `version` of secret `name` of `environment_id`.
    pub fn seal(&self, environment_id: Uuid, name: &str, version: i64, value: &Secret) -> Sealed {
        let aad = aad(environment_id, name, version);
        let (nonce, ciphertext) = self.seal_bytes(&aad, value.expose().as_bytes());
        Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
            key_id: self.current.id.clone(),
        }
    }

    /// The value of a stored secret.
    pub fn open(&self, row: &secret::Model) -> Result<Secret, SecretsError> {
        let tampered = || SecretsError::Tampered {
            name: row.name.clone(),
            version: row.version,
        };
        let aad = aad(row.environment_id, &row.name, row.version);
        let clear = self
            .open_bytes(&row.key_id, &aad, &row.nonce, &row.ciphertext)
            .ok_or_else(|| SecretsError::UnknownKey {
                name: row.name.clone(),
                version: row.version,
                key_id: row.key_id.clone(),
            })?
            .map_err(|()| tampered())?;
        String::from_utf8(clear)
            .map(Secret::new)
            .map_err(|_| tampered())
    }

    /// `clear` sealed under the current key with `aad`, as text: hex `key id:nonce:ciphertext`.
    fn seal_text(&self, aad: &[u8], clear: &[u8]) -> String {
        let (nonce, ciphertext) = self.seal_bytes(aad, clear);
        format!(
            "{}:{}:{}",
            self.current.id,
            hex::encode(nonce),
            hex::encode(ciphertext)
        )
    }

    /// The clear bytes of `sealed` ([`Keyring::seal_text`]); errors name the value as `name`.
    fn open_text(&self, aad: &[u8], sealed: &str, name: &str) -> Result<Vec<u8>, SecretsError> {
        let tampered = || SecretsError::Tampered {
            name: name.to_owned(),
            version: 0,
        };
        let mut parts = sealed.splitn(3, ':');
        let (Some(key_id), Some(nonce), Some(ciphertext)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(tampered());
        };
        let (Ok(nonce), Ok(ciphertext)) = (hex::decode(nonce), hex::decode(ciphertext)) else {
            return Err(tampered());
        };
        self.open_bytes(key_id, aad, &nonce, &ciphertext)
            .ok_or_else(|| SecretsError::UnknownKey {
                name: name.to_owned(),
                version: 0,
                key_id: key_id.to_owned(),
            })?
            .map_err(|()| tampered())
    }

    /// Seals `secrets` (name → value) as the bundle of allocation `allocation_id`.
    pub fn seal_bundle(
        &self,
        allocation_id: Uuid,
        secrets: &std::collections::BTreeMap<String, Secret>,
    ) -> String {
        let clear: std::collections::BTreeMap<&str, &str> = secrets
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let clear = serde_json::to_vec(&clear).unwrap_or_default();
        self.seal_text(&bundle_aad(allocation_id), &clear)
    }

    /// The secrets of allocation `allocation_id`'s bundle.
    pub fn open_bundle(
        &self,
        allocation_id: Uuid,
        bundle: &str,
    ) -> Result<std::collections::BTreeMap<String, Secret>, SecretsError> {
        let name = format!("(the bundle of allocation {allocation_id})");
        let clear = self.open_text(&bundle_aad(allocation_id), bundle, &name)?;
        let clear: std::collections::BTreeMap<String, String> = serde_json::from_slice(&clear)
            .map_err(|_| SecretsError::Tampered { name, version: 0 })?;
        Ok(clear
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect())
    }

    /// Seals the admin URL of database provider `provider_id`.
    pub fn seal_provider(&self, provider_id: Uuid, admin_url: &Secret) -> String {
        self.seal_text(&provider_aad(provider_id), admin_url.expose().as_bytes())
    }

    /// The admin URL of a database provider.
    pub fn open_provider(
        &self,
        provider: &database_provider::Model,
    ) -> Result<Secret, SecretsError> {
        let name = format!("(the admin URL of provider {})", provider.name);
        let clear = self.open_text(
            &provider_aad(provider.id),
            &provider.sealed_admin_url,
            &name,
        )?;
        String::from_utf8(clear)
            .map(Secret::new)
            .map_err(|_| SecretsError::Tampered { name, version: 0 })
    }
}

/// What a provider's sealed admin URL is bound to.
fn provider_aad(provider_id: Uuid) -> Vec<u8> {
    format!("rhone-database-provider\0{provider_id}").into_bytes()
}

/// What an allocation's sealed bundle is bound to.
fn bundle_aad(allocation_id: Uuid) -> Vec<u8> {
    format!("rhone-allocation-secrets\0{allocation_id}").into_bytes()
}

fn read_key_file(path: &Path) -> Result<String, SecretsError> {
    std::fs::read_to_string(path).map_err(|source| SecretsError::KeyFile {
        var: KEY_FILE_VAR,
        path: path.display().to_string(),
        source,
    })
}

/// Sets secret `name` of `environment_id` to `value`: version 1, or one more than the
/// version it replaces. Returns the row as stored.
pub async fn set<C: ConnectionTrait>(
    db: &C,
    keys: &Keyring,
    environment_id: Uuid,
    name: &str,
    value: &Secret,
    set_by: &str,
) -> Result<secret::Model, SecretsError> {
    let existing = secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(environment_id))
        .filter(secret::Column::Name.eq(name))
        .one(db)
        .await
        .map_err(SchemaError::from)?;
    let now = Utc::now();
    let row = match existing {
        Some(old) => {
            let version = old.version + 1;
            let sealed = keys.seal(environment_id, name, version, value);
            let mut row: secret::ActiveModel = old.into();
            row.ciphertext = Set(sealed.ciphertext);
            row.nonce = Set(sealed.nonce);
            row.key_id = Set(sealed.key_id);
            row.version = Set(version);
            row.set_by = Set(set_by.to_owned());
            row.updated_at = Set(now);
            row.update(db).await
        }
        None => {
            let sealed = keys.seal(environment_id, name, 1, value);
            secret::ActiveModel {
                id: Set(Uuid::now_v7()),
                environment_id: Set(environment_id),
                name: Set(name.to_owned()),
                ciphertext: Set(sealed.ciphertext),
                nonce: Set(sealed.nonce),
                version: Set(1),
                set_by: Set(set_by.to_owned()),
                key_id: Set(sealed.key_id),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(db)
            .await
        }
    };
    Ok(row.map_err(SchemaError::from)?)
}

/// The secrets of `environment_id`, by name.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    environment_id: Uuid,
) -> Result<Vec<secret::Model>, SchemaError> {
    Ok(secret::Entity::find()
        .filter(secret::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(secret::Column::Name)
        .all(db)
        .await?)
}

/// The clear values of every secret of `environment_id`, for an allocation's start.
pub async fn open_all<C: ConnectionTrait>(
    db: &C,
    keys: &Keyring,
    environment_id: Uuid,
) -> Result<Vec<(String, Secret)>, SecretsError> {
    list(db, environment_id)
        .await?
        .iter()
        .map(|row| Ok((row.name.clone(), keys.open(row)?)))
        .collect()
}

/// The secrets allocation `alloc` runs with: its sealed bundle, made from its environment's
/// secrets the first time it is asked for (and kept, the first writer winning), so every
/// generation of its spec carries the same ones. Without a keyring, an environment with no
/// secret gives none and one with secrets is refused.
pub async fn of_allocation<C: ConnectionTrait>(
    db: &C,
    keys: Option<&Keyring>,
    alloc: &crate::entity::allocation::Model,
) -> Result<std::collections::BTreeMap<String, Secret>, SecretsError> {
    use crate::entity::{allocation, deployment};
    use sea_orm::sea_query::Expr;
    match (&alloc.sealed_secrets, keys) {
        (Some(bundle), Some(keys)) => return keys.open_bundle(alloc.id, bundle),
        // Its secrets are sealed already: without the key it cannot have them, and it must
        // not start without them (nor with the environment's current ones).
        (Some(_), None) => {
            return Err(SecretsError::NoKey {
                names: vec![format!("sealed with allocation {}", alloc.id)],
            });
        }
        (None, _) => {}
    }
    let deployment = deployment::Entity::find_by_id(alloc.deployment_id)
        .one(db)
        .await
        .map_err(SchemaError::from)?
        .ok_or_else(|| SchemaError::NotFound {
            what: "deployment",
            id: alloc.deployment_id.to_string(),
        })?;
    let rows = list(db, deployment.environment_id).await?;
    let Some(keys) = keys else {
        if rows.is_empty() {
            return Ok(Default::default());
        }
        return Err(SecretsError::NoKey {
            names: rows.into_iter().map(|r| r.name).collect(),
        });
    };
    let secrets = rows
        .iter()
        .map(|row| Ok((row.name.clone(), keys.open(row)?)))
        .collect::<Result<std::collections::BTreeMap<_, _>, SecretsError>>()?;
    let bundle = keys.seal_bundle(alloc.id, &secrets);
    allocation::Entity::update_many()
        .col_expr(allocation::Column::SealedSecrets, Expr::value(bundle))
        .filter(allocation::Column::Id.eq(alloc.id))
        .filter(allocation::Column::SealedSecrets.is_null())
        .exec(db)
        .await
        .map_err(SchemaError::from)?;
    // Another start of the same allocation may have sealed its bundle first: that one wins.
    let stored = allocation::Entity::find_by_id(alloc.id)
        .one(db)
        .await
        .map_err(SchemaError::from)?
        .and_then(|a| a.sealed_secrets);
    match stored {
        Some(bundle) => keys.open_bundle(alloc.id, &bundle),
        None => Ok(secrets),
    }
}

/// Seals again under the current key every secret, every allocation's bundle and every
/// provider's admin URL sealed under another; how many.
pub async fn reseal_all<C: ConnectionTrait>(db: &C, keys: &Keyring) -> Result<u64, SecretsError> {
    use crate::entity::allocation;
    let bundles = allocation::Entity::find()
        .filter(allocation::Column::SealedSecrets.is_not_null())
        .filter(allocation::Column::SealedSecrets.not_like(format!("{}:%", keys.current_id())))
        .all(db)
        .await
        .map_err(SchemaError::from)?;
    let mut resealed = 0;
    for alloc in bundles {
        let Some(bundle) = &alloc.sealed_secrets else {
            continue;
        };
        let secrets = keys.open_bundle(alloc.id, bundle)?;
        let mut active: allocation::ActiveModel = alloc.clone().into();
        active.sealed_secrets = Set(Some(keys.seal_bundle(alloc.id, &secrets)));
        active.update(db).await.map_err(SchemaError::from)?;
        resealed += 1;
    }
    let providers = database_provider::Entity::find()
        .filter(
            database_provider::Column::SealedAdminUrl.not_like(format!("{}:%", keys.current_id())),
        )
        .all(db)
        .await
        .map_err(SchemaError::from)?;
    for provider in providers {
        let url = keys.open_provider(&provider)?;
        let mut active: database_provider::ActiveModel = provider.clone().into();
        active.sealed_admin_url = Set(keys.seal_provider(provider.id, &url));
        active.update(db).await.map_err(SchemaError::from)?;
        resealed += 1;
    }
    Ok(resealed + reseal_rows(db, keys).await?)
}

async fn reseal_rows<C: ConnectionTrait>(db: &C, keys: &Keyring) -> Result<u64, SecretsError> {
    let stale = secret::Entity::find()
        .filter(secret::Column::KeyId.ne(keys.current_id()))
        .all(db)
        .await
        .map_err(SchemaError::from)?;
    let mut n = 0;
    for row in stale {
        let value = keys.open(&row)?;
        let sealed = keys.seal(row.environment_id, &row.name, row.version, &value);
        let mut active: secret::ActiveModel = row.into();
        active.ciphertext = Set(sealed.ciphertext);
        active.nonce = Set(sealed.nonce);
        active.key_id = Set(sealed.key_id);
        active.update(db).await.map_err(SchemaError::from)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn row(keys: &Keyring, env: Uuid, name: &str, version: i64, value: &str) -> secret::Model {
        let sealed = keys.seal(env, name, version, &Secret::new(value));
        secret::Model {
            id: Uuid::now_v7(),
            environment_id: env,
            name: name.into(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            version,
            set_by: "user:x".into(),
            key_id: sealed.key_id,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed() -> Result<(), SecretsError> {
        let keys = Keyring::new(A, &[])?;
        let env = Uuid::now_v7();
        let sealed = row(&keys, env, "STRIPE_KEY", 1, "sk_live_123");
        assert!(
            !sealed.ciphertext.windows(11).any(|w| w == b"sk_live_123"),
            "the value is not in the ciphertext"
        );
        assert_eq!(keys.open(&sealed)?.expose(), "sk_live_123");
        for moved in [
            secret::Model {
                name: "OTHER".into(),
                ..sealed.clone()
            },
            secret::Model {
                version: 2,
                ..sealed.clone()
            },
            secret::Model {
                environment_id: Uuid::now_v7(),
                ..sealed.clone()
            },
        ] {
            assert!(matches!(
                keys.open(&moved),
                Err(SecretsError::Tampered { .. })
            ));
        }
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(matches!(
            keys.open(&flipped),
            Err(SecretsError::Tampered { .. })
        ));
        Ok(())
    }

    #[test]
    fn rotation_opens_with_old_keys_and_reseals_under_the_new() -> Result<(), SecretsError> {
        let old = Keyring::new(A, &[])?;
        let env = Uuid::now_v7();
        let sealed = row(&old, env, "TOKEN", 3, "t0ken");
        let new_only = Keyring::new(B, &[])?;
        let err = new_only
            .open(&sealed)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err(format!(
                "secret TOKEN (version 3) is sealed under key {}, which is neither RHONE_SECRETS_KEY nor among RHONE_SECRETS_OLD_KEYS",
                old.current_id()
            ))
        );
        let rotating = Keyring::new(B, &[A])?;
        assert_eq!(rotating.open(&sealed)?.expose(), "t0ken");
        Ok(())
    }

    #[test]
    fn keys_are_read_from_the_environment_or_a_file() -> Result<(), Box<dyn std::error::Error>> {
        let none = Keyring::from_vars(|_| None)?;
        assert!(none.is_none());
        let bad = Keyring::from_vars(|k| (k == KEY_VAR).then(|| "abc".to_owned()));
        assert_eq!(
            bad.map(|_| ()).map_err(|e| e.to_string()),
            Err("RHONE_SECRETS_KEY: a key is 64 hexadecimal digits (32 bytes), e.g. from `openssl rand -hex 32`".to_owned())
        );
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{A}\n"))?;
        let path = file.display().to_string();
        let keys = Keyring::from_vars(|k| (k == KEY_FILE_VAR).then(|| path.clone()))?
            .ok_or("no keyring")?;
        assert_eq!(keys.current_id(), Keyring::new(A, &[])?.current_id());
        assert!(!format!("{keys:?}").contains(A));
        Ok(())
    }
}
