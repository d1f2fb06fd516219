//! The runner's membership of the fleet: it registers with the API (its name, region, cell,
//! address, subnet, capacity and version, with the credential an operator issued), learns
//! the SHA-256 of the control plane's call token from the answer, and heartbeats. Declared
//! lost (a heartbeat says so), it registers again; refused (a revoked or wrong credential),
//! it says so in its log and keeps trying slowly, taking no calls meanwhile.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rhone_core::{RunnerStatus, Secret, StateMachine};
use rhone_runner_protocol::{
    RUNNER_HEADER,
    fleet::{Capacity, HEARTBEAT_PATH, HeartbeatAnswer, REGISTER_PATH, Registered, Registration},
};

/// Wait before registering again after a failure; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait for one call to the API.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The SHA-256 of the call token this runner takes, shared with its API; `None` refuses
/// every call.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallToken {
    hash: Arc<RwLock<Option<Arc<str>>>>,
    /// Configured (`RHONE_RUNNER_CALL_TOKEN_SHA256`): a registration's answer never
    /// replaces it.
    pinned: bool,
}

impl CallToken {
    pub(crate) fn new(hash: Option<String>) -> Self {
        CallToken {
            pinned: hash.is_some(),
            hash: Arc::new(RwLock::new(hash.map(Arc::from))),
        }
    }

    pub(crate) fn get(&self) -> Option<Arc<str>> {
        self.hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the hash a registration answered, unless one is pinned; a different answer
    /// than the pinned one is logged and ignored.
    fn set(&self, hash: &str) {
        if self.pinned {
            if self.get().as_deref() != Some(hash) {
                tracing::error!(
                    "the control plane named a call token other than RHONE_RUNNER_CALL_TOKEN_SHA256; keeping the configured one"
                );
            }
            return;
        }
        *self.hash.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::from(hash));
    }
}

/// What the host has: its memory (MiB, `MemTotal`) and CPUs (thousandths of a core).
pub(crate) fn measured() -> (i64, i64) {
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (memory_mb, i64::try_from(cpus).unwrap_or(1) * 1000)
}

/// How many times its cores a runner offers in CPU quotas. A quota (`[run] cpu_millis`) is
/// a ceiling an app may burst to, which web apps idle far below; memory is never
/// overcommitted.
pub(crate) const CPU_OVERCOMMIT: i64 = 4;

/// The capacity to announce: what is configured, capped by what the host has (memory; CPU
/// times [`CPU_OVERCOMMIT`]) and by the addresses of the runner's subnet (slots).
pub(crate) fn capacity(
    config: &crate::RunnerConfig,
    host: (i64, i64),
    subnet_hosts: i64,
) -> Capacity {
    let host = (host.0, host.1 * CPU_OVERCOMMIT);
    let cap = |what: &str, configured: Option<i64>, has: i64| match configured {
        Some(n) if n > has => {
            tracing::warn!(
                configured = n,
                host = has,
                "{what} is more than the host has; offering what it has"
            );
            has
        }
        Some(n) => n,
        None => has,
    };
    let memory_mb = cap("RHONE_RUNNER_MEMORY_MB", config.memory_mb, host.0);
    let cpu_millis = cap("RHONE_RUNNER_CPU_MILLIS", config.cpu_millis, host.1);
    let slots = i64::from(config.slots.unwrap_or(crate::config::DEFAULT_SLOTS)).min(subnet_hosts);
    Capacity {
        memory_mb,
        cpu_millis,
        slots: i32::try_from(slots).unwrap_or(i32::MAX),
    }
}

pub(crate) struct Membership {
    /// The runner's allocations: sent with each registration, drained when told.
    pub table: std::sync::Arc<crate::table::Table>,
    pub http: reqwest::Client,
    pub api_url: String,
    pub name: String,
    pub credential: Secret,
    pub registration: Registration,
    pub call_token: CallToken,
}

/// Why a call to the API did not work.
enum CallError {
    /// The API refused the runner (401/403): an operator has to act.
    Refused(String),
    /// Anything a later attempt may get past.
    Transient(String),
}

impl Membership {
    /// Registers, then heartbeats, for as long as the task runs.
    pub(crate) async fn run(self) {
        if in_clear(&self.api_url) {
            tracing::warn!(api = %self.api_url, "this runner's credential goes to the API over plain http: put the API behind TLS (https://) or keep this link on a private network");
        }
        let mut backoff = FIRST_BACKOFF;
        loop {
            let registered = match self.register().await {
                Ok(r) => r,
                Err(CallError::Refused(why)) => {
                    tracing::error!(runner = %self.name, error = %why, "the control plane refused this runner's registration (revoked or wrong credential, or another region, cell or subnet); retrying in 10 s");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
                Err(CallError::Transient(why)) => {
                    tracing::warn!(runner = %self.name, error = %why, retry_in = ?backoff, "registration failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = FIRST_BACKOFF;
            self.call_token.set(&registered.call_token_sha256);
            tracing::info!(runner = %self.name, api = %self.api_url, capacity = ?self.registration.capacity, "registered with the control plane");
            let interval = Duration::from_millis(registered.heartbeat_interval_ms.max(50));
            loop {
                tokio::time::sleep(interval).await;
                match self.heartbeat().await {
                    Ok(RunnerStatus::Ready) => {}
                    Ok(status) => {
                        tracing::warn!(runner = %self.name, %status, "the control plane has this runner as {status}; registering again");
                        break;
                    }
                    Err(CallError::Refused(why)) => {
                        tracing::error!(runner = %self.name, error = %why, "the control plane refused this runner's heartbeat");
                        break;
                    }
                    Err(CallError::Transient(why)) => {
                        tracing::warn!(runner = %self.name, error = %why, "heartbeat failed");
                    }
                }
            }
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, CallError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.api_url))
            .header(RUNNER_HEADER, &self.name)
            .bearer_auth(self.credential.expose())
            .timeout(CALL_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(|e| CallError::Transient(format!("POST {path}: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .map_err(|e| CallError::Transient(format!("POST {path}: unreadable answer: {e}")));
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(500).collect();
        if matches!(status.as_u16(), 401 | 403) {
            Err(CallError::Refused(format!("POST {path}: {status}: {text}")))
        } else {
            Err(CallError::Transient(format!(
                "POST {path}: {status}: {text}"
            )))
        }
    }

    /// Registers with the allocations the runner runs now, and drains the ones the
    /// control plane no longer wants here.
    async fn register(&self) -> Result<Registered, CallError> {
        let mut registration = self.registration.clone();
        registration.allocations = self
            .table
            .list()
            .into_iter()
            .filter(|s| !s.stage.is_terminal())
            .map(|s| s.allocation_id)
            .collect();
        let registered: Registered = self.call(REGISTER_PATH, &registration).await?;
        for id in &registered.drain {
            tracing::warn!(runner = %self.name, allocation_id = %id, "the control plane no longer wants this allocation here (fenced while the runner was lost); draining it");
            self.table.drain(*id);
        }
        Ok(registered)
    }

    async fn heartbeat(&self) -> Result<RunnerStatus, CallError> {
        let answer: HeartbeatAnswer = self.call(HEARTBEAT_PATH, &serde_json::json!({})).await?;
        Ok(answer.status)
    }
}

/// Whether calls to `url` cross a network unencrypted: plain http to anything but loopback.
fn in_clear(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    !(host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_beyond_loopback_is_in_clear() {
        for url in [
            "http://api:8080",
            "http://10.0.0.5:8080/",
            "http://[2001:db8::1]:80",
        ] {
            assert!(in_clear(url), "{url}");
        }
        for url in [
            "https://api:8443",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(!in_clear(url), "{url}");
        }
    }

    #[test]
    fn capacity_is_capped_by_the_host_and_the_subnet() {
        let mut config = crate::RunnerConfig::new("/tmp/x");
        assert_eq!(
            capacity(&config, (4096, 2000), 253),
            Capacity {
                memory_mb: 4096,
                cpu_millis: 8000,
                slots: crate::config::DEFAULT_SLOTS
            }
        );
        config.memory_mb = Some(1 << 20);
        config.cpu_millis = Some(500);
        config.slots = Some(1000);
        assert_eq!(
            capacity(&config, (4096, 2000), 253),
            Capacity {
                memory_mb: 4096,
                cpu_millis: 500,
                slots: 253
            }
        );
        config.cpu_millis = Some(100_000);
        assert_eq!(capacity(&config, (4096, 2000), 253).cpu_millis, 8000);
    }

    #[test]
    fn the_host_is_measured() {
        let (memory_mb, cpu_millis) = measured();
        assert!(
            memory_mb > 0 && cpu_millis >= 1000,
            "{memory_mb} {cpu_millis}"
        );
    }
}
