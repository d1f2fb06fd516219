//! What the edge must know of a route key before it holds, wakes, refuses or records a
//! request: the environment's scale-to-zero setting and wake budget, the request classes the
//! owner's artifact declares in `rhone.toml` (webhooks, idempotent routes, assets), and which
//! runtime services are bound. Read from the control DB on the cold path and for idempotent
//! writes only, and kept for [`POLICY_TTL`]: a request while hot never needs it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use rhone_edge_classify::RouteClasses;
use rhone_manifest::{ArtifactManifest, app::Service};
use rhone_schema::entity::{artifact, environment, route_owner, runtime_service_binding};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    assets::{AssetIndex, Assets},
    error::EdgeError,
    route::Owner,
};

/// How long a policy read is used before it is read again: settings changed through the API
/// reach the edge within this.
const POLICY_TTL: Duration = Duration::from_secs(2);
/// A binding's status when the service can be used.
const READY: &str = "ready";

/// The policy of one route key at one owner.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub workspace_id: Uuid,
    pub scale_to_zero: bool,
    /// How long a request may be held for a wake: the artifact's `[wake] budget_ms`, capped
    /// by the environment's `wake_budget_ms`.
    pub budget: Duration,
    /// The artifact's webhooks and idempotent routes, and whether an `idempotency` runtime
    /// service is bound and ready: what the request classes are decided from.
    pub classes: RouteClasses,
    /// A durable `session_store` is bound and ready: a live session may resume on another
    /// allocation.
    pub session_store_bound: bool,
    /// The owner artifact's fingerprinted assets, by request path.
    pub assets: AssetIndex,
}

impl Policy {
    /// The wake budget, given the artifact's and the environment's (both in ms).
    pub(crate) fn budget_of(artifact_ms: u32, environment_ms: i64) -> Duration {
        let env = u64::try_from(environment_ms).unwrap_or(0);
        Duration::from_millis(u64::from(artifact_ms).min(env))
    }
}

/// Why the policy could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the policy of {route_key} failed")]
    Db {
        route_key: String,
        #[source]
        source: sea_orm::DbErr,
    },
    #[error("{route_key} has no RouteOwner row")]
    NoOwner { route_key: String },
    #[error("the artifact {digest} of {route_key} is not in the control DB")]
    NoArtifact { route_key: String, digest: String },
    #[error("the artifact manifest of {digest} does not parse")]
    Manifest {
        digest: String,
        #[source]
        source: rhone_manifest::ArtifactManifestError,
    },
}

/// Policies by route key, each read at most every [`POLICY_TTL`], one read at a time per
/// key (requests that need it meanwhile wait for that read), within [`READ_TIMEOUT`]; a
/// failed read falls back on the last policy read for the same owner.
pub(crate) struct Policies {
    db: DatabaseConnection,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    /// The owner the policy was read for: a new epoch, deployment or digest reads again.
    deployment_id: Uuid,
    artifact_digest: String,
    read_at: Instant,
    policy: Option<Arc<Policy>>,
    /// A read in flight for this key, which later requests wait on.
    reading: Option<watch::Receiver<Option<Result<Arc<Policy>, String>>>>,
}

/// How long one policy read may take before the request goes on without it.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

impl Policies {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            cache: Mutex::default(),
        }
    }

    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The policy of `owner`'s route key.
    pub(crate) async fn get(&self, owner: &Owner) -> Result<Arc<Policy>, EdgeError> {
        let same = |c: &Cached| {
            c.deployment_id == owner.deployment_id && c.artifact_digest == owner.artifact_digest
        };
        let (claim, waiting) = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = cache.get(&owner.route_key).filter(|c| same(c));
            if let Some(c) = entry {
                if let Some(p) = &c.policy
                    && c.read_at.elapsed() < POLICY_TTL
                {
                    return Ok(p.clone());
                }
            }
            let stale = entry.and_then(|c| c.policy.clone());
            match entry.and_then(|c| c.reading.clone()) {
                // Someone reads it now: the last policy while it lasts, else wait for it.
                Some(reading) => match stale {
                    Some(p) => return Ok(p),
                    None => (None, Some(reading)),
                },
                None => {
                    if cache.len() > 10_000 {
                        cache.retain(|_, c| c.read_at.elapsed() < POLICY_TTL);
                    }
                    let (tx, rx) = watch::channel(None);
                    let policy = cache
                        .get(&owner.route_key)
                        .filter(|c| same(c))
                        .and_then(|c| c.policy.clone());
                    cache.insert(
                        owner.route_key.clone(),
                        Cached {
                            deployment_id: owner.deployment_id,
                            artifact_digest: owner.artifact_digest.clone(),
                            read_at: Instant::now(),
                            policy,
                            reading: Some(rx),
                        },
                    );
                    (Some((tx, stale)), None)
                }
            }
        };
        if let Some(mut reading) = waiting {
            let got = tokio::time::timeout(READ_TIMEOUT, reading.wait_for(Option::is_some)).await;
            return match got {
                Ok(Ok(v)) => match v.as_ref() {
                    Some(Ok(p)) => Ok(p.clone()),
                    Some(Err(e)) => Err(EdgeError::Policy(e.clone().into())),
                    None => Err(EdgeError::Policy("the policy read ended".into())),
                },
                _ => Err(EdgeError::Policy(
                    "the policy read did not finish in time".into(),
                )),
            };
        }
        let Some((tx, stale)) = claim else {
            return Err(EdgeError::Policy("no policy".into()));
        };
        let read = match tokio::time::timeout(READ_TIMEOUT, read(&self.db, owner)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "reading the policy of {} took longer than {READ_TIMEOUT:?}",
                owner.route_key
            )),
        };
        let result = match read {
            Ok(p) => Ok(Arc::new(p)),
            Err(e) => match stale {
                Some(p) => {
                    tracing::warn!(route_key = %owner.route_key, error = %e, "the route policy could not be read again; the last one serves");
                    Ok(p)
                }
                None => Err(e),
            },
        };
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = cache.get_mut(&owner.route_key).filter(|c| same(c)) {
                c.reading = None;
                if let Ok(p) = &result {
                    c.policy = Some(p.clone());
                    c.read_at = Instant::now();
                }
            }
        }
        let _ = tx.send(Some(result.clone()));
        result.map_err(|e| EdgeError::Policy(e.into()))
    }
}

async fn read(db: &DatabaseConnection, owner: &Owner) -> Result<Policy, PolicyError> {
    let route_key = &owner.route_key;
    let db_err = |source| PolicyError::Db {
        route_key: route_key.clone(),
        source,
    };
    let row = route_owner::Entity::find_by_id(route_key.clone())
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| PolicyError::NoOwner {
            route_key: route_key.clone(),
        })?;
    let env = environment::Entity::find_by_id(row.environment_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| PolicyError::NoOwner {
            route_key: route_key.clone(),
        })?;
    // The table's owner names the artifact; the row may have moved on since (the next
    // change will tell the table), so read the artifact the table routes to.
    let art = artifact::Entity::find_by_id(owner.artifact_digest.clone())
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| PolicyError::NoArtifact {
            route_key: route_key.clone(),
            digest: owner.artifact_digest.clone(),
        })?;
    let manifest = ArtifactManifest::parse(&art.manifest.to_string()).map_err(|source| {
        PolicyError::Manifest {
            digest: owner.artifact_digest.clone(),
            source,
        }
    })?;
    let bindings = runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(env.id))
        .filter(runtime_service_binding::Column::Status.eq(READY))
        .all(db)
        .await
        .map_err(db_err)?;
    let bound = |s: Service| bindings.iter().any(|b| b.service == s.as_str());
    Ok(Policy {
        workspace_id: env.workspace_id,
        scale_to_zero: env.scale_to_zero,
        budget: Policy::budget_of(manifest.app.wake_budget_ms, env.wake_budget_ms),
        classes: RouteClasses {
            webhooks: manifest.app.routes.webhooks,
            idempotent: manifest.app.routes.idempotent,
            idempotency_bound: bound(Service::Idempotency),
        },
        session_store_bound: bound(Service::SessionStore),
        assets: Assets::index(&manifest.assets),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_apps_capped_by_the_environments() {
        assert_eq!(Policy::budget_of(10_000, 10_000), Duration::from_secs(10));
        assert_eq!(Policy::budget_of(30_000, 10_000), Duration::from_secs(10));
        assert_eq!(Policy::budget_of(2_000, 10_000), Duration::from_secs(2));
        assert_eq!(Policy::budget_of(2_000, -1), Duration::ZERO);
    }
}
