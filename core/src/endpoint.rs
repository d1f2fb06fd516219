//! `Endpoint`: a `host:port` a service listens at, as an allocation's egress names it (the
//! database and the runtime services bound to its environment, and nothing else), and as
//! read from a service's URL.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest host name (RFC 1035).
const MAX_HOST: usize = 253;

/// A TCP service: a DNS name or an IPv4 literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Why a text is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not host:port: {problem}")]
pub struct EndpointError {
    pub text: String,
    pub problem: &'static str,
}

impl Endpoint {
    /// The host and port of `scheme://[user[:password]@]host[:port][/…]`, `default_port`
    /// when it names none; `None` without a host, with a bad port or with an IPv6 host
    /// (allocations have no IPv6). The userinfo never reaches the result.
    pub fn of_url(url: &str, default_port: u16) -> Option<Endpoint> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, default_port),
        };
        let endpoint = Endpoint {
            host: host.to_ascii_lowercase(),
            port,
        };
        endpoint.problem().is_none().then_some(endpoint)
    }

    fn problem(&self) -> Option<&'static str> {
        let host = &self.host;
        if host.is_empty() {
            return Some("the host is empty");
        }
        if host.len() > MAX_HOST {
            return Some("the host is longer than 253 characters");
        }
        if self.port == 0 {
            return Some("port 0 is no port");
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Some("the host is neither a DNS name nor an IPv4 address");
        }
        None
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |problem| EndpointError {
            text: text.to_owned(),
            problem,
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| fail("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| fail("the port is not a number from 1 to 65535"))?;
        let endpoint = Endpoint {
            host: host.to_owned(),
            port,
        };
        match endpoint.problem() {
            None if host.bytes().all(|b| !b.is_ascii_uppercase()) => Ok(endpoint),
            None => Err(fail("the host has upper-case letters")),
            Some(problem) => Err(fail(problem)),
        }
    }
}

impl TryFrom<String> for Endpoint {
    type Error = EndpointError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_host_and_port() {
        for (url, expected) in [
            ("nats://n1:4223", Some("n1:4223")),
            ("tls://n1", Some("n1:4222")),
            (
                "redis://:pw@cache.internal:6380/0",
                Some("cache.internal:6380"),
            ),
            (
                "postgres://u:p%40ss@10.216.3.2/db?sslmode=disable",
                Some("10.216.3.2:4222"),
            ),
            (
                "postgres://u@DB.Example.com:5433",
                Some("db.example.com:5433"),
            ),
            ("nats://[::1]:5000/x", None),
            ("nats://n1:port", None),
            ("nats://:4222", None),
            ("nats://n1:0", None),
            ("nats://bad_host:1", None),
            ("nats://a..b:1", None),
        ] {
            let got = Endpoint::of_url(url, 4222).map(|e| e.to_string());
            assert_eq!(got.as_deref(), expected, "{url}");
        }
    }

    #[test]
    fn texts_are_checked() -> Result<(), Box<dyn std::error::Error>> {
        let ok: Endpoint = "db.internal:5432".parse()?;
        assert_eq!((ok.host.as_str(), ok.port), ("db.internal", 5432));
        assert_eq!(serde_json::to_string(&ok)?, "\"db.internal:5432\"");
        for (bad, problem) in [
            ("db.internal", "no port"),
            ("db:99999", "the port is not a number from 1 to 65535"),
            ("db:0", "port 0 is no port"),
            (":5432", "the host is empty"),
            (
                "a b:1",
                "the host is neither a DNS name nor an IPv4 address",
            ),
            ("-a:1", "the host is neither a DNS name nor an IPv4 address"),
            ("DB:1", "the host has upper-case letters"),
        ] {
            let got = bad.parse::<Endpoint>().map_err(|e| e.problem);
            assert_eq!(got, Err(problem), "{bad}");
        }
        assert!(serde_json::from_str::<Endpoint>("\"x y:1\"").is_err());
        Ok(())
    }
}
