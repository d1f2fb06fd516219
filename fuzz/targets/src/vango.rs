//! Vango's build outputs: the asset manifest and the state schema.

use std::collections::HashSet;
use std::io;

use rhone_manifest::vango::{
    PersistedPrimitive, StateImpact, StateSchema, VangoAssetManifest, VangoFileError,
};
use rhone_manifest::{check_assets, classify_state_impact};

/// The first byte picks what the rest is: even, an asset manifest (`manifest.json`); odd, one
/// or two state schemas (`vango_state_schema.json`), the current and the next, split at the
/// first NUL byte.
///
/// A refused file's error names its role ("asset manifest: …", "state schema: …") and, for a
/// field error, the field (`role: field: message`).
///
/// Asset manifest: an accepted one round-trips through JSON, and [`check_assets`] puts each
/// entry in exactly one of its two lists; an entry whose name carries a fingerprint is current
/// only when its content's sha256 starts with it. State schemas: an accepted one round-trips,
/// a deploy to the same schema or a first deploy is warm, and a cold one names only ids that
/// were persisted before.
pub fn vango(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        asset_manifest(rest);
    } else {
        state_schemas(rest);
    }
}

fn asset_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let manifest = match VangoAssetManifest::parse(text) {
        Ok(manifest) => manifest,
        Err(e) => return names_its_file("asset manifest", &e),
    };
    let json = serde_json::to_string(&manifest).expect("a manifest serialises");
    let again = VangoAssetManifest::parse(&json).expect("a manifest written back parses");
    assert_eq!(again, manifest);

    // Files whose content is their own name: a name that says another digest is stale; a
    // file named "missing…" cannot be read.
    let read = |path: &str| {
        if path.contains("missing") {
            Err(io::Error::from(io::ErrorKind::NotFound))
        } else {
            Ok(path.as_bytes().to_vec())
        }
    };
    let entries: Vec<(&str, &str)> = manifest.entries().collect();
    let (current, stale) = match check_assets(&manifest, read) {
        Ok(current) => (current, Vec::new()),
        Err(stale) => (Vec::new(), stale),
    };
    if stale.is_empty() {
        assert_eq!(current.len(), entries.len(), "every asset is listed once");
    } else {
        assert!(current.is_empty());
        assert!(stale.len() <= entries.len());
    }
    for asset in &current {
        assert_eq!(
            manifest.fingerprinted(&asset.source),
            Some(asset.fingerprinted.as_str())
        );
        assert_eq!(asset.size, asset.fingerprinted.len() as u64);
        assert!(!asset.fingerprinted.contains("missing"));
        if asset.immutable {
            assert_ne!(
                asset.source, asset.fingerprinted,
                "an unhashed file is not immutable"
            );
            let name = asset.fingerprinted.rsplit('/').next().unwrap_or_default();
            assert!(
                name.split('.')
                    .any(|part| asset.sha256.starts_with(part) && part.len() == 8),
                "{} is immutable but does not name its sha256 {}",
                asset.fingerprinted,
                asset.sha256
            );
        }
    }
    for asset in &stale {
        assert_eq!(
            manifest.fingerprinted(&asset.source),
            Some(asset.fingerprinted.as_str())
        );
        let _ = asset.to_string();
    }
}

fn state_schemas(data: &[u8]) {
    let (current, next) = match data.iter().position(|&b| b == 0) {
        Some(at) => (Some(&data[..at]), &data[at + 1..]),
        None => (None, data),
    };
    let parse = |bytes: &[u8]| -> Option<StateSchema> {
        let schema = match StateSchema::parse(std::str::from_utf8(bytes).ok()?) {
            Ok(schema) => schema,
            Err(e) => {
                names_its_file("state schema", &e);
                return None;
            }
        };
        let json = serde_json::to_string(&schema).expect("a schema serialises");
        let again = StateSchema::parse(&json).expect("a schema written back parses");
        assert_eq!(again, schema);
        Some(schema)
    };
    let current = current.and_then(parse);
    let Some(next) = parse(next) else {
        return;
    };
    assert_eq!(classify_state_impact(None, &next), StateImpact::Warm);
    assert_eq!(classify_state_impact(Some(&next), &next), StateImpact::Warm);
    let Some(current) = current else {
        return;
    };
    let persisted = |s: &StateSchema| -> HashSet<String> {
        s.persisted_primitives
            .iter()
            .filter(|p| p.persisted)
            .map(|p: &PersistedPrimitive| p.id.clone())
            .collect()
    };
    match classify_state_impact(Some(&current), &next) {
        StateImpact::Warm => {
            // Every persisted primitive is still persisted, with the same codec.
            for old in current.persisted_primitives.iter().filter(|p| p.persisted) {
                assert!(
                    next.persisted_primitives.iter().any(|p| p.persisted
                        && p.id == old.id
                        && p.codec_fingerprint == old.codec_fingerprint),
                    "a warm deploy loses {}",
                    old.id
                );
            }
        }
        StateImpact::Cold { removed, changed } => {
            assert!(!removed.is_empty() || !changed.is_empty());
            let before = persisted(&current);
            let after = persisted(&next);
            for id in &removed {
                assert!(before.contains(id) && !after.contains(id), "removed {id}");
            }
            for id in &changed {
                assert!(before.contains(id) && after.contains(id), "changed {id}");
            }
        }
    }
}

/// A refusal names the file's role, and a field error its field.
fn names_its_file(role: &str, e: &VangoFileError) {
    let text = e.to_string();
    assert!(text.starts_with(&format!("{role}: ")), "{text}");
    if let VangoFileError::Invalid {
        what,
        field,
        message,
    } = e
    {
        assert_eq!(*what, role);
        assert!(
            !field.trim().is_empty(),
            "a field error names no field: {text}"
        );
        assert_eq!(text, format!("{role}: {field}: {message}"));
    }
}
