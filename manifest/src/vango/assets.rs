//! Vango's asset manifest: a flat JSON map from source name to fingerprinted name
//! (`name.<first 8 hex of sha256>.ext`), and the check that each file is current.

use std::collections::BTreeMap;
use std::{fmt, io};

use serde::{Deserialize, Serialize};

use super::{VangoFileError, sha256_hex};
use crate::app::is_relative_path;

const WHAT: &str = "asset manifest";

/// `manifest.json` as Vango writes it. A name mapped to itself is an unhashed file (Vango
/// copies some directories, such as islands, that way); any other mapping must be
/// fingerprinted: `stem.<8 lowercase hex>.ext`, where `ext` may have dots (`vango.1a2b3c4d.min.js`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VangoAssetManifest {
    entries: BTreeMap<String, String>,
}

impl VangoAssetManifest {
    pub fn parse(json: &str) -> Result<Self, VangoFileError> {
        let manifest: VangoAssetManifest = serde_json::from_str(json)
            .map_err(|source| VangoFileError::Json { what: WHAT, source })?;
        for (source, fingerprinted) in &manifest.entries {
            let invalid = |message: String| VangoFileError::Invalid {
                what: WHAT,
                field: format!("{source:?}"),
                message,
            };
            if !is_relative_path(source) || !is_relative_path(fingerprinted) {
                let found = if is_relative_path(source) {
                    fingerprinted
                } else {
                    source
                };
                return Err(invalid(format!(
                    "expected relative paths without \"..\", found {found:?}"
                )));
            }
            if fingerprinted != source && fingerprint(fingerprinted).is_none() {
                return Err(invalid(format!(
                    "expected a fingerprinted name like \"name.<8 lowercase hex>.ext\" \
                     (or {source:?} itself for an unhashed file), found {fingerprinted:?}"
                )));
            }
        }
        Ok(manifest)
    }

    /// (source, fingerprinted) pairs, sorted by source.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(s, f)| (s.as_str(), f.as_str()))
    }

    pub fn fingerprinted(&self, source: &str) -> Option<&str> {
        self.entries.get(source).map(String::as_str)
    }
}

impl FromIterator<(String, String)> for VangoAssetManifest {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        VangoAssetManifest {
            entries: iter.into_iter().collect(),
        }
    }
}

/// The 8 hex of a fingerprinted file name: the first dot-separated part after the stem that
/// is 8 lowercase hex digits, with an extension after it.
fn fingerprint(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let parts: Vec<&str> = name.split('.').collect();
    let inner = parts.get(1..parts.len().saturating_sub(1)).unwrap_or(&[]);
    inner
        .iter()
        .copied()
        .find(|p| p.len() == 8 && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// One current asset of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetEntry {
    pub source: String,
    /// Path inside the assets directory; served at `/<assets dir>/<fingerprinted>`.
    pub fingerprinted: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    pub size: u64,
    /// Whether the name carries its digest, so it may be cached forever
    /// (`Cache-Control: public, max-age=31536000, immutable`).
    pub immutable: bool,
}

/// An asset whose file is missing or whose content no longer matches its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleAsset {
    pub source: String,
    pub fingerprinted: String,
    pub reason: StaleReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StaleReason {
    Unreadable { error: String },
    DigestMismatch { sha256: String },
}

impl fmt::Display for StaleAsset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StaleAsset {
            source,
            fingerprinted,
            reason,
        } = self;
        write!(f, "{fingerprinted} (for {source}): ")?;
        match reason {
            StaleReason::Unreadable { error } => write!(f, "cannot be read: {error}"),
            StaleReason::DigestMismatch { sha256 } => {
                let named = fingerprint(fingerprinted).unwrap_or("");
                let actual = sha256.get(..8).unwrap_or(sha256);
                write!(f, "content sha256 starts {actual}, the name says {named}")
            }
        }
    }
}

/// Checks every asset of `manifest` through `read_file`, which gets the fingerprinted path
/// (relative to the assets directory) and returns the file's bytes. `Ok` lists every asset
/// with its digest; `Err` lists every stale one.
pub fn check_assets(
    manifest: &VangoAssetManifest,
    read_file: impl Fn(&str) -> io::Result<Vec<u8>>,
) -> Result<Vec<AssetEntry>, Vec<StaleAsset>> {
    let mut current = Vec::new();
    let mut stale = Vec::new();
    for (source, fingerprinted) in manifest.entries() {
        let named = fingerprint(fingerprinted).filter(|_| fingerprinted != source);
        let stale_because = |reason| StaleAsset {
            source: source.to_owned(),
            fingerprinted: fingerprinted.to_owned(),
            reason,
        };
        match read_file(fingerprinted) {
            Err(err) => stale.push(stale_because(StaleReason::Unreadable {
                error: err.to_string(),
            })),
            Ok(bytes) => {
                let sha256 = sha256_hex(&bytes);
                if named.is_some_and(|hex| !sha256.starts_with(hex)) {
                    stale.push(stale_because(StaleReason::DigestMismatch { sha256 }));
                } else {
                    current.push(AssetEntry {
                        source: source.to_owned(),
                        fingerprinted: fingerprinted.to_owned(),
                        sha256,
                        size: bytes.len() as u64,
                        immutable: named.is_some(),
                    });
                }
            }
        }
    }
    if stale.is_empty() {
        Ok(current)
    } else {
        Err(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_parse(json: &str, expected: &str) {
        let actual = match VangoAssetManifest::parse(json) {
            Ok(m) => m
                .entries()
                .map(|(s, f)| format!("{s} -> {f}"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(err) => err.to_string(),
        };
        assert_eq!(actual, expected.trim());
    }

    #[test]
    fn parse() {
        check_parse(
            r#"{"app.css": "app.0123abcd.css", "vango.js": "vango.89abcdef.min.js",
                "logo.png": "assets/logo.00000000.png", "js/islands/x.js": "js/islands/x.js"}"#,
            "app.css -> app.0123abcd.css\njs/islands/x.js -> js/islands/x.js\n\
             logo.png -> assets/logo.00000000.png\nvango.js -> vango.89abcdef.min.js",
        );
        check_parse("{}", "");
        check_parse(
            r#"{"app.css": "app.css.bak"}"#,
            r#"asset manifest: "app.css": expected a fingerprinted name like "name.<8 lowercase hex>.ext" (or "app.css" itself for an unhashed file), found "app.css.bak""#,
        );
        check_parse(
            r#"{"app.css": "app.0123ABCD.css"}"#,
            r#"asset manifest: "app.css": expected a fingerprinted name like "name.<8 lowercase hex>.ext" (or "app.css" itself for an unhashed file), found "app.0123ABCD.css""#,
        );
        check_parse(
            r#"{"app.css": "0123abcd.css"}"#,
            r#"asset manifest: "app.css": expected a fingerprinted name like "name.<8 lowercase hex>.ext" (or "app.css" itself for an unhashed file), found "0123abcd.css""#,
        );
        check_parse(
            r#"{"app.css": "../app.0123abcd.css"}"#,
            r#"asset manifest: "app.css": expected relative paths without "..", found "../app.0123abcd.css""#,
        );
        check_parse(
            r#"{"app.css": 3}"#,
            "asset manifest: invalid JSON: invalid type: integer `3`, expected a string at line 1 column 13",
        );
    }

    #[test]
    fn check_finds_current_and_stale_assets() {
        let css = b"body{}".to_vec();
        let css_name = format!("app.{}.css", &sha256_hex(&css)[..8]);
        let island = b"island".to_vec();
        let files = |name: &str| -> io::Result<Vec<u8>> {
            match name {
                "js/islands/x.js" => Ok(island.clone()),
                "app.00000000.js" => Ok(b"changed".to_vec()),
                n if n.starts_with("app.") && n.ends_with(".css") => Ok(css.clone()),
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
            }
        };
        let good: VangoAssetManifest = [
            ("app.css".into(), css_name.clone()),
            ("js/islands/x.js".into(), "js/islands/x.js".into()),
        ]
        .into_iter()
        .collect();
        let entries = check_assets(&good, files).expect("every asset is current");
        assert_eq!(
            entries,
            vec![
                AssetEntry {
                    source: "app.css".into(),
                    fingerprinted: css_name,
                    sha256: sha256_hex(&css),
                    size: 6,
                    immutable: true,
                },
                AssetEntry {
                    source: "js/islands/x.js".into(),
                    fingerprinted: "js/islands/x.js".into(),
                    sha256: sha256_hex(&island),
                    size: 6,
                    immutable: false,
                },
            ]
        );

        let bad: VangoAssetManifest = [
            ("app.css".into(), "app.00000000.css".into()),
            ("app.js".into(), "app.00000000.js".into()),
            ("logo.png".into(), "logo.12345678.png".into()),
        ]
        .into_iter()
        .collect();
        let stale = check_assets(&bad, files).expect_err("stale assets are found");
        let lines: Vec<String> = stale.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                format!(
                    "app.00000000.css (for app.css): content sha256 starts {}, the name says 00000000",
                    &sha256_hex(&css)[..8]
                ),
                format!(
                    "app.00000000.js (for app.js): content sha256 starts {}, the name says 00000000",
                    &sha256_hex(b"changed")[..8]
                ),
                "logo.12345678.png (for logo.png): cannot be read: no such file".to_owned(),
            ]
        );
    }
}
