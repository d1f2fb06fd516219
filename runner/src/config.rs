//! `RunnerConfig`: where the runner keeps its files, the control plane it joins, what it
//! offers, and the defaults of the allocations it runs, parsed from `RHONE_*` keys by one
//! pure function.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use rhone_core::Secret;

/// Default `RHONE_RUNNER_WORK_DIR`.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/rhone/runner";
/// Default `RHONE_ARTIFACT_DIR`.
pub const DEFAULT_ARTIFACT_DIR: &str = "/var/lib/rhone/artifacts";
/// Default drain deadline when the spec gives none.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Variables of the runner's own environment passed on to apps by default. Nothing else
/// is: the runner's environment may hold its own credentials.
/// (`PATH` and `HOME` are the sandbox's own.)
pub const DEFAULT_INHERIT_ENV: &[&str] = &["LANG", "LC_ALL", "TZ"];
/// Default `RHONE_RUNNER_SLOTS`.
pub const DEFAULT_SLOTS: i32 = 100;

/// Settings of one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// `RHONE_RUNNER_WORK_DIR`: unpacked artifacts (`artifacts/<hex>`, one per digest,
    /// shared by allocations) and allocation directories (`allocations/<id>/output.log`).
    /// Default [`DEFAULT_WORK_DIR`].
    pub work_dir: PathBuf,
    /// `RHONE_ARTIFACT_DIR`: the local artifact store a binary opens for the runner when it
    /// configures no other store. Default [`DEFAULT_ARTIFACT_DIR`].
    pub artifact_dir: PathBuf,
    /// `RHONE_API_URL`: the control plane's API (`http://api:8080`), where the runner
    /// registers, heartbeats and reports stage changes. Default none: a standalone runner
    /// that only logs its changes.
    pub api_url: Option<String>,
    /// `RHONE_RUNNER_CREDENTIAL` (or a file named by `RHONE_RUNNER_CREDENTIAL_FILE`): the
    /// credential `rhone runners add NAME` printed, the bearer of every call to the API.
    pub credential: Option<Secret>,
    /// `RHONE_RUNNER_ADDRESS`: where the worker reaches this runner's API
    /// (`http://host:port`). Default `http://` and the address it listens on.
    pub address: Option<String>,
    /// `RHONE_RUNNER_MEMORY_MB`, `RHONE_RUNNER_CPU_MILLIS`, `RHONE_RUNNER_SLOTS`: what it
    /// offers to allocations. Memory defaults to what the host has and is capped by it; CPU
    /// to four times the host's cores (quotas are ceilings apps rarely reach) and is capped
    /// by that; slots default to [`DEFAULT_SLOTS`] (and never exceed the bridge's
    /// addresses).
    pub memory_mb: Option<i64>,
    pub cpu_millis: Option<i64>,
    pub slots: Option<i32>,
    /// `RHONE_RUNNER_AGENT_VERSION`: the version it registers with. Default this build's.
    pub agent_version: String,
    /// `RHONE_RUNNER_CALL_TOKEN_SHA256`: the SHA-256 (hex) of the token the control plane
    /// presents to this runner; a call without it is answered 401. A registered runner
    /// learns it from the API; this sets it for a standalone one. Default none: every call
    /// but `/healthz` is refused until the runner has registered.
    pub call_token_sha256: Option<String>,
    /// `RHONE_RUNNER_DRAIN_TIMEOUT_MS`: how long a drain waits after SIGTERM before
    /// SIGKILL, when the spec does not say. Default 10 000.
    pub drain_timeout: Duration,
    /// `RHONE_RUNNER_INHERIT_ENV`: comma-separated names of the runner's variables that
    /// apps see. Default [`DEFAULT_INHERIT_ENV`].
    pub inherit_env: Vec<String>,
    /// `RHONE_RUNNER_RUNTIME`: the OCI runtime that makes the allocations' sandboxes.
    /// Default `crun` on `PATH`.
    pub runtime: PathBuf,
    /// `RHONE_RUNNER_SUBNET`: the subnet of this runner's bridge (`10.213.7.0/24`; the
    /// runner is its first address, allocations get the next ones). Default: the first
    /// `10.213.N.0/24` no other runner on the host holds.
    pub subnet: Option<(std::net::Ipv4Addr, u8)>,
    /// `RHONE_RUNNER_CGROUP_PARENT`: the cgroup (in every hierarchy) the sandboxes' cgroups
    /// are made under. Default `/`: they are not counted in the runner's own cgroup.
    pub cgroup_parent: String,
    /// `RHONE_RUNNER_NET_LOCK_DIR`: where runners of this host lock their bridges. Default
    /// `/run/rhone/net`.
    pub net_lock_dir: PathBuf,
    /// `RHONE_RUNNER_SHARED_DIRS`: directories of the host shown read-only to every app,
    /// as `HOST_DIR:/SANDBOX/DIR` pairs separated by commas (operator content such as a
    /// CA bundle or a GeoIP database; never anything of the platform's). Default none.
    pub shared_dirs: Vec<(PathBuf, String)>,
}

impl RunnerConfig {
    /// Defaults, with everything under `work_dir` (the artifact store in `work_dir/store`).
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        let work_dir = work_dir.into();
        RunnerConfig {
            artifact_dir: work_dir.join("store"),
            work_dir,
            api_url: None,
            credential: None,
            address: None,
            memory_mb: None,
            cpu_millis: None,
            slots: None,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            call_token_sha256: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            inherit_env: DEFAULT_INHERIT_ENV
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            runtime: PathBuf::from(rhone_sandbox::DEFAULT_RUNTIME),
            cgroup_parent: "/".to_owned(),
            subnet: None,
            net_lock_dir: PathBuf::from(rhone_sandbox::net::DEFAULT_LOCK_DIR),
            shared_dirs: Vec::new(),
        }
    }

    /// Parses every key, reports every bad one, fails once. Empty values count as unset.
    pub fn parse(env: &BTreeMap<String, String>) -> Result<RunnerConfig, Vec<String>> {
        let mut errors = Vec::new();
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = RunnerConfig::new(
            get("RHONE_RUNNER_WORK_DIR").unwrap_or_else(|| DEFAULT_WORK_DIR.to_owned()),
        );
        config.artifact_dir = get("RHONE_ARTIFACT_DIR")
            .unwrap_or_else(|| DEFAULT_ARTIFACT_DIR.to_owned())
            .into();
        for (key, dir) in [
            ("RHONE_RUNNER_WORK_DIR", &config.work_dir),
            ("RHONE_ARTIFACT_DIR", &config.artifact_dir),
        ] {
            if !dir.is_absolute() {
                errors.push(format!(
                    "{key}={:?} must be an absolute path",
                    dir.display()
                ));
            }
        }
        for (key, slot) in [
            ("RHONE_API_URL", &mut config.api_url),
            ("RHONE_RUNNER_ADDRESS", &mut config.address),
        ] {
            if let Some(url) = get(key) {
                if url.starts_with("http://") || url.starts_with("https://") {
                    *slot = Some(url.trim_end_matches('/').to_owned());
                } else {
                    errors.push(format!("{key}={url:?} must be an http:// or https:// URL"));
                }
            }
        }
        // Never quoted in an error: it is a secret.
        config.credential = match (
            env.get("RHONE_RUNNER_CREDENTIAL")
                .map(|v| v.trim())
                .filter(|v| !v.is_empty()),
            get("RHONE_RUNNER_CREDENTIAL_FILE"),
        ) {
            (Some(_), Some(_)) => {
                errors.push(
                    "set RHONE_RUNNER_CREDENTIAL or RHONE_RUNNER_CREDENTIAL_FILE, not both"
                        .to_owned(),
                );
                None
            }
            (Some(value), None) => Some(Secret::new(value)),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
                Ok(_) => {
                    errors.push(format!("RHONE_RUNNER_CREDENTIAL_FILE={path:?} is empty"));
                    None
                }
                Err(e) => {
                    errors.push(format!("RHONE_RUNNER_CREDENTIAL_FILE={path:?}: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        if config.api_url.is_some() != config.credential.is_some() {
            errors.push(
                "RHONE_API_URL and RHONE_RUNNER_CREDENTIAL go together: a runner joins a control plane with the credential `rhone runners add` printed".to_owned(),
            );
        }
        let mut number = |key: &str, range: std::ops::RangeInclusive<i64>| {
            let v = get(key)?;
            match v.parse::<i64>() {
                Ok(n) if range.contains(&n) => Some(n),
                _ => {
                    errors.push(format!(
                        "{key}={v:?} must be a number from {} to {}",
                        range.start(),
                        range.end()
                    ));
                    None
                }
            }
        };
        config.memory_mb = number("RHONE_RUNNER_MEMORY_MB", 64..=(1 << 24));
        config.cpu_millis = number("RHONE_RUNNER_CPU_MILLIS", 100..=(1 << 20));
        config.slots = number("RHONE_RUNNER_SLOTS", 1..=10_000).and_then(|n| i32::try_from(n).ok());
        if let Some(version) = get("RHONE_RUNNER_AGENT_VERSION") {
            config.agent_version = version;
        }
        if let Some(ms) = get("RHONE_RUNNER_DRAIN_TIMEOUT_MS") {
            match ms.parse::<u64>() {
                Ok(ms) if (1..=600_000).contains(&ms) => {
                    config.drain_timeout = Duration::from_millis(ms);
                }
                _ => errors.push(format!(
                    "RHONE_RUNNER_DRAIN_TIMEOUT_MS={ms:?} must be a number of milliseconds from 1 to 600000"
                )),
            }
        }
        if let Some(names) = get("RHONE_RUNNER_INHERIT_ENV") {
            config.inherit_env = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(hash) = get("RHONE_RUNNER_CALL_TOKEN_SHA256") {
            if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                config.call_token_sha256 = Some(hash.to_ascii_lowercase());
            } else {
                errors.push(
                    "RHONE_RUNNER_CALL_TOKEN_SHA256 must be 64 hex digits (a SHA-256)".to_owned(),
                );
            }
        }
        if let Some(runtime) = get("RHONE_RUNNER_RUNTIME") {
            config.runtime = runtime.into();
        }
        if let Some(parent) = get("RHONE_RUNNER_CGROUP_PARENT") {
            if parent.starts_with('/') {
                config.cgroup_parent = parent;
            } else {
                errors.push(format!(
                    "RHONE_RUNNER_CGROUP_PARENT={parent:?} must be an absolute cgroup path like /rhone.slice"
                ));
            }
        }
        if let Some(subnet) = get("RHONE_RUNNER_SUBNET") {
            match rhone_sandbox::net::parse_subnet(&subnet) {
                Ok(subnet) => config.subnet = Some(subnet),
                Err(e) => errors.push(format!("RHONE_RUNNER_SUBNET={e}")),
            }
        }
        if let Some(pairs) = get("RHONE_RUNNER_SHARED_DIRS") {
            for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match pair.split_once(':') {
                    Some((host, inside)) if host.starts_with('/') && inside.starts_with('/') => {
                        config.shared_dirs.push((host.into(), inside.to_owned()));
                    }
                    _ => errors.push(format!(
                        "RHONE_RUNNER_SHARED_DIRS: {pair:?} must be HOST_DIR:/SANDBOX/DIR, both absolute"
                    )),
                }
            }
        }
        if let Some(dir) = get("RHONE_RUNNER_NET_LOCK_DIR") {
            config.net_lock_dir = dir.into();
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() -> Result<(), Vec<String>> {
        let c = RunnerConfig::parse(&env(&[]))?;
        assert_eq!(c.work_dir, PathBuf::from(DEFAULT_WORK_DIR));
        assert_eq!(c.artifact_dir, PathBuf::from(DEFAULT_ARTIFACT_DIR));
        assert_eq!(c.api_url, None);
        assert_eq!(c.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.inherit_env, DEFAULT_INHERIT_ENV);
        Ok(())
    }

    #[test]
    fn every_key_parsed() -> Result<(), Vec<String>> {
        let hash = "A".repeat(64);
        let c = RunnerConfig::parse(&env(&[
            ("RHONE_RUNNER_WORK_DIR", "/srv/runner"),
            ("RHONE_API_URL", "http://api:8080/"),
            ("RHONE_RUNNER_CREDENTIAL", "t0ken"),
            ("RHONE_RUNNER_ADDRESS", "http://10.0.0.5:8082"),
            ("RHONE_RUNNER_MEMORY_MB", "2048"),
            ("RHONE_RUNNER_CPU_MILLIS", "1500"),
            ("RHONE_RUNNER_SLOTS", "7"),
            ("RHONE_RUNNER_AGENT_VERSION", "0.2.0-test"),
            ("RHONE_RUNNER_CALL_TOKEN_SHA256", hash.as_str()),
            ("RHONE_RUNNER_DRAIN_TIMEOUT_MS", "2500"),
            ("RHONE_RUNNER_INHERIT_ENV", "PATH, LANG"),
            ("RHONE_RUNNER_SUBNET", "10.213.9.0/24"),
            ("RHONE_RUNNER_CGROUP_PARENT", "/rhone.slice"),
        ]))?;
        assert_eq!(c.cgroup_parent, "/rhone.slice");
        assert_eq!(c.subnet, Some((std::net::Ipv4Addr::new(10, 213, 9, 0), 24)));
        assert_eq!(c.work_dir, PathBuf::from("/srv/runner"));
        assert_eq!(c.credential.as_ref().map(Secret::expose), Some("t0ken"));
        assert_eq!(c.api_url.as_deref(), Some("http://api:8080"));
        assert_eq!(c.address.as_deref(), Some("http://10.0.0.5:8082"));
        assert_eq!(
            (c.memory_mb, c.cpu_millis, c.slots),
            (Some(2048), Some(1500), Some(7))
        );
        assert_eq!(c.agent_version, "0.2.0-test");
        assert_eq!(c.call_token_sha256, Some("a".repeat(64)));
        assert_eq!(c.drain_timeout, Duration::from_millis(2500));
        assert_eq!(c.inherit_env, ["PATH", "LANG"]);
        assert!(
            !format!("{c:?}").contains("t0ken"),
            "the token leaks in Debug"
        );
        Ok(())
    }

    #[test]
    fn every_bad_key_is_reported() {
        let errors = RunnerConfig::parse(&env(&[
            ("RHONE_RUNNER_WORK_DIR", "relative"),
            ("RHONE_API_URL", "ftp://x"),
            ("RHONE_RUNNER_CREDENTIAL", "c"),
            ("RHONE_RUNNER_SLOTS", "0"),
            ("RHONE_RUNNER_DRAIN_TIMEOUT_MS", "soon"),
            ("RHONE_RUNNER_SUBNET", "10.213.0.1/24"),
        ]))
        .err()
        .unwrap_or_default();
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].contains("RHONE_RUNNER_WORK_DIR"));
        assert!(errors[1].contains("RHONE_API_URL"));
        assert!(errors[2].contains("go together"));
        assert!(errors[3].contains("RHONE_RUNNER_SLOTS"));
        assert!(errors[4].contains("RHONE_RUNNER_DRAIN_TIMEOUT_MS"));
        assert!(errors[5].contains("RHONE_RUNNER_SUBNET"));
    }
}
