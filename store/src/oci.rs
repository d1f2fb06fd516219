//! Artifacts as OCI artifacts: one layer holding the archive
//! ([`ARTIFACT_MEDIA_TYPE`](crate::ARTIFACT_MEDIA_TYPE)) and a small JSON config
//! ([`CONFIG_MEDIA_TYPE`]) recording its digest, pushed and pulled with anonymous auth.
//!
//! Registries on a loopback address are spoken to over plain HTTP (traffic that never
//! leaves the host); every other registry over HTTPS.

use std::net::IpAddr;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use crate::archive::Packed;
use crate::error::{Result, StoreError};
use crate::{ARTIFACT_MEDIA_TYPE, verified};
use rhone_core::digest::Digest;

/// Media type of the config blob, `{"digest": "sha256:…", "size": N}`.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.rhone.artifact.config.v1+json";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The config blob: what the artifact is, independent of how the registry describes it.
#[derive(Debug, Serialize, Deserialize)]
struct ArtifactConfig {
    digest: Digest,
    size: u64,
}

/// Pushes `packed` to `reference` (`registry/repository:tag`) and returns the digest of
/// the manifest, which pins exactly this push (`registry/repository@<digest>`).
pub async fn push(reference: &str, packed: &Packed) -> Result<Digest> {
    let (image, client) = connect(reference).await?;
    let fail = |op| move |e| oci_error(op, reference, e);

    let config = serde_json::to_vec(&ArtifactConfig {
        digest: packed.digest().clone(),
        size: packed.size(),
    })
    .map_err(|e| oci_error("encode config", reference, e))?;
    let config_digest = Digest::of(&config);
    client
        .push_blob(&image, packed.bytes(), packed.digest().as_str())
        .await
        .map_err(fail("push layer"))?;
    client
        .push_blob(&image, &config, config_digest.as_str())
        .await
        .map_err(fail("push config"))?;

    let manifest = OciImageManifest {
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
        config: descriptor(CONFIG_MEDIA_TYPE, &config_digest, config.len() as u64),
        layers: vec![descriptor(
            ARTIFACT_MEDIA_TYPE,
            packed.digest(),
            packed.size(),
        )],
        ..OciImageManifest::default()
    };
    // The exact bytes sent are what the registry hashes, so their digest is the manifest's.
    let body =
        serde_json::to_vec(&manifest).map_err(|e| oci_error("encode manifest", reference, e))?;
    let manifest_digest = Digest::of(&body);
    client
        .push_manifest_raw(
            &image,
            body,
            http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
        )
        .await
        .map_err(fail("push manifest"))?;
    tracing::info!(reference, artifact = %packed.digest(), manifest = %manifest_digest, "pushed artifact");
    Ok(manifest_digest)
}

/// Pulls the artifact at `reference`. The layer must be the one the config records, and
/// its bytes must hash to that digest; anything else is an error, never a partial result.
pub async fn pull(reference: &str) -> Result<Packed> {
    let (image, client) = connect(reference).await?;
    let fail = |op| move |e| oci_error(op, reference, e);
    let not_artifact = |reason: String| StoreError::NotAnArtifact {
        reference: reference.to_owned(),
        reason,
    };

    let (manifest, _) = client
        .pull_image_manifest(&image, &RegistryAuth::Anonymous)
        .await
        .map_err(fail("pull manifest"))?;
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(not_artifact(format!(
            "config media type is {:?}, expected {CONFIG_MEDIA_TYPE:?}",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(not_artifact(format!(
            "{} layers, expected exactly one",
            manifest.layers.len()
        )));
    };
    if layer.media_type != ARTIFACT_MEDIA_TYPE {
        return Err(not_artifact(format!(
            "layer media type is {:?}, expected {ARTIFACT_MEDIA_TYPE:?}",
            layer.media_type
        )));
    }

    let mut config = Vec::new();
    client
        .pull_blob(&image, &manifest.config, &mut config)
        .await
        .map_err(fail("pull config"))?;
    let config: ArtifactConfig = serde_json::from_slice(&config)
        .map_err(|e| not_artifact(format!("config is not a Rhone artifact config: {e}")))?;
    let layer_digest = Digest::parse(&layer.digest)?;
    if layer_digest != config.digest {
        return Err(StoreError::DigestMismatch {
            expected: config.digest,
            actual: layer_digest,
        });
    }

    let mut bytes = Vec::new();
    client
        .pull_blob(&image, layer, &mut bytes)
        .await
        .map_err(fail("pull layer"))?;
    let bytes = verified(bytes, &config.digest).await?;
    Ok(Packed::from_bytes(bytes))
}

async fn connect(reference: &str) -> Result<(Reference, Client)> {
    let image: Reference = reference
        .parse()
        .map_err(|e| oci_error("parse reference", reference, e))?;
    let registry = image.resolve_registry().to_owned();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT),
        ..ClientConfig::default()
    });
    // The blob and manifest calls do not take credentials; they use what is stored here.
    client
        .store_auth_if_needed(&registry, &RegistryAuth::Anonymous)
        .await;
    Ok((image, client))
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_string(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    }
}

/// Whether a registry (`host[:port]`) is on this machine: `localhost` or a loopback IP.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn oci_error(
    op: &'static str,
    reference: &str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Oci {
        op,
        reference: reference.to_owned(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_registries() {
        for (registry, expected) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("LOCALHOST", true),
            ("127.1.2.3", true),
            ("[::1]:5000", true),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
            ("localhost.example.com", false),
        ] {
            assert_eq!(is_loopback(registry), expected, "{registry}");
        }
    }
}
