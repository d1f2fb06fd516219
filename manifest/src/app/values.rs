//! The validated value types of `rhone.toml`: route patterns, runtime services, webhook
//! signature policies, secret names and relative paths.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A URL path pattern: an exact path (`/webhooks/stripe`) or a prefix ending in a `*` segment
/// (`/actions/*`, every path below `/actions/`). Paths under `/_vango/` belong to the Vango
/// runtime and cannot be declared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoutePattern(String);

/// Why a string is not a [`RoutePattern`]: what a pattern must look like instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}")]
pub struct InvalidRoutePattern {
    pub expected: &'static str,
}

impl RoutePattern {
    pub fn parse(pattern: &str) -> Result<Self, InvalidRoutePattern> {
        let fail = |expected| Err(InvalidRoutePattern { expected });
        let Some(rest) = pattern.strip_prefix('/') else {
            return fail("a path pattern starting with \"/\", like \"/webhooks/stripe\"");
        };
        if !pattern.chars().all(is_path_char) {
            return fail("a path pattern of URL path characters (no spaces, \"?\" or \"#\")");
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if pattern != "/" && segments.contains(&"") {
            return fail("a path pattern without empty segments (\"//\" or a trailing \"/\")");
        }
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return fail("a path pattern without \".\" or \"..\" segments");
        }
        let (last, init) = segments.split_last().unwrap_or((&"", &[]));
        if init.iter().any(|s| s.contains('*')) || (last.contains('*') && *last != "*") {
            return fail(
                "a path pattern with \"*\" only as its whole last segment, like \"/actions/*\"",
            );
        }
        if segments.first() == Some(&"_vango") {
            return fail("a path pattern outside /_vango/, which belongs to the Vango runtime");
        }
        Ok(RoutePattern(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a request path (without its query) falls under this pattern.
    pub fn matches(&self, path: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => path.len() > prefix.len() && path.starts_with(prefix),
            None => path == self.0,
        }
    }
}

/// RFC 3986 `pchar` plus `/`; `*` is a sub-delimiter, so it passes here and is placed later.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=:@/".contains(c)
}

impl TryFrom<String> for RoutePattern {
    type Error = InvalidRoutePattern;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RoutePattern::parse(&s)
    }
}

impl From<RoutePattern> for String {
    fn from(p: RoutePattern) -> String {
        p.0
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A closed set of names spelled in snake_case in `rhone.toml` and JSON.
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($(#[$vmeta])* #[serde(rename = $text)] $variant,)* }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }

            /// `"a", "b", …` for error messages.
            pub(crate) fn expected() -> String {
                let names: Vec<String> = Self::ALL.iter().map(|v| format!("{:?}", v.as_str())).collect();
                format!("one of {}", names.join(", "))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// A runtime service an app can require; the environment must bind each one before a
    /// deploy passes validation.
    Service {
        /// Durable Vango sessions (Save/Load/Delete/Touch), for resuming on another allocation.
        SessionStore = "session_store",
        /// Fan-out of messages between allocations.
        Broadcast = "broadcast",
        /// Records of `Idempotency-Key`s, so an unsafe request can be forwarded once.
        Idempotency = "idempotency",
        Cache = "cache",
        Queue = "queue",
        ObjectStorage = "object_storage",
    }
}

names! {
    /// How a webhook's deliveries are signed, so the edge knows the route class and where the
    /// provider's event id is. `none` declares a deliberately unsigned webhook.
    SignaturePolicy {
        /// `Stripe-Signature` header.
        Stripe = "stripe",
        /// `X-Hub-Signature-256` header, `X-GitHub-Delivery` id.
        Github = "github",
        /// `X-Slack-Signature` and `X-Slack-Request-Timestamp` headers.
        Slack = "slack",
        /// The Standard Webhooks headers (`webhook-id`, `webhook-signature`).
        StandardWebhooks = "standard_webhooks",
        None = "none",
    }
}

/// Checks a required secret's name; `Err` says what a name must look like.
pub(crate) fn check_secret_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !(first_ok && rest_ok && name.len() <= 128) {
        return Err(
            "an environment variable name of uppercase letters, digits and _, \
                    not starting with a digit (like \"STRIPE_API_KEY\")",
        );
    }
    if name == "PORT" || name.starts_with("RHONE_") {
        return Err("a name other than PORT and RHONE_*, which Rhone sets itself");
    }
    Ok(())
}

/// Whether a path is relative, `/`-separated and stays inside its root (no `..`).
pub(crate) fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|c| !c.is_empty() && c != "..")
}

/// Whether a health path is a plain absolute URL path.
pub(crate) fn is_url_path(path: &str) -> bool {
    path.starts_with('/') && path.chars().all(|c| is_path_char(c) && c != '*')
}
