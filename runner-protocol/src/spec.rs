//! `AllocationSpec`: the command the control plane sends for one allocation, and the
//! checks that turn a bad one into an error naming the field.

use std::collections::BTreeMap;

use rhone_core::secret::serialize_exposed;
use rhone_core::{Digest, Endpoint, Limits, Secret};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Variables the runner sets itself; a spec may not set them.
pub const INJECTED_ENV: &[&str] = &["PORT", "RHONE_ALLOCATION_ID", "RHONE_ARTIFACT_DIGEST"];
/// Default readiness timeout when the spec gives none.
pub const DEFAULT_READINESS_TIMEOUT_MS: u64 = 30_000;
/// The longest readiness timeout or drain deadline a spec may ask for.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// The most endpoints one allocation may be let through to.
pub const MAX_EGRESS: usize = 32;

/// What the control plane wants for one allocation. `PUT /v1/allocations/{id}` takes it as
/// JSON; `secrets` values are [`Secret`]s, never printed and never returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationSpec {
    pub allocation_id: Uuid,
    /// The control plane's generation of this command; a lower one than the runner has seen
    /// for the allocation is refused.
    pub generation: i64,
    pub artifact_digest: Digest,
    pub process: ProcessSpec,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, serialize_with = "serialize_exposed")]
    pub secrets: BTreeMap<String, Secret>,
    #[serde(default)]
    pub desired: Desired,
    /// The only places the allocation may open connections to: the database and runtime
    /// services bound to its environment. The runner resolves each name, lets the
    /// allocation's address through to those addresses and ports alone, and names them in
    /// the sandbox's `/etc/hosts` (it has no DNS), when it starts. Empty: no connection
    /// leaves at all.
    #[serde(default)]
    pub egress: Vec<Endpoint>,
}

/// How to run and probe the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Run with `sh -c` in the unpacked artifact's root, inside the allocation's sandbox.
    pub command: String,
    /// The port the app listens on (`[run] port`), at the allocation's own address; the
    /// runner sets `PORT` to it. Default 8080.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Readiness: `GET http://ADDRESS:PORT{health_path}` answers 2xx.
    pub health_path: String,
    /// How long readiness may take. Default [`DEFAULT_READINESS_TIMEOUT_MS`].
    #[serde(default = "default_readiness_timeout_ms")]
    pub readiness_timeout_ms: u64,
    /// How long a drain waits after SIGTERM before SIGKILL. Default: the runner's
    /// `drain_timeout`.
    #[serde(default)]
    pub drain_timeout_ms: Option<u64>,
    /// What the sandbox may use (`[run] memory_mb`, `cpu_millis`, `max_pids`). Default
    /// [`Limits::RUN_DEFAULT`].
    #[serde(default = "default_limits")]
    pub limits: Limits,
}

fn default_port() -> u16 {
    8080
}

fn default_limits() -> Limits {
    Limits::RUN_DEFAULT
}

fn default_readiness_timeout_ms() -> u64 {
    DEFAULT_READINESS_TIMEOUT_MS
}

/// Whether the allocation should run: in a spec, and as stored (`allocations.desired`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    #[default]
    Run,
    Stop,
}

impl Desired {
    /// The name as serialised and stored: `run`, `stop`.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Run => "run",
            Desired::Stop => "stop",
        }
    }
}

/// A spec that cannot be run, naming the field (`process.health_path`, `env.PORT` …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    pub field: String,
    pub problem: String,
}

impl AllocationSpec {
    /// Checks what serde cannot: the id matches the path, limits, variable names.
    pub fn validate(&self, path_id: Uuid) -> Result<(), SpecError> {
        let fail = |field: &str, problem: String| {
            Err(SpecError {
                field: field.to_owned(),
                problem,
            })
        };
        if self.allocation_id != path_id {
            return fail(
                "allocation_id",
                format!(
                    "{} does not match the id in the path, {path_id}",
                    self.allocation_id
                ),
            );
        }
        if self.generation < 0 {
            return fail("generation", "must not be negative".into());
        }
        let p = &self.process;
        if p.command.trim().is_empty() {
            return fail("process.command", "must not be empty".into());
        }
        if p.command.contains('\0') {
            return fail("process.command", "must not contain a NUL byte".into());
        }
        if !p.health_path.starts_with('/')
            || p.health_path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return fail(
                "process.health_path",
                format!("{:?} must start with `/` and hold no spaces", p.health_path),
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&p.readiness_timeout_ms) {
            return fail(
                "process.readiness_timeout_ms",
                format!("must be from 1 to {MAX_TIMEOUT_MS}"),
            );
        }
        if p.port == 0 {
            return fail("process.port", "must be from 1 to 65535".into());
        }
        if let Err((field, range)) = p.limits.check() {
            return fail(
                &format!("process.limits.{field}"),
                format!("must be from {} to {}", range.start(), range.end()),
            );
        }
        if p.drain_timeout_ms.is_some_and(|ms| ms > MAX_TIMEOUT_MS) {
            return fail(
                "process.drain_timeout_ms",
                format!("must be at most {MAX_TIMEOUT_MS}"),
            );
        }
        for (name, value) in &self.env {
            check_name("env", name)?;
            if value.contains('\0') {
                return fail(&format!("env.{name}"), "must not contain a NUL byte".into());
            }
        }
        for (name, secret) in &self.secrets {
            check_name("secrets", name)?;
            if self.env.contains_key(name) {
                return fail(
                    &format!("secrets.{name}"),
                    "is also set in `env`; a variable comes from one place".into(),
                );
            }
            if secret.expose().contains('\0') {
                return fail(
                    &format!("secrets.{name}"),
                    "must not contain a NUL byte".into(),
                );
            }
        }
        if self.egress.len() > MAX_EGRESS {
            return fail(
                "egress",
                format!(
                    "names {} endpoints; at most {MAX_EGRESS}",
                    self.egress.len()
                ),
            );
        }
        Ok(())
    }

    /// Whether `other` runs the same thing: only `generation` and `desired` may change
    /// between generations of one allocation (and `egress`, which is read once, when the
    /// allocation starts).
    pub fn same_workload(&self, other: &AllocationSpec) -> bool {
        self.artifact_digest == other.artifact_digest
            && self.process == other.process
            && self.env == other.env
            && self.secrets == other.secrets
    }
}

fn check_name(map: &str, name: &str) -> Result<(), SpecError> {
    match variable_name_problem(name) {
        Some(problem) => Err(SpecError {
            field: format!("{map}.{name}"),
            problem: problem.to_owned(),
        }),
        None => Ok(()),
    }
}

/// What keeps `name` from naming an app's environment variable or secret, if anything.
pub fn variable_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Some("is not a variable name (letters, digits and `_`, not starting with a digit)");
    }
    if INJECTED_ENV.contains(&name) {
        return Some("is set by the runner");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const ID: &str = "0190a0b0-0000-7000-8000-000000000001";

    fn base() -> Value {
        json!({
            "allocation_id": ID,
            "generation": 1,
            "artifact_digest": format!("sha256:{}", "a".repeat(64)),
            "process": { "command": "./server", "health_path": "/healthz" },
            "env": { "MODE": "x" },
            "secrets": { "TOKEN": "s3cr3t" },
        })
    }

    /// Applies `edit` to a valid spec and checks the error names `expected` (or none).
    fn check(edit: impl FnOnce(&mut Value), expected: Option<&str>) {
        let mut v = base();
        edit(&mut v);
        let got = serde_json::from_value::<AllocationSpec>(v)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                let id = Uuid::parse_str(ID).map_err(|e| e.to_string())?;
                s.validate(id).map_err(|e| e.to_string())
            });
        match (got, expected) {
            (Ok(()), None) => {}
            (Err(e), Some(part)) if e.contains(part) => {}
            (got, _) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn validation_table() {
        check(|_| {}, None);
        check(|v| v["generation"] = json!(-1), Some("generation"));
        check(|v| v["process"]["port"] = json!(0), Some("process.port"));
        check(
            |v| v["process"]["limits"] = json!({"memory_mb": 1, "cpu_millis": 100, "max_pids": 64}),
            Some("process.limits.memory_mb"),
        );
        check(
            |v| v["artifact_digest"] = json!("md5:x"),
            Some("invalid digest"),
        );
        check(
            |v| v["allocation_id"] = json!(Uuid::nil()),
            Some("allocation_id"),
        );
        check(
            |v| v["process"]["command"] = json!(" "),
            Some("process.command"),
        );
        check(
            |v| v["process"]["health_path"] = json!("healthz"),
            Some("process.health_path"),
        );
        check(
            |v| v["process"]["readiness_timeout_ms"] = json!(0),
            Some("readiness_timeout_ms"),
        );
        check(
            |v| v["env"]["PORT"] = json!("1"),
            Some("env.PORT: is set by the runner"),
        );
        check(|v| v["env"]["9X"] = json!("1"), Some("env.9X"));
        check(|v| v["secrets"]["MODE"] = json!("1"), Some("secrets.MODE"));
        check(
            |v| v["desired"] = json!("pause"),
            Some("unknown variant `pause`"),
        );
        check(|v| v["extra"] = json!(1), Some("unknown field `extra`"));
        check(
            |v| v["egress"] = json!(["db.internal:5432", "10.216.0.2:6379"]),
            None,
        );
        check(
            |v| v["egress"] = json!(["db.internal"]),
            Some("is not host:port: no port"),
        );
        check(
            |v| v["egress"] = json!(["db;rm -rf /:1"]),
            Some("neither a DNS name nor an IPv4 address"),
        );
        check(
            |v| v["egress"] = json!((1..=33).map(|i| format!("h{i}:1")).collect::<Vec<_>>()),
            Some("egress: names 33 endpoints; at most 32"),
        );
    }

    #[test]
    fn desired_as_str_is_its_wire_name() -> Result<(), serde_json::Error> {
        for desired in [Desired::Run, Desired::Stop] {
            assert_eq!(serde_json::to_value(desired)?, desired.as_str());
        }
        Ok(())
    }

    #[test]
    fn secrets_serialise_for_sending_but_never_print() -> Result<(), serde_json::Error> {
        let spec: AllocationSpec = serde_json::from_value(base())?;
        assert!(!format!("{spec:?}").contains("s3cr3t"));
        assert_eq!(serde_json::to_value(&spec)?["secrets"]["TOKEN"], "s3cr3t");
        Ok(())
    }
}
