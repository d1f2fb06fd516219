//! The manifests of a Rhone deploy, as pure parsing and checks (callers do the I/O):
//! the app manifest `rhone.toml` ([`app`]), Vango's build artifacts — the asset manifest and
//! the state schema ([`vango`]) — and the artifact manifest stored beside each artifact
//! ([`artifact`]).

pub mod app;
pub mod artifact;
pub mod vango;

pub use app::{AppManifest, ManifestError, Problem};
pub use artifact::{ARTIFACT_FORMAT_VERSION, ArtifactManifest, ArtifactManifestError};
pub use vango::{
    StateImpact, StateSchema, VangoAssetManifest, check_assets, classify_state_impact,
};
