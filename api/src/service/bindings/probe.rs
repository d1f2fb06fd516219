//! Probes of runtime services: before a binding is stored `ready`, the API reaches the
//! service its config names, within [`PROBE_TIMEOUT`], with the credentials the named secret
//! of the environment holds. A probe that fails says why, in words that never carry a
//! secret value ([`scrub`]); the binding is then stored `unreachable` with that reason.

use std::time::Duration;

use rhone_core::secret::Secret;
use rhone_schema::secrets;
use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::{ApiState, error::ApiError};

/// How long one probe may take, connection and answer together.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest reason kept: a server's error text is the caller's to read, not to store at
/// any length.
const MAX_ERROR_CHARS: usize = 500;

/// What a probe found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The service answered.
    Reached,
    /// The provider is not probed: the binding is ready on its config alone.
    NotProbed,
    /// The service could not be used: why, scrubbed of secret values.
    Unreachable(String),
}

/// Probes the service `config` (as [`super::check_config`] returned it) names for
/// environment `environment_id`. `Err` only for the control DB's own failures.
pub(crate) async fn probe(
    state: &ApiState,
    environment_id: Uuid,
    config: &Value,
) -> Result<Outcome, ApiError> {
    let field = |name: &str| config.get(name).and_then(Value::as_str);
    let provider = field("provider").unwrap_or_default();
    // The values a reason must not repeat: any secret opened for the probe.
    let mut opened: Vec<Secret> = Vec::new();
    let result = match provider {
        "redis" => {
            let password = match field("password_secret") {
                Some(name) => match secret(state, environment_id, name).await? {
                    Ok(value) => Some((name, value)),
                    Err(why) => return Ok(Outcome::Unreachable(why)),
                },
                None => None,
            };
            opened.extend(password.as_ref().map(|(_, value)| value.clone()));
            let url = field("url").unwrap_or_default();
            within(redis(url, password.as_ref().map(|(n, v)| (*n, v)))).await
        }
        "sql" => {
            let name = field("dsn_secret").unwrap_or_default();
            let dsn = match secret(state, environment_id, name).await? {
                Ok(value) => value,
                Err(why) => return Ok(Outcome::Unreachable(why)),
            };
            opened.push(dsn.clone());
            within(sql(name, &dsn)).await
        }
        "nats" => {
            if let Some(name) = field("credentials_secret") {
                match secret(state, environment_id, name).await? {
                    Ok(value) => opened.push(value),
                    Err(why) => return Ok(Outcome::Unreachable(why)),
                }
            }
            within(nats(field("url").unwrap_or_default())).await
        }
        // `idempotency` is the control DB itself; `s3` is not probed yet.
        _ => return Ok(Outcome::NotProbed),
    };
    Ok(match result {
        Ok(()) => Outcome::Reached,
        Err(why) => {
            let values: Vec<&str> = opened.iter().map(Secret::expose).collect();
            Outcome::Unreachable(scrub(&why, &values))
        }
    })
}

/// The clear value of secret `name` of the environment, or why there is none to use.
async fn secret(
    state: &ApiState,
    environment_id: Uuid,
    name: &str,
) -> Result<Result<Secret, String>, ApiError> {
    let rows = secrets::list(&state.db, environment_id).await?;
    let Some(row) = rows.iter().find(|r| r.name == name) else {
        return Ok(Err(format!("secret {name} is not set")));
    };
    let Some(keys) = &state.secrets else {
        return Ok(Err(format!(
            "secret {name} cannot be opened: this API has no secrets key ({})",
            secrets::KEY_VAR
        )));
    };
    // `SecretsError` names the secret and the key, never a value.
    Ok(keys
        .open(row)
        .map_err(|e| format!("secret {name} cannot be opened: {e}")))
}

/// `probe` bounded by [`PROBE_TIMEOUT`].
async fn within(
    probe: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
}

/// Connects to the Redis at `url`, AUTHs with `password` (the value of the secret it names)
/// when given, and PINGs it.
async fn redis(url: &str, password: Option<(&str, &Secret)>) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let at = format!("redis at {}", super::redact_url(url));
    let mut info = url
        .into_connection_info()
        .map_err(|e| format!("{at}: the URL is not one Rhone can use: {e}"))?;
    if let Some((_, password)) = password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info).map_err(|e| format!("{at}: {e}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(Some(PROBE_TIMEOUT));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| match (e.kind(), password) {
            (redis::ErrorKind::AuthenticationFailed, Some((name, _))) => {
                format!("{at}: AUTH refused the password in secret {name}: {e}")
            }
            _ => format!("{at}: cannot connect: {e}"),
        })?;
    let answer: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .map_err(|e| format!("{at}: PING failed: {e}"))?;
    if answer == "PONG" {
        Ok(())
    } else {
        Err(format!("{at}: PING answered {answer:?}, not PONG"))
    }
}

/// Connects to the PostgreSQL database of DSN secret `name` (one connection, no pool) and
/// runs `SELECT 1`. Other schemes are refused: sea-orm would open a SQLite file on the
/// API's own host.
async fn sql(name: &str, dsn: &Secret) -> Result<(), String> {
    let scheme = dsn.expose().split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(format!(
            "secret {name} does not hold a postgres:// or postgresql:// URL, the SQL Rhone connects to"
        ));
    }
    let mut options = ConnectOptions::new(dsn.expose().to_owned());
    options
        .max_connections(1)
        .min_connections(0)
        .connect_timeout(PROBE_TIMEOUT)
        .acquire_timeout(PROBE_TIMEOUT)
        .sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .map_err(|e| format!("database of secret {name}: cannot connect: {e}"))?;
    let selected = db.execute_unprepared("SELECT 1").await;
    // The probe's one connection goes now, not when the pool idles out.
    let _ = db.close().await;
    selected
        .map(|_| ())
        .map_err(|e| format!("database of secret {name}: SELECT 1 failed: {e}"))
}

/// Connects to the NATS server at `url` and reads its `INFO` line, which a server sends
/// first to every client (before any TLS). Credentials are not checked: that needs a
/// client, which Rhone does not have.
async fn nats(url: &str) -> Result<(), String> {
    let Some(endpoint) = rhone_core::Endpoint::of_url(url, 4222) else {
        return Err(format!(
            "nats at {url}: not scheme://host[:port] with a DNS name or IPv4 address"
        ));
    };
    let at = format!("nats at {endpoint}");
    let mut stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("{at}: cannot connect: {e}"))?;
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    while !line.contains(&b'\n') && line.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{at}: reading its greeting: {e}")),
        }
    }
    if line.starts_with(b"INFO ") || line.starts_with(b"INFO\t") {
        Ok(())
    } else {
        Err(format!(
            "{at}: did not greet with INFO, so it is not a NATS server"
        ))
    }
}

/// `why` as it may be stored and shown: each secret value (and the password of a URL one
/// holds, as written and percent-decoded) replaced by `***`, the userinfo of any URL in it
/// too, and at most [`MAX_ERROR_CHARS`] characters.
pub(crate) fn scrub(why: &str, secrets: &[&str]) -> String {
    let mut hidden: Vec<String> = Vec::new();
    for value in secrets.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        hidden.push(value.to_owned());
        if let Some(password) = url_password(value) {
            hidden.push(percent_decoded(password));
            hidden.push(password.to_owned());
        }
    }
    // The longest first, so a value containing another is hidden whole.
    hidden.sort_by_key(|h| std::cmp::Reverse(h.len()));
    let mut text = why.to_owned();
    for h in hidden.iter().filter(|h| h.len() >= 3) {
        text = text.replace(h.as_str(), "***");
    }
    let text = text
        .split(' ')
        .map(|word| {
            if word.contains("://") {
                super::redact_url(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// The password of `scheme://user:password@host…`.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p)
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_scrub(why: &str, secrets: &[&str], expected: &str) {
        assert_eq!(scrub(why, secrets), expected, "scrub({why:?})");
    }

    #[test]
    fn scrub_table() {
        check_scrub(
            "WRONGPASS for hunter2-pw",
            &["hunter2-pw"],
            "WRONGPASS for ***",
        );
        check_scrub(
            "cannot connect to postgres://app:p%40ss-word@db:5432/app: refused",
            &["postgres://app:p%40ss-word@db:5432/app"],
            "cannot connect to ***: refused",
        );
        check_scrub(
            "password authentication failed (p@ss-word, p%40ss-word)",
            &["postgres://app:p%40ss-word@db:5432/app"],
            "password authentication failed (***, ***)",
        );
        check_scrub(
            "at redis://default:other@cache:6379 refused",
            &[],
            "at redis://***@cache:6379 refused",
        );
        check_scrub("timed out", &["", "  "], "timed out");
        let long = "x".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(scrub(&long, &[]).chars().count(), MAX_ERROR_CHARS + 1);
    }
}
