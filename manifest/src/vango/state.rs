//! Vango's state schema (`vango_state_schema.json`) and the warm/cold classification of a
//! deploy: a warm deploy keeps every persisted primitive readable, a cold one does not.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::VangoFileError;

const WHAT: &str = "state schema";

/// `vango_state_schema.json`, committed with the app and copied into the build output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateSchema {
    /// The file format's version, a string (`"1.0"`) or an integer; kept as written.
    pub schema_version: serde_json::Value,
    pub persisted_primitives: Vec<PersistedPrimitive>,
    /// The session's keys, kept as written: they do not take part in the classification.
    #[serde(default)]
    pub session_keys: Vec<serde_json::Value>,
    /// `sha256:<64 lowercase hex>` of the schema's canonical content, computed by Vango.
    pub schema_hash: String,
}

/// A state primitive of the app, by its stable id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedPrimitive {
    pub id: String,
    /// Identifies how the value is encoded; a change makes stored values unreadable.
    pub codec_fingerprint: String,
    /// Whether the value outlives the process (in a session store).
    pub persisted: bool,
}

impl StateSchema {
    pub fn parse(json: &str) -> Result<Self, VangoFileError> {
        let schema: StateSchema = serde_json::from_str(json)
            .map_err(|source| VangoFileError::Json { what: WHAT, source })?;
        let invalid = |field: String, message: String| VangoFileError::Invalid {
            what: WHAT,
            field,
            message,
        };
        let version = &schema.schema_version;
        if !(version.is_string() || version.is_u64()) {
            let message = format!("expected a string or a non-negative integer, found {version}");
            return Err(invalid("schemaVersion".into(), message));
        }
        let hex = schema.schema_hash.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let message = format!(
                "expected \"sha256:<64 lowercase hex>\", found {:?}",
                schema.schema_hash
            );
            return Err(invalid("schemaHash".into(), message));
        }
        let mut ids = HashSet::new();
        for (i, p) in schema.persisted_primitives.iter().enumerate() {
            if p.id.is_empty() || p.codec_fingerprint.is_empty() {
                let message = "expected a non-empty id and codecFingerprint".to_owned();
                return Err(invalid(format!("persistedPrimitives[{i}]"), message));
            }
            if !ids.insert(p.id.as_str()) {
                let message = format!("duplicate id {:?}", p.id);
                return Err(invalid(format!("persistedPrimitives[{i}].id"), message));
            }
        }
        Ok(schema)
    }

    fn persisted(&self) -> impl Iterator<Item = &PersistedPrimitive> {
        self.persisted_primitives.iter().filter(|p| p.persisted)
    }
}

/// What a deploy does to the state of live sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "impact", rename_all = "snake_case")]
pub enum StateImpact {
    /// Every persisted primitive of the current artifact is still readable.
    Warm,
    /// Sessions lose state: these persisted primitives are gone (or no longer persisted), or
    /// their codec changed. A cold deploy needs an explicit acknowledgement.
    Cold {
        removed: Vec<String>,
        changed: Vec<String>,
    },
}

/// Classifies the move from the environment's current schema to the next one. Adding
/// primitives is warm; removing a persisted one or changing its codec is cold; no current
/// schema (a first deploy) is warm.
pub fn classify_state_impact(current: Option<&StateSchema>, next: &StateSchema) -> StateImpact {
    let Some(current) = current else {
        return StateImpact::Warm;
    };
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    for old in current.persisted() {
        match next.persisted().find(|new| new.id == old.id) {
            None => removed.push(old.id.clone()),
            Some(new) if new.codec_fingerprint != old.codec_fingerprint => {
                changed.push(old.id.clone())
            }
            Some(_) => {}
        }
    }
    if removed.is_empty() && changed.is_empty() {
        StateImpact::Warm
    } else {
        StateImpact::Cold { removed, changed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    /// A schema from `id:codec` (persisted) and `id:codec:memory` (not persisted) entries.
    fn schema(spec: &str) -> StateSchema {
        let persisted_primitives = spec
            .split_whitespace()
            .map(|entry| {
                let mut parts = entry.split(':');
                PersistedPrimitive {
                    id: parts.next().unwrap_or_default().to_owned(),
                    codec_fingerprint: parts.next().unwrap_or_default().to_owned(),
                    persisted: parts.next() != Some("memory"),
                }
            })
            .collect();
        StateSchema {
            schema_version: "1.0".into(),
            persisted_primitives,
            session_keys: Vec::new(),
            schema_hash: HASH.into(),
        }
    }

    #[track_caller]
    fn check(current: Option<&str>, next: &str, expected: &str) {
        let current = current.map(schema);
        let impact = classify_state_impact(current.as_ref(), &schema(next));
        let actual = serde_json::to_string(&impact).expect("an impact serializes");
        assert_eq!(actual, expected);
    }

    #[test]
    fn classify() {
        let warm = r#"{"impact":"warm"}"#;
        check(None, "count:v1", warm);
        check(Some("count:v1"), "count:v1", warm);
        check(Some("count:v1"), "count:v1 name:v1", warm);
        check(Some(""), "count:v1", warm);
        check(Some("count:v1 draft:v1:memory"), "count:v1", warm);
        check(Some("draft:v1:memory"), "draft:v2:memory", warm);
        check(Some("count:v1:memory"), "count:v2", warm);
        check(
            Some("count:v1 name:v1"),
            "name:v1",
            r#"{"impact":"cold","removed":["count"],"changed":[]}"#,
        );
        check(
            Some("count:v1"),
            "count:v1:memory",
            r#"{"impact":"cold","removed":["count"],"changed":[]}"#,
        );
        check(
            Some("count:v1"),
            "count:v2",
            r#"{"impact":"cold","removed":[],"changed":["count"]}"#,
        );
        check(
            Some("a:v1 b:v1 c:v1"),
            "b:v2 c:v1 d:v1",
            r#"{"impact":"cold","removed":["a"],"changed":["b"]}"#,
        );
    }

    #[track_caller]
    fn check_parse(json: &str, expected: &str) {
        let actual = match StateSchema::parse(json) {
            Ok(s) => format!(
                "ok: {} primitives, {}",
                s.persisted_primitives.len(),
                s.schema_version
            ),
            Err(err) => err.to_string(),
        };
        assert_eq!(actual, expected);
    }

    #[test]
    fn parse() {
        let doc = |version: &str, primitives: &str, hash: &str| {
            format!(
                r#"{{"schemaVersion": {version}, "persistedPrimitives": [{primitives}],
                    "sessionKeys": ["counter"], "schemaHash": "{hash}"}}"#
            )
        };
        let p = |id: &str, codec: &str| {
            format!(r#"{{"id": "{id}", "codecFingerprint": "{codec}", "persisted": true}}"#)
        };
        check_parse(
            &doc("1", &p("count", "int:v1"), HASH),
            "ok: 1 primitives, 1",
        );
        check_parse(&doc("\"1.0\"", "", HASH), "ok: 0 primitives, \"1.0\"");
        check_parse(
            &doc("1", "", "sha256:ABC"),
            r#"state schema: schemaHash: expected "sha256:<64 lowercase hex>", found "sha256:ABC""#,
        );
        check_parse(
            &doc("-1", "", HASH),
            "state schema: schemaVersion: expected a string or a non-negative integer, found -1",
        );
        check_parse(
            &doc(
                "1",
                &format!("{}, {}", p("count", "v1"), p("count", "v2")),
                HASH,
            ),
            r#"state schema: persistedPrimitives[1].id: duplicate id "count""#,
        );
        check_parse(
            &doc("1", &p("", "v1"), HASH),
            "state schema: persistedPrimitives[0]: expected a non-empty id and codecFingerprint",
        );
        check_parse(
            r#"{"schemaVersion": 1, "persistedPrimitives": []}"#,
            "state schema: invalid JSON: missing field `schemaHash` at line 1 column 47",
        );
    }
}
