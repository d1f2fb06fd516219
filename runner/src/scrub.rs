//! `Scrubber`, which blanks secret values out of the text the runner keeps and shows (log
//! lines, failure messages).

use std::fmt;

use rhone_core::secret::{REDACTED, Secret};

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
}
