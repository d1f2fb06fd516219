//! The policy check of a promotion or rollback: every gate with its evidence, and one
//! non-retryable refusal naming each gate that failed and the facts it saw.
//!
//! - `preview_artifact_matches` (promotion): the source is a deployment of the same app whose
//!   Deploy operation reached `preview_ready`, and its artifact is the target's, exactly.
//! - `rollback_target_was_live`, `db_rollback_safe`, `state_schema_compatible` (rollback):
//!   the target owned the route before, and going back from the current owner's artifact
//!   neither leaves a migration the target does not know applied nor breaks live sessions.
//! - `route_epoch_current`: the RouteOwner is still at the epoch the operation started from.
//! - `runtime_services_ready`: every required runtime service is bound and ready, and more
//!   than one instance has a session store.

use std::collections::BTreeSet;

use rhone_core::OperationKind;
use rhone_manifest::{
    ArtifactManifest, StateImpact, StateSchema, app::Service, classify_state_impact,
};
use rhone_schema::entity::{
    deployment, environment, operation_stage, route_change, route_owner, runtime_service_binding,
};
use rhone_workflows::activities::{GateResult, Policy, PolicyInput, RouteTarget};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use temporalio_sdk::activities::ActivityError;

use super::{PromotionActivities, list};
use crate::allocate::millis;
use crate::allocate::{self, db_err, refuse};

const PREVIEW_READY: &str = "preview_ready";
const READY: &str = "ready";

fn passed(gate: &str, evidence: Value) -> GateResult {
    GateResult {
        gate: gate.to_owned(),
        passed: true,
        evidence,
    }
}

/// A failed gate; `reason` is also kept in the evidence.
fn failed(gate: &str, reason: String, mut evidence: Value) -> GateResult {
    if let Value::Object(map) = &mut evidence {
        map.insert("reason".into(), reason.into());
    } else {
        evidence = json!({ "reason": reason });
    }
    GateResult {
        gate: gate.to_owned(),
        passed: false,
        evidence,
    }
}

impl PromotionActivities {
    /// The `check_promotion_policy` activity.
    pub async fn policy(&self, input: &PolicyInput) -> Result<Policy, ActivityError> {
        if !matches!(
            input.kind,
            OperationKind::Promotion | OperationKind::Rollback
        ) {
            return Err(refuse(format!(
                "a {} operation is not a promotion or a rollback",
                input.kind
            )));
        }
        if input.instances == 0 {
            return Err(refuse("a promotion runs at least one instance"));
        }
        let env = self.environment(input.environment_id).await?;
        let target = self.deployment(input.deployment_id).await?;
        if target.environment_id != env.id {
            return Err(refuse(format!(
                "deployment {} belongs to environment {}, not to {} ({})",
                target.id, target.environment_id, env.name, env.id
            )));
        }
        let digest = target
            .artifact_digest
            .clone()
            .ok_or_else(|| refuse(format!("deployment {} has no artifact", target.id)))?;
        let manifest = allocate::manifest(&self.db, &digest).await?;
        let route_key = self.route_key(&env).await?;
        let owner = route_owner::Entity::find_by_id(route_key.clone())
            .one(&self.db)
            .await
            .map_err(db_err)?;

        let mut gates = Vec::new();
        if input.kind == OperationKind::Promotion {
            gates.push(self.preview_gate(input, &target, &digest).await?);
        } else {
            gates.extend(
                self.rollback_gates(&route_key, &target, &manifest, owner.as_ref())
                    .await?,
            );
        }
        gates.push(epoch_gate(&route_key, input.expected_epoch, owner.as_ref()));
        gates.push(self.services_gate(&env, &manifest, input.instances).await?);
        let database = rhone_schema::providers::owned_database(&self.db, env.id)
            .await
            .map_err(crate::error::activity_error)?
            .filter(|b| b.status == rhone_schema::entity::provider_binding::STATUS_READY);
        let migrate = input.kind == OperationKind::Promotion && !manifest.migrations.is_empty();
        if migrate {
            gates.push(database_gate(&env, &manifest, database.as_ref()));
        }

        let failures: Vec<String> = gates
            .iter()
            .filter(|g| !g.passed)
            .map(|g| {
                let reason = g.evidence["reason"].as_str().unwrap_or("failed");
                format!("{} failed: {reason}", g.gate)
            })
            .collect();
        if !failures.is_empty() {
            return Err(refuse(failures.join("; ")));
        }
        Ok(Policy {
            route_key,
            digest,
            previous: owner.map(|o| RouteTarget {
                deployment_id: o.deployment_id,
                artifact_digest: o.artifact_digest,
                epoch: o.epoch,
            }),
            approval_required: env.requires_approval,
            gates,
            health_window_ms: millis(self.config.health_window),
            drain_grace_ms: millis(self.config.drain_grace),
            propagation_deadline_ms: millis(self.config.propagation_deadline),
            scale_to_zero: env.scale_to_zero,
            migrate,
        })
    }

    /// `preview_artifact_matches`: nothing is rebuilt, the preview's artifact is promoted.
    async fn preview_gate(
        &self,
        input: &PolicyInput,
        target: &deployment::Model,
        digest: &str,
    ) -> Result<GateResult, ActivityError> {
        const GATE: &str = "preview_artifact_matches";
        let Some(source_id) = input.source_deployment_id else {
            let reason =
                "a promotion names the preview deployment whose artifact it runs; none was given";
            return Ok(failed(GATE, reason.into(), json!({})));
        };
        let Some(source) = deployment::Entity::find_by_id(source_id)
            .one(&self.db)
            .await
            .map_err(db_err)?
        else {
            let reason = format!("preview deployment {source_id} not found");
            return Ok(failed(GATE, reason, json!({})));
        };
        let reached = match source.operation_id {
            Some(op) => operation_stage::Entity::find()
                .filter(operation_stage::Column::OperationId.eq(op))
                .filter(operation_stage::Column::Stage.eq(PREVIEW_READY))
                .order_by_asc(operation_stage::Column::Seq)
                .one(&self.db)
                .await
                .map_err(db_err)?,
            None => None,
        };
        let evidence = json!({
            "source_deployment_id": source.id,
            "source_digest": source.artifact_digest,
            "digest": digest,
            "preview_ready_at": reached.as_ref().map(|r| r.entered_at),
            "promoted_from": target.promoted_from,
        });
        let mut problems = Vec::new();
        if source.app_id != target.app_id {
            problems.push(format!(
                "preview deployment {} is of app {}, deployment {} of app {}",
                source.id, source.app_id, target.id, target.app_id
            ));
        }
        if reached.is_none() {
            problems.push(format!(
                "preview deployment {} never reached {PREVIEW_READY} (its deploy is at {})",
                source.id, source.stage
            ));
        }
        if source.artifact_digest.as_deref() != Some(digest) {
            problems.push(format!(
                "deployment {} records artifact {digest}, the preview deployment {} ran {}; a promotion runs the exact preview artifact",
                target.id,
                source.id,
                source.artifact_digest.as_deref().unwrap_or("no artifact")
            ));
        }
        if let Some(from) = target.promoted_from
            && from != source.id
        {
            problems.push(format!(
                "deployment {} was promoted from {from}, not from {}",
                target.id, source.id
            ));
        }
        Ok(if problems.is_empty() {
            passed(GATE, evidence)
        } else {
            failed(GATE, problems.join(", "), evidence)
        })
    }

    /// The rollback gates: the target owned the route before, and moving back from the
    /// current owner's artifact to the target's is safe for the database and for sessions.
    async fn rollback_gates(
        &self,
        route_key: &str,
        target: &deployment::Model,
        target_manifest: &ArtifactManifest,
        owner: Option<&route_owner::Model>,
    ) -> Result<Vec<GateResult>, ActivityError> {
        let mut gates = Vec::new();
        let owned = route_change::Entity::find()
            .filter(route_change::Column::RouteKey.eq(route_key))
            .filter(route_change::Column::DeploymentId.eq(target.id))
            .order_by_desc(route_change::Column::Seq)
            .one(&self.db)
            .await
            .map_err(db_err)?;
        gates.push(match owned {
            Some(c) => passed(
                "rollback_target_was_live",
                json!({ "epoch": c.epoch, "seq": c.seq, "at": c.created_at }),
            ),
            None => failed(
                "rollback_target_was_live",
                format!("deployment {} never owned route {route_key}", target.id),
                json!({}),
            ),
        });

        // Nothing changes for the database or sessions when the target is live already.
        let current = match owner {
            Some(o) if o.deployment_id != target.id => Some(o),
            _ => None,
        };
        let Some(current) = current else {
            let evidence = json!({ "current_deployment_id": owner.map(|o| o.deployment_id) });
            gates.push(passed("db_rollback_safe", evidence.clone()));
            gates.push(passed("state_schema_compatible", evidence));
            return Ok(gates);
        };
        let current_manifest = allocate::manifest(&self.db, &current.artifact_digest).await?;
        let applied = applied_to(&self.db, current.environment_id).await?;
        gates.push(db_gate(
            current,
            target,
            &current_manifest,
            target_manifest,
            &applied,
        ));
        gates.push(state_gate(
            current,
            target,
            &current_manifest,
            target_manifest,
        ));
        Ok(gates)
    }

    /// `runtime_services_ready`: each service the artifact requires has a ready binding on
    /// the environment, and more than one instance has a ready session store.
    async fn services_gate(
        &self,
        env: &environment::Model,
        manifest: &ArtifactManifest,
        instances: u32,
    ) -> Result<GateResult, ActivityError> {
        const GATE: &str = "runtime_services_ready";
        let bindings = runtime_service_binding::Entity::find()
            .filter(runtime_service_binding::Column::EnvironmentId.eq(env.id))
            .all(&self.db)
            .await
            .map_err(db_err)?;
        let status_of = |service: Service| {
            bindings
                .iter()
                .find(|b| b.service == service.as_str())
                .map(|b| crate::deploy::gates::binding_status(&b.status, b.error.as_deref()))
        };
        let required: BTreeSet<Service> = manifest.app.required_services.iter().copied().collect();
        let not_ready: Vec<String> = required
            .iter()
            .filter_map(|s| match status_of(*s).as_deref() {
                Some(READY) => None,
                Some(status) => Some(format!("{s} (status {status})")),
                None => Some(format!("{s} (not bound)")),
            })
            .collect();
        let evidence = json!({
            "required": required.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "bindings": bindings.iter().map(|b| (b.service.clone(), b.status.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "instances": instances,
        });
        let mut problems = Vec::new();
        if !not_ready.is_empty() {
            problems.push(format!(
                "runtime service(s) not ready on environment {}: {}",
                env.name,
                not_ready.join(", ")
            ));
        }
        let store = status_of(Service::SessionStore);
        if instances > 1 && store.as_deref() != Some(READY) {
            problems.push(format!(
                "{instances} instances need a ready session_store binding on environment {} so sessions resume on any allocation ({})",
                env.name,
                store.map_or("not bound".to_owned(), |s| format!("status {s}"))
            ));
        }
        Ok(if problems.is_empty() {
            passed(GATE, evidence)
        } else {
            failed(GATE, problems.join("; "), evidence)
        })
    }
}

/// `route_epoch_current`.
fn epoch_gate(route_key: &str, expected: i64, owner: Option<&route_owner::Model>) -> GateResult {
    const GATE: &str = "route_epoch_current";
    let epoch = owner.map_or(0, |o| o.epoch);
    let evidence = json!({
        "route_key": route_key,
        "expected_epoch": expected,
        "epoch": epoch,
        "owner_deployment_id": owner.map(|o| o.deployment_id),
    });
    if epoch == expected {
        passed(GATE, evidence)
    } else {
        let reason = format!(
            "route epoch conflict on {route_key}: the operation started from epoch {expected}, the owner is at epoch {epoch}"
        );
        failed(GATE, reason, evidence)
    }
}

/// `database_bound`: an artifact with migrations goes to an environment that owns a
/// database for them to be applied to.
fn database_gate(
    env: &rhone_schema::entity::environment::Model,
    manifest: &ArtifactManifest,
    database: Option<&rhone_schema::entity::provider_binding::Model>,
) -> GateResult {
    const GATE: &str = "database_bound";
    let files: Vec<&str> = manifest
        .migrations
        .iter()
        .map(|m| m.path.as_str())
        .collect();
    let evidence = json!({
        "migrations": files,
        "database": database.map(|b| &b.resource),
        "provider": database.map(|b| &b.provider),
    });
    match database {
        Some(_) => passed(GATE, evidence),
        None => failed(
            GATE,
            format!(
                "the artifact carries {} migration(s) and environment {:?} has no database of its own to apply them to; bind one (`rhone databases bind`)",
                files.len(),
                env.name
            ),
            evidence,
        ),
    }
}

/// The migrations applied to the database environment `environment_id` owns, path →
/// class (`expand` or `contract`), as the Migrations that applied them recorded.
async fn applied_to(
    db: &sea_orm::DatabaseConnection,
    environment_id: uuid::Uuid,
) -> Result<std::collections::BTreeMap<String, String>, ActivityError> {
    use rhone_schema::{entity::applied_migration, providers};
    let Some(binding) = providers::owned_database(db, environment_id)
        .await
        .map_err(crate::error::activity_error)?
    else {
        return Ok(Default::default());
    };
    let Ok(provider) = providers::named(db, &binding.provider).await else {
        return Ok(Default::default());
    };
    Ok(applied_migration::Entity::find()
        .filter(applied_migration::Column::ProviderId.eq(provider.id))
        .filter(applied_migration::Column::Database.eq(binding.resource))
        .all(db)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|m| (m.path, m.class))
        .collect())
}

/// `db_rollback_safe`: no contract migration that the current artifact carries and the
/// target does not know has been applied to the environment's database. The target still
/// reads a schema that was only expanded (expand migrations keep what it needs), but not
/// one whose columns or tables a contract migration took away.
fn db_gate(
    current: &route_owner::Model,
    target: &deployment::Model,
    current_manifest: &ArtifactManifest,
    target_manifest: &ArtifactManifest,
    applied: &std::collections::BTreeMap<String, String>,
) -> GateResult {
    const GATE: &str = "db_rollback_safe";
    let known: BTreeSet<&str> = target_manifest
        .migrations
        .iter()
        .map(|m| m.path.as_str())
        .collect();
    let unknown: Vec<&str> = current_manifest
        .migrations
        .iter()
        .map(|m| m.path.as_str())
        .filter(|p| !known.contains(p))
        .collect();
    let contract: Vec<&str> = unknown
        .iter()
        .copied()
        .filter(|p| applied.get(*p).is_some_and(|class| class != "expand"))
        .collect();
    let evidence = json!({
        "current_deployment_id": current.deployment_id,
        "current_migrations": current_manifest.migrations.iter().map(|m| &m.path).collect::<Vec<_>>(),
        "target_migrations": known,
        "unknown": unknown,
        "applied": unknown.iter().map(|p| (*p, applied.get(*p))).collect::<std::collections::BTreeMap<_, _>>(),
        "contract_applied": contract,
    });
    if contract.is_empty() {
        passed(GATE, evidence)
    } else {
        let reason = format!(
            "DB rollback unsafe: contract migration(s) {} applied by the current deployment {} are unknown to deployment {}: the schema it reads is gone; roll forward instead",
            list(&contract),
            current.deployment_id,
            target.id
        );
        failed(GATE, reason, evidence)
    }
}

/// `state_schema_compatible`: the sessions the current artifact keeps can be read by the
/// target (a warm move from the current state schema to the target's).
fn state_gate(
    current: &route_owner::Model,
    target: &deployment::Model,
    current_manifest: &ArtifactManifest,
    target_manifest: &ArtifactManifest,
) -> GateResult {
    const GATE: &str = "state_schema_compatible";
    let from = current_manifest.state_schema.as_ref().map(|s| &s.schema);
    let to = target_manifest.state_schema.as_ref().map(|s| &s.schema);
    let impact = match (from, to) {
        (_, Some(to)) => classify_state_impact(from, to),
        (None, None) => StateImpact::Warm,
        // A target without a schema keeps no state: every persisted primitive is lost.
        (Some(from), None) => classify_state_impact(
            Some(from),
            &StateSchema {
                schema_version: from.schema_version.clone(),
                persisted_primitives: Vec::new(),
                session_keys: Vec::new(),
                schema_hash: String::new(),
            },
        ),
    };
    let evidence = json!({
        "current_deployment_id": current.deployment_id,
        "current_schema_hash": from.map(|s| &s.schema_hash),
        "target_schema_hash": to.map(|s| &s.schema_hash),
        "impact": impact,
    });
    match &impact {
        StateImpact::Warm => passed(GATE, evidence),
        StateImpact::Cold { removed, changed } => {
            let mut facts = Vec::new();
            if !removed.is_empty() {
                facts.push(format!("persisted state {} unknown to it", list(removed)));
            }
            if !changed.is_empty() {
                facts.push(format!("codec of {} changed", list(changed)));
            }
            let reason = format!(
                "Vango state schema of deployment {} is incompatible with the live sessions of {}: {}",
                target.id,
                current.deployment_id,
                facts.join(", ")
            );
            failed(GATE, reason, evidence)
        }
    }
}
