//! `Digest`: the content address of an artifact, `sha256:<64 lowercase hex>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest, the form OCI registries use.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a [`Digest`]; the message quotes the input and names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct InvalidDigest {
    /// The rejected text, shortened to 100 characters.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest of everything fed to `hasher`.
    fn from_hasher(hasher: Sha256) -> Self {
        Digest(format!("{PREFIX}{}", hex::encode(hasher.finalize())))
    }

    /// Parses `sha256:<64 lowercase hex>`; anything else is an error saying what is wrong.
    pub fn parse(input: &str) -> Result<Self, InvalidDigest> {
        let fail = |reason: String| InvalidDigest {
            input: input.chars().take(100).collect(),
            reason,
        };
        let Some((algorithm, hex)) = input.split_once(':') else {
            return Err(fail("expected `sha256:` followed by 64 hex digits".into()));
        };
        if algorithm != "sha256" {
            return Err(fail(format!(
                "unsupported algorithm {algorithm:?}; only sha256 is used"
            )));
        }
        if hex.len() != HEX_LEN {
            return Err(fail(format!(
                "expected {HEX_LEN} hex digits after `sha256:`, found {} characters",
                hex.len()
            )));
        }
        if let Some(bad) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(fail(format!(
                "{bad:?} is not a lowercase hex digit (0-9, a-f)"
            )));
        }
        Ok(Digest(input.to_owned()))
    }

    /// The whole digest, `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits without the algorithm, as used in file and object names.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn check(input: &str, expected: Result<(), &str>) {
        let got = Digest::parse(input).map(|_| ()).map_err(|e| e.reason);
        match (&got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(reason), Err(part)) if reason.contains(part) => {}
            _ => panic!("parse({input:?}) = {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn parse_table() {
        check(EMPTY, Ok(()));
        check("e3b0c442", Err("expected `sha256:`"));
        check("md5:abc", Err("unsupported algorithm \"md5\""));
        check("sha256:abc", Err("found 3 characters"));
        check(
            &EMPTY.to_uppercase().replace("SHA256", "sha256"),
            Err("'E'"),
        );
        check(
            &EMPTY.replace('e', "g"),
            Err("'g' is not a lowercase hex digit"),
        );
        check("", Err("expected `sha256:`"));
    }

    #[test]
    fn of_display_hex_and_serde() -> Result<(), Box<dyn std::error::Error>> {
        let digest = Digest::of(b"");
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest.hex(), &EMPTY[7..]);
        let json = serde_json::to_string(&digest)?;
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json)?, digest);
        let bad = serde_json::from_str::<Digest>("\"sha256:xyz\"");
        assert!(bad.is_err_and(|e| e.to_string().contains("invalid digest")));
        Ok(())
    }
}
