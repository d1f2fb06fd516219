//! `Secret`, a value that never prints, and `Scrubber`, which blanks secret values out of
//! the text the runner keeps and shows (log lines, failure messages).

use std::fmt;

use serde::{Deserialize, Deserializer};

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

/// Serialises a map of secrets with their clear values: only for sending an
/// [`crate::AllocationSpec`] to a runner.
pub(crate) fn serialize_exposed<S: serde::Serializer>(
    secrets: &std::collections::BTreeMap<String, Secret>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(secrets.len()))?;
    for (name, secret) in secrets {
        map.serialize_entry(name, secret.expose())?;
    }
    map.end()
}

/// Replaces every occurrence of any of a set of secret values with [`REDACTED`].
#[derive(Clone, Default)]
pub(crate) struct Scrubber {
    /// Longest first, so a secret that contains another is replaced whole.
    values: Vec<String>,
}

impl Scrubber {
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut values: Vec<String> = secrets
            .into_iter()
            .map(|s| s.expose().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Scrubber { values }
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} values)", self.values.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(secrets: &[&str], line: &str, expected: &str) {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        assert_eq!(Scrubber::new(&secrets).scrub(line), expected, "{line:?}");
    }

    #[test]
    fn scrub_table() {
        check(&["hunter2"], "password is hunter2!", "password is ***!");
        check(&["hunter2"], "hunter2hunter2", "******");
        check(&["abc", "abcdef"], "key=abcdef", "key=***");
        check(&[""], "nothing to hide", "nothing to hide");
        check(&[], "plain", "plain");
    }

    #[test]
    fn secret_never_prints() -> Result<(), serde_json::Error> {
        let secret: Secret = serde_json::from_str("\"s3cr3t\"")?;
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        assert_eq!(secret.expose(), "s3cr3t");
        Ok(())
    }
}
