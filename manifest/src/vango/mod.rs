//! Vango's build artifacts: the asset manifest (`manifest.json`) with the check that the
//! fingerprinted files are current, and the state schema (`vango_state_schema.json`) with the
//! warm/cold classification between two deploys.

mod assets;
mod state;

pub use assets::{AssetEntry, StaleAsset, StaleReason, VangoAssetManifest, check_assets};
pub use state::{PersistedPrimitive, StateImpact, StateSchema, classify_state_impact};

use sha2::{Digest, Sha256};

/// Why a Vango artifact file was rejected. `what` names the file's role ("asset manifest",
/// "state schema"); the caller knows its path.
#[derive(Debug, thiserror::Error)]
pub enum VangoFileError {
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {field}: {message}")]
    Invalid {
        what: &'static str,
        field: String,
        message: String,
    },
}

/// Lowercase hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
