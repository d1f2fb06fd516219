//! Validating: gathers the facts the gates need — the artifact read back from the store and
//! re-checked, the environment's current deployment and its state schema, the secrets and
//! runtime services bound to the environment — and lets [`super::gates::decide`] judge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rhone_manifest::ArtifactManifest;
use rhone_schema::SchemaError;
use rhone_schema::entity::{
    artifact, deployment, environment, operation_stage, route_owner, runtime_service_binding,
    secret,
};
use rhone_store::{Digest, archive};
use rhone_workflows::activities::{ValidateInput, Validation};
use sea_orm::sea_query::Query;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::DeployConfig;
use super::error::DeployError;
use super::gates::{self, ArchiveFacts, CurrentDeployment, Facts};
use super::package::{ARTIFACT_MANIFEST_PATH, assets, read_optional};

/// The stage a deployment has reached when its preview served.
const PREVIEW_READY: &str = "preview_ready";

#[tracing::instrument(skip_all, fields(
    operation_id = %input.operation_id,
    deployment_id = %input.deployment_id,
    digest = %input.digest,
))]
pub async fn validate_deployment(
    db: &DatabaseConnection,
    config: &DeployConfig,
    input: &ValidateInput,
) -> Result<Validation, DeployError> {
    let digest = Digest::parse(&input.digest)
        .map_err(|e| DeployError::Invalid(format!("artifact digest: {e}")))?;
    let manifest = load_manifest(db, &digest).await?;
    let env = environment::Entity::find_by_id(input.environment_id)
        .one(db)
        .await
        .map_err(SchemaError::from)?
        .ok_or_else(|| DeployError::NotFound {
            what: "environment",
            id: input.environment_id.to_string(),
        })?;
    let archive = check_archive(config, &digest, &manifest).await?;
    let current = current_deployment(db, input.environment_id, input.deployment_id).await?;
    let facts = Facts {
        manifest: &manifest,
        archive,
        current,
        environment: env.name,
        secrets: secret_names(db, input.environment_id).await?,
        services: services(db, input.environment_id).await?,
        database: rhone_schema::providers::owned_database(db, input.environment_id)
            .await?
            .filter(|b| b.status == rhone_schema::entity::provider_binding::STATUS_READY)
            .map(|b| b.resource),
    };
    let validation = gates::decide(&facts);
    tracing::info!(
        fatal = validation.fatal.len(),
        blockers = validation.blockers.len(),
        "validated"
    );
    Ok(validation)
}

/// The recorded artifact manifest of `digest`.
async fn load_manifest(
    db: &DatabaseConnection,
    digest: &Digest,
) -> Result<ArtifactManifest, DeployError> {
    let row = artifact::Entity::find_by_id(digest.to_string())
        .one(db)
        .await
        .map_err(SchemaError::from)?
        .ok_or_else(|| DeployError::NotFound {
            what: "artifact",
            id: digest.to_string(),
        })?;
    ArtifactManifest::parse(&row.manifest.to_string())
        .map_err(|e| DeployError::Invalid(format!("artifact {digest}: {e}")))
}

/// Reads the artifact back from the store (verified), unpacks it into scratch space and
/// re-checks its assets and its embedded manifest.
async fn check_archive(
    config: &DeployConfig,
    digest: &Digest,
    manifest: &ArtifactManifest,
) -> Result<ArchiveFacts, DeployError> {
    let bytes = config.store.get(digest).await?;
    let work_dir = config.work_dir.clone();
    let (digest, manifest) = (digest.clone(), manifest.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| DeployError::io(format!("creating {}", work_dir.display()), e))?;
        let scratch = tempfile::Builder::new()
            .prefix(".validate-")
            .tempdir_in(&work_dir)
            .map_err(|e| {
                DeployError::io(format!("creating a directory in {}", work_dir.display()), e)
            })?;
        let root: PathBuf = scratch.path().join("artifact");
        archive::unpack(&bytes, &root, &digest)?;
        archive_facts(&root, &manifest)
    })
    .await
    .map_err(|e| DeployError::io("checking the artifact", std::io::Error::other(e)))?
}

fn archive_facts(root: &Path, manifest: &ArtifactManifest) -> Result<ArchiveFacts, DeployError> {
    let (current, stale) = assets(root, &manifest.assets.dir, &manifest.assets.manifest)?;
    let manifest_mismatch = match read_optional(root, ARTIFACT_MANIFEST_PATH)? {
        None => Some(format!("the artifact has no {ARTIFACT_MANIFEST_PATH}")),
        Some(bytes) => match ArtifactManifest::parse(&String::from_utf8_lossy(&bytes)) {
            Ok(embedded) if embedded == *manifest => None,
            Ok(_) => Some(format!(
                "the artifact's {ARTIFACT_MANIFEST_PATH} differs from the recorded manifest"
            )),
            Err(e) => Some(format!("{ARTIFACT_MANIFEST_PATH}: {e}")),
        },
    };
    Ok(ArchiveFacts {
        assets: current.len() + stale.len(),
        stale,
        manifest_mismatch,
    })
}

/// The deployment the environment runs now: the one a route owner of the environment
/// points at, else the latest other deployment of the environment that reached
/// `preview_ready`; with its state schema.
async fn current_deployment(
    db: &DatabaseConnection,
    environment_id: Uuid,
    deployment_id: Uuid,
) -> Result<Option<CurrentDeployment>, DeployError> {
    let owner = route_owner::Entity::find()
        .filter(route_owner::Column::EnvironmentId.eq(environment_id))
        .filter(route_owner::Column::DeploymentId.ne(deployment_id))
        .order_by_desc(route_owner::Column::UpdatedAt)
        .one(db)
        .await
        .map_err(SchemaError::from)?;
    let (id, digest, via) = match owner {
        Some(o) => (o.deployment_id, o.artifact_digest, "route_owner"),
        None => match latest_preview_ready(db, environment_id, deployment_id).await? {
            Some(d) => (
                d.id,
                d.artifact_digest.unwrap_or_default(),
                "preview_ready_deployment",
            ),
            None => return Ok(None),
        },
    };
    let schema = match Digest::parse(&digest) {
        Ok(d) => load_manifest(db, &d).await?.state_schema.map(|s| s.schema),
        Err(_) => None,
    };
    Ok(Some(CurrentDeployment {
        deployment_id: id,
        digest,
        via,
        schema,
    }))
}

/// The newest other deployment of the environment with an artifact whose deployment (or
/// its Deploy operation) reached `preview_ready`.
async fn latest_preview_ready(
    db: &DatabaseConnection,
    environment_id: Uuid,
    deployment_id: Uuid,
) -> Result<Option<deployment::Model>, DeployError> {
    let reached = Query::select()
        .column(operation_stage::Column::OperationId)
        .from(operation_stage::Entity)
        .and_where(operation_stage::Column::Stage.eq(PREVIEW_READY))
        .to_owned();
    Ok(deployment::Entity::find()
        .filter(deployment::Column::EnvironmentId.eq(environment_id))
        .filter(deployment::Column::Id.ne(deployment_id))
        .filter(deployment::Column::ArtifactDigest.is_not_null())
        .filter(
            Condition::any()
                .add(deployment::Column::Stage.eq(PREVIEW_READY))
                .add(deployment::Column::OperationId.in_subquery(reached)),
        )
        .order_by_desc(deployment::Column::CreatedAt)
        .one(db)
        .await
        .map_err(SchemaError::from)?)
}

/// Names of the environment's secrets (only the names are read).
async fn secret_names(
    db: &DatabaseConnection,
    environment_id: Uuid,
) -> Result<BTreeSet<String>, DeployError> {
    let names: Vec<String> = secret::Entity::find()
        .select_only()
        .column(secret::Column::Name)
        .filter(secret::Column::EnvironmentId.eq(environment_id))
        .into_tuple()
        .all(db)
        .await
        .map_err(SchemaError::from)?;
    Ok(names.into_iter().collect())
}

/// Each runtime service bound to the environment with its status (`ready` if any binding of
/// it is ready).
async fn services(
    db: &DatabaseConnection,
    environment_id: Uuid,
) -> Result<BTreeMap<String, String>, DeployError> {
    let rows = runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(environment_id))
        .all(db)
        .await
        .map_err(SchemaError::from)?;
    let mut services = BTreeMap::new();
    for row in rows {
        let shown = gates::binding_status(&row.status, row.error.as_deref());
        let status = services.entry(row.service).or_insert(shown);
        if row.status == gates::READY {
            *status = row.status;
        }
    }
    Ok(services)
}
