//! Validated names for workspaces, projects, apps and environments. Names appear in hosts
//! (`<app>-<project>.<domain>`), so they follow DNS label rules.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_NAME_LEN: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("name must start with a lowercase letter (a-z), found {found:?}")]
    BadStart { found: char },
    #[error("name must not end with '-'")]
    TrailingHyphen,
    #[error(
        "name may only contain lowercase letters, digits and '-'; found {found:?} at position {at}"
    )]
    BadChar { found: char, at: usize },
    #[error("name must not contain \"--\"")]
    DoubleHyphen,
}

impl Name {
    pub fn parse(s: &str) -> Result<Name, NameError> {
        let mut chars = s.chars();
        let first = chars.next().ok_or(NameError::Empty)?;
        let len = s.chars().count();
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong { len });
        }
        if !first.is_ascii_lowercase() {
            return Err(NameError::BadStart { found: first });
        }
        if let Some((at, found)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::BadChar { found, at });
        }
        if s.ends_with('-') {
            return Err(NameError::TrailingHyphen);
        }
        if s.contains("--") {
            return Err(NameError::DoubleHyphen);
        }
        Ok(Name(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Name::parse(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(), NameError>) {
        assert_eq!(Name::parse(input).map(|_| ()), expected, "{input:?}");
    }

    #[test]
    fn names() {
        check("shop", Ok(()));
        check("shop-2", Ok(()));
        check("a", Ok(()));
        check("", Err(NameError::Empty));
        check("Shop", Err(NameError::BadStart { found: 'S' }));
        check("2shop", Err(NameError::BadStart { found: '2' }));
        check("shop_x", Err(NameError::BadChar { found: '_', at: 4 }));
        check("shop.x", Err(NameError::BadChar { found: '.', at: 4 }));
        check("shop-", Err(NameError::TrailingHyphen));
        check("a--b", Err(NameError::DoubleHyphen));
        check(&"a".repeat(41), Err(NameError::TooLong { len: 41 }));
        check(&"a".repeat(40), Ok(()));
    }
}
