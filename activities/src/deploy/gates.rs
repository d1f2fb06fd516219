//! The validation gates of a deploy, as a pure decision over facts gathered by
//! [`super::validate`]: each gate's result with its evidence, the failures no decision can
//! clear (`fatal`), and the blockers that wait for an approval or a fix.

use std::collections::{BTreeMap, BTreeSet};

use rhone_manifest::vango::{StaleAsset, StaleReason};
use rhone_manifest::{ArtifactManifest, StateImpact, StateSchema, classify_state_impact};
use rhone_workflows::activities::{Blocker, GateResult, Validation};
use serde_json::json;
use uuid::Uuid;

pub const GENERATED_ARTIFACTS_CURRENT: &str = "generated_artifacts_current";
pub const VANGO_STATE_IMPACT: &str = "vango_state_impact";
pub const DB_IMPACT: &str = "db_impact";
pub const SECRETS_BOUND: &str = "secrets_bound";
pub const PROVIDERS_BOUND: &str = "providers_bound";

/// The status a runtime service binding must have to count as bound.
pub const READY: &str = "ready";

/// A runtime service binding's status as the gates show it: with the reason its last probe
/// failed (scrubbed of secret values when it was stored), if it did.
pub fn binding_status(status: &str, error: Option<&str>) -> String {
    match error {
        Some(why) if status != READY => format!("{status} ({why})"),
        _ => status.to_owned(),
    }
}

/// Everything the gates look at.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub manifest: &'a ArtifactManifest,
    pub archive: ArchiveFacts,
    /// The environment's current deployment, if it has one.
    pub current: Option<CurrentDeployment>,
    pub environment: String,
    /// Names of the secrets set on the environment.
    pub secrets: BTreeSet<String>,
    /// Runtime service → its binding's status on the environment (`ready` wins).
    pub services: BTreeMap<String, String>,
    /// The database the environment owns (its ready read-write binding), if any.
    pub database: Option<String>,
}

/// What the archive itself holds, read back from the store.
#[derive(Debug, Clone, Default)]
pub struct ArchiveFacts {
    /// Assets listed by Vango's manifest in the archive.
    pub assets: usize,
    pub stale: Vec<StaleAsset>,
    /// Why the archive's `.rhone/artifact.json` is not the recorded manifest, if it is not.
    pub manifest_mismatch: Option<String>,
}

/// The deployment the environment runs now, which a new one is compared with.
#[derive(Debug, Clone)]
pub struct CurrentDeployment {
    pub deployment_id: Uuid,
    pub digest: String,
    /// How it was found: `route_owner` or `preview_ready_deployment`.
    pub via: &'static str,
    pub schema: Option<StateSchema>,
}

pub fn decide(facts: &Facts<'_>) -> Validation {
    let mut v = Validation {
        gates: Vec::new(),
        fatal: Vec::new(),
        blockers: Vec::new(),
        migrate: false,
    };
    generated_artifacts(facts, &mut v);
    state_impact(facts, &mut v);
    db_impact(facts, &mut v);
    secrets(facts, &mut v);
    providers(facts, &mut v);
    v
}

fn gate(v: &mut Validation, gate: &str, passed: bool, evidence: serde_json::Value) {
    v.gates.push(GateResult {
        gate: gate.to_owned(),
        passed,
        evidence,
    });
}

fn block(v: &mut Validation, gate: &str, reason: String, approvable: bool) {
    v.blockers.push(Blocker {
        gate: gate.to_owned(),
        reason,
        approvable,
    });
}

fn generated_artifacts(facts: &Facts<'_>, v: &mut Validation) {
    let dir = &facts.manifest.assets.dir;
    let mut stale = Vec::new();
    for asset in &facts.archive.stale {
        let file = format!("{dir}/{}", asset.source);
        let what = match &asset.reason {
            StaleReason::DigestMismatch { sha256 } => {
                format!("content hashes to {}", sha256.get(..8).unwrap_or(sha256))
            }
            StaleReason::Unreadable { error } => format!("which cannot be read ({error})"),
        };
        v.fatal.push(format!(
            "stale generated artifact {file}: manifest says {}, {what}",
            asset.fingerprinted
        ));
        stale.push(
            json!({ "file": file, "fingerprinted": asset.fingerprinted, "reason": asset.reason }),
        );
    }
    if let Some(mismatch) = &facts.archive.manifest_mismatch {
        v.fatal
            .push(format!("artifact manifest mismatch: {mismatch}"));
    }
    let passed = stale.is_empty() && facts.archive.manifest_mismatch.is_none();
    let evidence = json!({
        "assets": facts.archive.assets,
        "stale": stale,
        "manifest_mismatch": facts.archive.manifest_mismatch,
    });
    gate(v, GENERATED_ARTIFACTS_CURRENT, passed, evidence);
}

fn state_impact(facts: &Facts<'_>, v: &mut Validation) {
    let next = facts.manifest.state_schema.as_ref().map(|s| &s.schema);
    let current = facts.current.as_ref();
    let impact = classify(current.and_then(|c| c.schema.as_ref()), next);
    let compared_with = current.map(|c| {
        json!({
            "deployment_id": c.deployment_id,
            "digest": c.digest,
            "via": c.via,
            "schema_hash": c.schema.as_ref().map(|s| &s.schema_hash),
        })
    });
    let evidence = json!({
        "impact": impact,
        "schema_hash": next.map(|s| &s.schema_hash),
        "compared_with": compared_with,
    });
    let passed = impact == StateImpact::Warm;
    if let (StateImpact::Cold { removed, changed }, Some(current)) = (&impact, current) {
        let mut parts = Vec::new();
        if !removed.is_empty() {
            parts.push(format!("removes persisted {}", removed.join(", ")));
        }
        if !changed.is_empty() {
            parts.push(format!("changes the codec of {}", changed.join(", ")));
        }
        let reason = format!(
            "cold deploy: the state schema {} compared with deployment {} ({}); \
             live sessions lose that state; approve to proceed",
            parts.join(" and "),
            current.deployment_id,
            current.digest,
        );
        block(v, VANGO_STATE_IMPACT, reason, true);
    }
    gate(v, VANGO_STATE_IMPACT, passed, evidence);
}

/// Warm or cold; an artifact without a schema keeps none of the current persisted state.
fn classify(current: Option<&StateSchema>, next: Option<&StateSchema>) -> StateImpact {
    match (current, next) {
        (_, Some(next)) => classify_state_impact(current, next),
        (None, None) => StateImpact::Warm,
        (Some(current), None) => {
            let empty = StateSchema {
                persisted_primitives: Vec::new(),
                ..current.clone()
            };
            classify_state_impact(Some(current), &empty)
        }
    }
}

/// Migrations go to the environment's own database, through a Migration operation the
/// deploy starts before its preview; without a database of its own they cannot.
fn db_impact(facts: &Facts<'_>, v: &mut Validation) {
    let migrations = &facts.manifest.migrations;
    let evidence = json!({ "migrations": migrations, "database": facts.database });
    let passed = migrations.is_empty() || facts.database.is_some();
    if !passed {
        let files: Vec<&str> = migrations.iter().map(|m| m.path.as_str()).collect();
        let reason = format!(
            "migration blocks preview: {} migration file(s) ({}) and environment {} has no \
             database of its own to apply them to; bind one (`rhone databases bind`), then retry",
            migrations.len(),
            files.join(", "),
            facts.environment
        );
        block(v, DB_IMPACT, reason, false);
    }
    v.migrate = passed && !migrations.is_empty();
    gate(v, DB_IMPACT, passed, evidence);
}

fn secrets(facts: &Facts<'_>, v: &mut Validation) {
    let required = &facts.manifest.app.required_secrets;
    let missing: Vec<&String> = required
        .iter()
        .filter(|name| !facts.secrets.contains(*name))
        .collect();
    for name in &missing {
        let reason = format!(
            "missing secret {name} on environment {}: set it, then retry",
            facts.environment
        );
        block(v, SECRETS_BOUND, reason, false);
    }
    let evidence = json!({ "required": required, "missing": missing });
    gate(v, SECRETS_BOUND, missing.is_empty(), evidence);
}

fn providers(facts: &Facts<'_>, v: &mut Validation) {
    let required: Vec<&str> = facts
        .manifest
        .app
        .required_services
        .iter()
        .map(|s| s.as_str())
        .collect();
    let mut missing = Vec::new();
    for service in &required {
        let status = facts.services.get(*service).map(String::as_str);
        if status == Some(READY) {
            continue;
        }
        missing.push(*service);
        let why = match status {
            Some(status) => format!("its binding is {status}, not {READY}"),
            None => "it has no binding".to_owned(),
        };
        let reason = format!(
            "runtime service {service} is not bound on environment {}: {why}; bind it, then retry",
            facts.environment
        );
        block(v, PROVIDERS_BOUND, reason, false);
    }
    let evidence = json!({ "required": required, "missing": missing, "bound": facts.services });
    gate(v, PROVIDERS_BOUND, missing.is_empty(), evidence);
}

#[cfg(test)]
#[path = "gates_tests.rs"]
mod tests;
