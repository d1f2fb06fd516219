//! The app manifest `rhone.toml`: what Rhone needs to know to build, run and route an app.
//! `manifest/README.md` is the user-facing reference; the doc comments here say the same.
//!
//! Paths: `build.output_dir` is relative to the repository root; every other path is
//! relative to the build output, which is the artifact root (only the artifact is deployed).

mod parse;
mod reader;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;

use rhone_core::Limits;
use serde::{Deserialize, Serialize};

pub use reader::Problem;
pub(crate) use values::is_relative_path;
pub use values::{InvalidRoutePattern, RoutePattern, Service, SignaturePolicy};

pub const DEFAULT_OUTPUT_DIR: &str = "dist";
pub const DEFAULT_BUILD_TIMEOUT_SECS: u64 = 600;
pub const DEFAULT_MAX_LOG_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
pub const DEFAULT_READINESS_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_ASSETS_DIR: &str = "public";
pub const DEFAULT_ASSET_MANIFEST: &str = "manifest.json";
pub const DEFAULT_STATE_SCHEMA: &str = "vango_state_schema.json";
pub const DEFAULT_WAKE_BUDGET_MS: u32 = 10_000;

/// A parsed, validated `rhone.toml`. Absent optional sections read as their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppManifest {
    pub build: BuildSection,
    pub run: RunSection,
    pub assets: AssetsSection,
    pub state: StateSection,
    pub routes: RoutesSection,
    pub secrets: SecretsSection,
    pub services: ServicesSection,
    pub wake: WakeSection,
    pub migrations: MigrationsSection,
}

impl AppManifest {
    /// Parses `rhone.toml`. Every problem is reported, each with its line, column and field.
    pub fn parse(text: &str) -> Result<AppManifest, ManifestError> {
        parse::parse(text).map_err(|problems| ManifestError { problems })
    }
}

/// `[build]` (required): how to turn the repository into the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildSection {
    /// `command` (required): shell command line (`sh -c`) run at the repository root.
    pub command: String,
    /// `output_dir` (default `dist`): the directory, relative to the repository root, that the
    /// build leaves behind; it becomes the artifact.
    pub output_dir: String,
    /// `timeout_secs` (default 600, 1..=7200): the build is killed after this long.
    pub timeout_secs: u64,
    /// `max_log_bytes` (default 1 MiB, 1 KiB..=256 MiB): build output kept beyond this is cut.
    pub max_log_bytes: u64,
    /// The build's sandbox, defaults [`Limits::BUILD_DEFAULT`]:
    /// - `memory_mb` (default 2048, 16..=65536): memory limit in MiB, `/tmp` and page cache
    ///   included; past it the build is killed and fails with "out of memory (limit N MiB)".
    /// - `cpu_millis` (default 2000, 10..=64000): CPU quota in thousandths of a core.
    /// - `max_pids` (default 1024, 8..=32768): processes and threads at once; a fork bomb
    ///   stops there.
    #[serde(flatten)]
    pub limits: Limits,
}

/// `[run]` (required): how to start the app from the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSection {
    /// `command` (required): shell command line (`sh -c`) run at the artifact root.
    pub command: String,
    /// `port` (default 8080, 1..=65535): the app listens here; Rhone sets `PORT` to it.
    pub port: u16,
    /// `health_path` (default `/healthz`): answers 2xx once the app is ready.
    pub health_path: String,
    /// `readiness_timeout_secs` (default 60, 1..=3600): how long a start may take to pass its
    /// health check before the allocation fails.
    pub readiness_timeout_secs: u64,
    /// The app's sandbox, defaults [`Limits::RUN_DEFAULT`]:
    /// - `memory_mb` (default 512, 16..=65536): memory limit in MiB, `/tmp` and page cache
    ///   included; past it the app is killed and its allocation fails with "out of memory
    ///   (limit N MiB)".
    /// - `cpu_millis` (default 1000, 10..=64000): CPU quota in thousandths of a core.
    /// - `max_pids` (default 256, 8..=32768): processes and threads at once; a fork bomb
    ///   stops there.
    #[serde(flatten)]
    pub limits: Limits,
}

/// `[assets]`: Vango's fingerprinted static files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetsSection {
    /// `dir` (default `public`): directory of the assets inside the build output, served at
    /// `/<dir>/`.
    pub dir: String,
    /// `manifest` (default `manifest.json`): Vango's asset manifest inside the build output, a
    /// flat JSON map from source name to fingerprinted name (`name.<8 hex>.ext`).
    pub manifest: String,
}

/// `[state]`: Vango's state schema, compared between deploys to classify warm or cold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateSection {
    /// `schema` (default `vango_state_schema.json`): path inside the build output.
    pub schema: String,
}

/// `[routes]`: request classes the edge must know before it holds, wakes or forwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesSection {
    /// `webhooks` (default none): provider webhooks, `{ path = "…", signature = "…" }`. The
    /// edge never turns one into an invisible replay buffer while the app is cold.
    pub webhooks: Vec<WebhookRoute>,
    /// `idempotent` (default none): patterns of unsafe routes (POST, PUT, PATCH, DELETE) that
    /// honour an `Idempotency-Key` header; with an idempotency service bound, the edge may wake
    /// the app and forward such a request once. Other unsafe requests are never replayed.
    pub idempotent: Vec<RoutePattern>,
}

/// One webhook route of `routes.webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRoute {
    /// `path` (required): a route pattern; each webhook path is declared once.
    pub path: RoutePattern,
    /// `signature` (required): the provider's signing scheme, or `none`.
    pub signature: SignaturePolicy,
}

/// `[secrets]`: secrets the app reads from its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SecretsSection {
    /// `required` (default none): environment variable names (`[A-Z_][A-Z0-9_]*`, not `PORT`
    /// or `RHONE_*`); a deploy blocks until each is set on the environment.
    pub required: Vec<String>,
}

/// `[services]`: runtime services the app needs bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServicesSection {
    /// `required` (default none): from `session_store`, `broadcast`, `idempotency`, `cache`,
    /// `queue`, `object_storage`.
    pub required: Vec<Service>,
}

/// `[wake]`: holding requests while a sleeping app starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WakeSection {
    /// `budget_ms` (default 10000, 100..=300000): how long the edge holds a safe request for a
    /// wake before answering 503 with `Retry-After`.
    pub budget_ms: u32,
}

/// `[migrations]`: SQL migrations, run as a separate release step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationsSection {
    /// `dir` (optional): directory of migration files inside the build output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// Why `rhone.toml` was rejected: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    problems: Vec<Problem>,
}

impl ManifestError {
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
