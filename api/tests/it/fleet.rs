//! Runner hosts over GraphQL: a platform operator adds one (its credential shown once,
//! stored only hashed), lists and revokes it, and a revoked runner's allocations are fenced;
//! anyone else is FORBIDDEN.

use anyhow::{Context, Result};
use rhone_schema::entity::{allocation, operation, runner};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::harness::Api;

#[tokio::test]
async fn operators_add_list_and_revoke_runners() -> Result<()> {
    let api = Api::start("fleet_gql").await?;
    let admin = api.admin().await?;
    let added = admin
        .data(
            "mutation { addRunner(name: \"h1\", region: \"eu\", cell: \"eu-a\") { name credential operation { kind status } } }",
            json!({}),
        )
        .await?;
    let credential = added["addRunner"]["credential"]
        .as_str()
        .context("credential")?;
    assert!(credential.starts_with("rhone_runner_"), "{added}");
    assert_eq!(added["addRunner"]["operation"]["status"], "SUCCEEDED");
    let row = runner::Entity::find()
        .filter(runner::Column::Name.eq("h1"))
        .one(&api.db)
        .await?
        .context("h1")?;
    assert_eq!(row.status, "registered");
    assert_ne!(
        row.credential_sha256.as_deref(),
        Some(credential),
        "only its hash is kept"
    );
    let (code, message) = admin
        .error(
            "mutation { addRunner(name: \"h1\", region: \"eu\", cell: \"eu-a\") { name } }",
            json!({}),
        )
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");

    let listed = admin
        .data("{ runners { name region cell status slots } }", json!({}))
        .await?;
    assert_eq!(
        listed["runners"],
        json!([{ "name": "h1", "region": "eu", "cell": "eu-a", "status": "registered", "slots": 0 }])
    );

    // Nobody else manages or sees the fleet.
    let someone = api.user("someone@example.com").await?;
    for query in [
        "{ runners { name } }",
        "mutation { addRunner(name: \"h2\", region: \"eu\", cell: \"eu-a\") { name } }",
        "mutation { revokeRunner(name: \"h1\") { name } }",
    ] {
        let (code, _) = someone.error(query, json!({})).await?;
        assert_eq!(code, "FORBIDDEN", "{query}");
    }

    // A revoked runner's allocations stop being routable.
    let t = rhone_schema::fixtures::tenancy(&api.db, "fleet", "production").await?;
    let digest = rhone_schema::fixtures::digest(0xab);
    rhone_schema::fixtures::artifact(&api.db, &digest).await?;
    let d = rhone_schema::fixtures::deployment(&api.db, &t, &digest, "preview_ready").await?;
    let cell = rhone_schema::entity::cell::Entity::find_by_id(row.cell_id)
        .one(&api.db)
        .await?
        .context("cell")?;
    let live = rhone_schema::allocations::create_allocation(
        &api.db,
        rhone_schema::allocations::NewAllocation {
            id: rhone_schema::new_id(),
            deployment_id: d.id,
            artifact_digest: digest,
            runner_id: Some(row.id),
            region_id: cell.region_id,
            cell_id: cell.id,
            memory_mb: 512,
            cpu_millis: 1000,
        },
    )
    .await?;
    let revoked = admin
        .data(
            "mutation { revokeRunner(name: \"h1\") { name status } }",
            json!({}),
        )
        .await?;
    assert_eq!(revoked["revokeRunner"]["status"], "revoked");
    let fenced = allocation::Entity::find_by_id(live.id)
        .one(&api.db)
        .await?
        .context("row")?;
    assert_eq!(
        (fenced.stage.as_str(), fenced.desired.as_str()),
        ("failed", "stop")
    );
    assert_eq!(fenced.exit_status.as_deref(), Some("runner h1 revoked"));
    let ops = operation::Entity::find()
        .filter(operation::Column::TargetType.eq("runner"))
        .all(&api.db)
        .await?;
    let kinds: Vec<&str> = ops.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds, ["runner_add", "runner_revoke"]);
    Ok(())
}
