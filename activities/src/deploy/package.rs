//! Packaging a build's output: the artifact manifest (assets with digests, state schema,
//! migrations, source facts) written into the output as `.rhone/artifact.json` before
//! packing, so the digest covers it; then the archive stored, read back and verified, and
//! the `artifacts` row and the deployment's digest recorded.

use std::path::{Path, PathBuf};

use chrono::Utc;
use rhone_manifest::app::AppManifest;
use rhone_manifest::artifact::{
    AppSubset, ArtifactAssets, ArtifactStateSchema, MigrationFile, SourceFacts,
};
use rhone_manifest::vango::{AssetEntry, StaleAsset, sha256_hex};
use rhone_manifest::{ARTIFACT_FORMAT_VERSION, ArtifactManifest, StateSchema, VangoAssetManifest};
use rhone_schema::entity::{artifact, deployment};
use rhone_schema::{SchemaError, begin_write};
use rhone_store::{ArtifactStore, Digest, StoreError, archive};
use rhone_workflows::activities::SourceSpec;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::DeployConfig;
use super::error::DeployError;
use super::source::redact;

/// Where the artifact manifest sits inside every artifact.
pub const ARTIFACT_MANIFEST_PATH: &str = ".rhone/artifact.json";

/// The artifact manifest of a build, and the assets it found stale (which do not fail the
/// build: validation judges them).
pub struct Inspected {
    pub manifest: ArtifactManifest,
    pub stale: Vec<StaleAsset>,
}

/// A stored artifact.
pub struct Stored {
    pub digest: Digest,
    pub size: u64,
}

pub fn source_facts(source: &SourceSpec, commit_sha: &str, app: &AppManifest) -> SourceFacts {
    SourceFacts {
        repository: redact(&source.repository),
        git_ref: source.git_ref.clone(),
        commit_sha: commit_sha.to_owned(),
        build_command: app.build.command.clone(),
    }
}

/// Reads the build output and writes its artifact manifest into it.
pub async fn inspect_output(
    output: PathBuf,
    app: AppManifest,
    source: SourceFacts,
) -> Result<Inspected, DeployError> {
    tokio::task::spawn_blocking(move || inspect_blocking(&output, &app, source))
        .await
        .map_err(|e| DeployError::io("inspecting the build output", std::io::Error::other(e)))?
}

fn inspect_blocking(
    output: &Path,
    app: &AppManifest,
    source: SourceFacts,
) -> Result<Inspected, DeployError> {
    let (entries, stale) = assets(output, &app.assets.dir, &app.assets.manifest)?;
    let state_schema = read_optional(output, &app.state.schema)?
        .map(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            StateSchema::parse(&text)
                .map(|schema| ArtifactStateSchema {
                    path: app.state.schema.clone(),
                    schema,
                })
                .map_err(|e| DeployError::Invalid(format!("{}: {e}", app.state.schema)))
        })
        .transpose()?;
    let migrations = match &app.migrations.dir {
        Some(dir) => migrations(output, dir)?,
        None => Vec::new(),
    };
    let manifest = ArtifactManifest {
        format_version: ARTIFACT_FORMAT_VERSION,
        app: AppSubset::from(app),
        assets: ArtifactAssets {
            dir: app.assets.dir.clone(),
            manifest: app.assets.manifest.clone(),
            entries,
        },
        state_schema,
        migrations,
        source,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| DeployError::Invalid(format!("artifact manifest: {e}")))?;
    let path = output.join(ARTIFACT_MANIFEST_PATH);
    let write = |p: &Path| -> std::io::Result<()> {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, &json)
    };
    write(&path).map_err(|e| DeployError::io(format!("writing {}", path.display()), e))?;
    Ok(Inspected { manifest, stale })
}

/// Every asset of Vango's manifest, each checked on its own so the current ones are listed
/// even when others are stale. No asset manifest means no assets.
pub fn assets(
    root: &Path,
    dir: &str,
    manifest: &str,
) -> Result<(Vec<AssetEntry>, Vec<StaleAsset>), DeployError> {
    let Some(bytes) = read_optional(root, manifest)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let vango = VangoAssetManifest::parse(&String::from_utf8_lossy(&bytes))
        .map_err(|e| DeployError::Invalid(format!("{manifest}: {e}")))?;
    let assets_dir = root.join(dir);
    let read = |name: &str| std::fs::read(assets_dir.join(name));
    let mut entries = Vec::new();
    let mut stale = Vec::new();
    for (source, fingerprinted) in vango.entries() {
        let one: VangoAssetManifest = [(source.to_owned(), fingerprinted.to_owned())]
            .into_iter()
            .collect();
        match rhone_manifest::check_assets(&one, read) {
            Ok(mut current) => entries.append(&mut current),
            Err(mut bad) => stale.append(&mut bad),
        }
    }
    Ok((entries, stale))
}

/// The file at `rel` under `root`, or `None` when there is none.
pub fn read_optional(root: &Path, rel: &str) -> Result<Option<Vec<u8>>, DeployError> {
    let path = root.join(rel);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DeployError::io(format!("reading {}", path.display()), e)),
    }
}

/// The files under `dir` (recursively), sorted by path, with their sha256.
fn migrations(root: &Path, dir: &str) -> Result<Vec<MigrationFile>, DeployError> {
    let base = root.join(dir);
    if !std::fs::symlink_metadata(&base).is_ok_and(|m| m.is_dir()) {
        return Err(DeployError::Invalid(format!(
            "migrations.dir: {dir}/ is not a directory in the build output"
        )));
    }
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let path = base.join(&rel);
        let context = |e| DeployError::io(format!("reading {}", path.display()), e);
        for entry in std::fs::read_dir(&path).map_err(context)? {
            let entry = entry.map_err(context)?;
            let rel = rel.join(entry.file_name());
            let kind = entry.file_type().map_err(context)?;
            if kind.is_dir() {
                pending.push(rel);
            } else if kind.is_file() {
                let bytes = std::fs::read(base.join(&rel)).map_err(context)?;
                let path = format!("{dir}/{}", rel.to_string_lossy());
                files.push(MigrationFile {
                    path,
                    sha256: sha256_hex(&bytes),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Packs `output`, stores it, reads it back, and records the artifact on the deployment.
pub async fn store(
    db: &DatabaseConnection,
    config: &DeployConfig,
    deployment_id: Uuid,
    output: &Path,
    manifest: &ArtifactManifest,
) -> Result<Stored, DeployError> {
    let dir = output.to_owned();
    let packed = tokio::task::spawn_blocking(move || archive::pack_dir(&dir))
        .await
        .map_err(|e| DeployError::io("packing the build output", std::io::Error::other(e)))?
        .map_err(|e| match e {
            StoreError::UnsafeEntry { .. } => DeployError::Invalid(format!("build output: {e}")),
            e => DeployError::Store(e),
        })?;
    let digest = config.store.put(&packed).await?;
    match config.store.get(&digest).await {
        Ok(bytes) if bytes.len() as u64 == packed.size() => {}
        Ok(bytes) => {
            return Err(DeployError::DigestMismatch {
                stored: digest.to_string(),
                read_back: Digest::of(&bytes).to_string(),
            });
        }
        Err(StoreError::DigestMismatch { expected, actual }) => {
            return Err(DeployError::DigestMismatch {
                stored: expected.to_string(),
                read_back: actual.to_string(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%digest, size = packed.size(), "artifact stored and verified");
    record(
        db,
        &config.store,
        deployment_id,
        &digest,
        packed.size(),
        manifest,
    )
    .await?;
    Ok(Stored {
        digest,
        size: packed.size(),
    })
}

/// Inserts the `artifacts` row (kept if there: same digest, same content) and points the
/// deployment at it, in one transaction.
async fn record(
    db: &DatabaseConnection,
    store: &ArtifactStore,
    deployment_id: Uuid,
    digest: &Digest,
    size: u64,
    manifest: &ArtifactManifest,
) -> Result<(), DeployError> {
    let manifest = serde_json::to_value(manifest)
        .map_err(|e| DeployError::Invalid(format!("artifact manifest: {e}")))?;
    let txn = begin_write(db).await.map_err(SchemaError::from)?;
    let existing = artifact::Entity::find_by_id(digest.to_string())
        .one(&txn)
        .await
        .map_err(SchemaError::from)?;
    if existing.is_none() {
        artifact::Entity::insert(artifact::ActiveModel {
            digest: Set(digest.to_string()),
            size_bytes: Set(i64::try_from(size).unwrap_or(i64::MAX)),
            manifest: Set(manifest),
            store_uri: Set(store_uri(store, digest)),
            created_at: Set(Utc::now()),
        })
        .exec(&txn)
        .await
        .map_err(SchemaError::from)?;
    }
    let updated = deployment::Entity::update_many()
        .col_expr(
            deployment::Column::ArtifactDigest,
            Expr::value(digest.to_string()),
        )
        .col_expr(deployment::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(deployment::Column::Id.eq(deployment_id))
        .exec(&txn)
        .await
        .map_err(SchemaError::from)?;
    if updated.rows_affected == 0 {
        return Err(DeployError::NotFound {
            what: "deployment",
            id: deployment_id.to_string(),
        });
    }
    txn.commit().await.map_err(SchemaError::from)?;
    Ok(())
}

/// Where the store keeps the artifact, as a URI for the `artifacts` row.
pub fn store_uri(store: &ArtifactStore, digest: &Digest) -> String {
    match store {
        ArtifactStore::Local(local) => format!("file://{}", local.path_of(digest).display()),
        ArtifactStore::S3(s3) => format!("s3://{}/{}", s3.bucket(), s3.key_of(digest)),
    }
}
