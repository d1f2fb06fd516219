//! The artifact manifest: the JSON document stored next to each artifact (by digest) that
//! says what the artifact is, how to run it and where it came from. Promotion and wake read
//! it; nothing is re-derived from the repository after the build.

use rhone_core::Limits;
use serde::{Deserialize, Serialize};

use crate::app::{AppManifest, RoutesSection, Service};
use crate::vango::{AssetEntry, StateSchema};

/// The format version this crate writes; [`ArtifactManifest::parse`] refuses any other.
pub const ARTIFACT_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactManifestError {
    #[error("artifact manifest: invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "artifact manifest: format version {found} is not supported (expected {ARTIFACT_FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactManifest {
    pub format_version: u32,
    /// What the platform needs from `rhone.toml` to run and route the artifact.
    pub app: AppSubset,
    pub assets: ArtifactAssets,
    /// The Vango state schema, if the build output has one.
    pub state_schema: Option<ArtifactStateSchema>,
    /// Migration files in the artifact, sorted by path; empty when there are none.
    pub migrations: Vec<MigrationFile>,
    pub source: SourceFacts,
}

/// The part of `rhone.toml` that travels with the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSubset {
    pub process: Process,
    pub routes: RoutesSection,
    pub required_secrets: Vec<String>,
    pub required_services: Vec<Service>,
    pub wake_budget_ms: u32,
}

/// How the runner starts the app and knows it is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Shell command line, run at the artifact root.
    pub command: String,
    /// Injected as `PORT`.
    pub port: u16,
    pub health_path: String,
    pub readiness_timeout_secs: u64,
    /// `[run]`'s sandbox limits; a manifest written before they existed reads as
    /// [`Limits::RUN_DEFAULT`].
    #[serde(default = "run_default_limits")]
    pub limits: Limits,
}

fn run_default_limits() -> Limits {
    Limits::RUN_DEFAULT
}

/// Vango's fingerprinted assets, with the digest of each file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactAssets {
    /// Directory of the assets inside the artifact, served at `/<dir>/`.
    pub dir: String,
    /// Path of Vango's `manifest.json` inside the artifact.
    pub manifest: String,
    pub entries: Vec<AssetEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactStateSchema {
    /// Path of the schema file inside the artifact.
    pub path: String,
    /// The schema as parsed; its `schema_hash` identifies it.
    pub schema: StateSchema,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationFile {
    /// Path inside the artifact.
    pub path: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
}

/// Where the artifact came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFacts {
    /// The repository URL or path as given to the deploy.
    pub repository: String,
    /// The ref that was asked for (branch, tag or sha).
    pub git_ref: String,
    /// The full commit sha the ref resolved to.
    pub commit_sha: String,
    pub build_command: String,
}

impl ArtifactManifest {
    /// Reads a stored manifest, checking its format version before its shape.
    pub fn parse(json: &str) -> Result<Self, ArtifactManifestError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u64,
        }
        let Version { format_version } = serde_json::from_str(json)?;
        if format_version != u64::from(ARTIFACT_FORMAT_VERSION) {
            return Err(ArtifactManifestError::UnsupportedVersion {
                found: format_version,
            });
        }
        Ok(serde_json::from_str(json)?)
    }
}

impl From<&AppManifest> for AppSubset {
    fn from(app: &AppManifest) -> Self {
        AppSubset {
            process: Process {
                command: app.run.command.clone(),
                port: app.run.port,
                health_path: app.run.health_path.clone(),
                readiness_timeout_secs: app.run.readiness_timeout_secs,
                limits: app.run.limits,
            },
            routes: app.routes.clone(),
            required_secrets: app.secrets.required.clone(),
            required_services: app.services.required.clone(),
            wake_budget_ms: app.wake.budget_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{RoutePattern, SignaturePolicy, WebhookRoute};
    use crate::vango::PersistedPrimitive;

    fn sample() -> ArtifactManifest {
        let text = "[build]\ncommand = \"python3 build.py\"\n[run]\ncommand = \"python3 server.py\"\n\
                    [routes]\nwebhooks = [{ path = \"/webhooks/stripe\", signature = \"stripe\" }]\n\
                    idempotent = [\"/actions/*\"]\n[secrets]\nrequired = [\"STRIPE_API_KEY\"]\n\
                    [services]\nrequired = [\"idempotency\"]\n";
        let app = AppManifest::parse(text).unwrap_or_else(|err| panic!("{err}"));
        ArtifactManifest {
            format_version: ARTIFACT_FORMAT_VERSION,
            app: AppSubset::from(&app),
            assets: ArtifactAssets {
                dir: "public".into(),
                manifest: "manifest.json".into(),
                entries: vec![AssetEntry {
                    source: "app.css".into(),
                    fingerprinted: "app.0123abcd.css".into(),
                    sha256: format!("0123abcd{}", "0".repeat(56)),
                    size: 120,
                    immutable: true,
                }],
            },
            state_schema: Some(ArtifactStateSchema {
                path: "vango_state_schema.json".into(),
                schema: StateSchema {
                    schema_version: 1.into(),
                    persisted_primitives: vec![PersistedPrimitive {
                        id: "counter.count".into(),
                        codec_fingerprint: "json:int:v1".into(),
                        persisted: true,
                    }],
                    session_keys: vec!["counter".into()],
                    schema_hash: format!("sha256:{}", "a".repeat(64)),
                },
            }),
            migrations: vec![MigrationFile {
                path: "migrations/0001_init.sql".into(),
                sha256: "b".repeat(64),
            }],
            source: SourceFacts {
                repository: "/srv/git/counter".into(),
                git_ref: "main".into(),
                commit_sha: "c".repeat(40),
                build_command: "python3 build.py".into(),
            },
        }
    }

    #[test]
    fn round_trips_through_json() {
        let manifest = sample();
        let json =
            serde_json::to_string_pretty(&manifest).expect("an artifact manifest serializes");
        let back = ArtifactManifest::parse(&json).expect("and parses back");
        assert_eq!(back, manifest);
        assert_eq!(
            back.app.routes.webhooks,
            [WebhookRoute {
                path: RoutePattern::parse("/webhooks/stripe").expect("valid"),
                signature: SignaturePolicy::Stripe
            }]
        );
    }

    #[test]
    fn json_shape_is_stable() {
        let value = serde_json::to_value(sample()).expect("an artifact manifest serializes");
        assert_eq!(value["format_version"], 1);
        assert_eq!(value["app"]["process"]["port"], 8080);
        assert_eq!(value["app"]["process"]["limits"]["memory_mb"], 512);
        assert_eq!(value["app"]["process"]["limits"]["cpu_millis"], 1000);
        assert_eq!(value["app"]["process"]["limits"]["max_pids"], 256);
        assert_eq!(value["app"]["routes"]["idempotent"][0], "/actions/*");
        assert_eq!(value["app"]["routes"]["webhooks"][0]["signature"], "stripe");
        assert_eq!(value["app"]["required_services"][0], "idempotency");
        assert_eq!(
            value["state_schema"]["schema"]["schemaHash"],
            format!("sha256:{}", "a".repeat(64))
        );
        assert_eq!(
            value["state_schema"]["schema"]["persistedPrimitives"][0]["codecFingerprint"],
            "json:int:v1"
        );
        assert_eq!(value["source"]["commit_sha"], "c".repeat(40));
    }

    #[test]
    fn run_limits_travel_with_the_artifact() {
        let text = "[build]\ncommand = \"make\"\nmemory_mb = 4096\n\
                    [run]\ncommand = \"./server\"\nmemory_mb = 1024\nmax_pids = 64\n";
        let app = AppManifest::parse(text).unwrap_or_else(|err| panic!("{err}"));
        let process = AppSubset::from(&app).process;
        assert_eq!(
            process.limits,
            Limits {
                memory_mb: 1024,
                max_pids: 64,
                ..Limits::RUN_DEFAULT
            }
        );
    }

    #[test]
    fn a_manifest_written_before_limits_reads_the_run_defaults() {
        let mut value = serde_json::to_value(sample()).expect("an artifact manifest serializes");
        let process = value["app"]["process"]
            .as_object_mut()
            .expect("process is an object");
        process.remove("limits").expect("limits were written");
        let back = ArtifactManifest::parse(&value.to_string()).expect("the old shape parses");
        assert_eq!(back.app.process.limits, Limits::RUN_DEFAULT);
        assert_eq!(back, sample());
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let mut value = serde_json::to_value(sample()).expect("an artifact manifest serializes");
        value["format_version"] = 2.into();
        let err = ArtifactManifest::parse(&value.to_string()).expect_err("version 2 is unknown");
        assert_eq!(
            err.to_string(),
            "artifact manifest: format version 2 is not supported (expected 1)"
        );
    }

    #[test]
    fn an_invalid_route_pattern_is_refused_on_read() {
        let mut value = serde_json::to_value(sample()).expect("an artifact manifest serializes");
        value["app"]["routes"]["idempotent"][0] = "actions".into();
        let err =
            serde_json::from_value::<ArtifactManifest>(value).expect_err("the pattern is invalid");
        assert!(
            err.to_string()
                .contains("expected a path pattern starting with \"/\""),
            "{err}"
        );
    }
}
