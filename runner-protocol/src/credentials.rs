//! Credentials between the control plane and its runners, so no runner holds anything that
//! lets it act as another:
//!
//! - the **runner credential** of runner `N` (`rhone_schema::fleet::new_credential`) is issued once by an
//!   operator (`rhone runners add N`), kept by the control plane only as its SHA-256, and
//!   revocable; the runner presents it (`Authorization: Bearer …` and [`RUNNER_HEADER`]`:
//!   N`) when it registers, heartbeats and reports;
//! - the **call token** of runner `N` authenticates the control plane's calls to that
//!   runner's API (`Authorization: Bearer …`). It is derived from one operator key
//!   (`RHONE_RUNNER_KEY`, held by the API and the worker only) with HMAC-SHA256 of the name;
//!   the runner learns only its SHA-256, in the answer to its registration, so even its own
//!   files cannot be used to call it.

use std::fmt;

use hmac::{Hmac, Mac};
pub use rhone_core::Secret;
use sha2::{Digest as _, Sha256};

/// The header naming the runner a report comes from.
pub const RUNNER_HEADER: &str = "x-rhone-runner";
/// The shortest operator key taken.
pub const MIN_KEY_LEN: usize = 32;

/// The operator key. `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RunnerKey(Secret);

/// Why a key was refused (never quoting it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the runner key must be at least {MIN_KEY_LEN} characters (it is {0})")]
pub struct WeakKey(usize);

impl RunnerKey {
    pub fn new(key: impl Into<String>) -> Result<RunnerKey, WeakKey> {
        let key = key.into();
        if key.len() < MIN_KEY_LEN {
            return Err(WeakKey(key.len()));
        }
        Ok(RunnerKey(Secret::new(key)))
    }

    /// The token the control plane presents to runner `name`.
    pub fn call_token(&self, name: &str) -> Secret {
        self.derive("rhone runner call", name)
    }

    fn derive(&self, purpose: &str, name: &str) -> Secret {
        // A key of any length is accepted by HMAC.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.0.expose().as_bytes()) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(name.as_bytes());
        Secret::new(hex::encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for RunnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunnerKey(***)")
    }
}

/// Every runner credential starts with this.
pub const CREDENTIAL_PREFIX: &str = "rhone_runner_";
/// Random alphanumeric characters after [`CREDENTIAL_PREFIX`] (about 256 bits).
pub const CREDENTIAL_RANDOM_LEN: usize = 43;

/// Whether `text` has the shape of a runner credential (checked before any lookup).
pub fn well_formed_credential(text: &str) -> bool {
    text.strip_prefix(CREDENTIAL_PREFIX).is_some_and(|rest| {
        rest.len() == CREDENTIAL_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// SHA-256 of a token, hex: what a runner keeps of its call token, and the control plane
/// of a runner credential.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `presented` is the token whose hash is `expected_hash`, compared without an
/// early exit so the time taken says nothing about the token.
pub fn matches_hash(presented: &str, expected_hash: &str) -> bool {
    constant_time_eq(&token_hash(presented), expected_hash)
}

/// Equal strings, compared without an early exit on the first difference.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let difference = a
        .bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0 && a.len() == b.len()
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RunnerKey {
        RunnerKey::new("k".repeat(MIN_KEY_LEN)).expect("a long enough key")
    }

    #[test]
    fn call_tokens_are_per_runner_and_per_key() {
        let k = key();
        let call = k.call_token("runner-a");
        assert_eq!(call.expose().len(), 64);
        assert_ne!(call.expose(), k.call_token("runner-b").expose());
        assert_eq!(
            call.expose(),
            key().call_token("runner-a").expose(),
            "derived, stable"
        );
        let other = RunnerKey::new("x".repeat(40)).expect("key");
        assert_ne!(call.expose(), other.call_token("runner-a").expose());
    }

    #[test]
    fn credentials_are_checked_for_shape() {
        let good = format!("{CREDENTIAL_PREFIX}{}", "a".repeat(CREDENTIAL_RANDOM_LEN));
        assert!(well_formed_credential(&good));
        assert!(!well_formed_credential("rhone_runner_short"));
        assert!(!well_formed_credential(&format!("x{good}")));
        assert!(!well_formed_credential(&good.replace('a', "-")));
    }

    #[test]
    fn hashes_match_only_their_token() {
        let call = key().call_token("r");
        let hash = token_hash(call.expose());
        assert!(matches_hash(call.expose(), &hash));
        assert!(!matches_hash("wrong", &hash));
        assert!(!matches_hash("", &hash));
    }

    #[test]
    fn weak_keys_and_debug() {
        assert_eq!(RunnerKey::new("short"), Err(WeakKey(5)));
        assert_eq!(format!("{:?}", key()), "RunnerKey(***)");
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
    }
}
