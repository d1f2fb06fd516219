//! `Secret`: a value that never prints (an app secret, a token), and the one way to
//! serialise secrets in clear, for the command that hands them to a runner.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serializer};

/// What a secret value is replaced with wherever it would be shown.
pub const REDACTED: &str = "***";

/// A secret value (an app secret, the report token). `Debug` and `Display` print `***`;
/// the value is read only through [`Secret::expose`], at the point where it is handed to
/// the app or put in a request header. It deserialises from a plain JSON string and does
/// not implement `Serialize`, so a response cannot echo it by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The clear value. Every caller is a place where the secret is meant to go.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Serialises a map of secrets with their clear values (`serialize_with`): only for sending
/// an allocation spec (`rhone_runner_protocol::AllocationSpec`) to a runner.
pub fn serialize_exposed<S: Serializer>(
    secrets: &BTreeMap<String, Secret>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(secrets.len()))?;
    for (name, secret) in secrets {
        map.serialize_entry(name, secret.expose())?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() -> Result<(), serde_json::Error> {
        let secret: Secret = serde_json::from_str("\"s3cr3t\"")?;
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        assert_eq!(secret.expose(), "s3cr3t");
        Ok(())
    }
}
