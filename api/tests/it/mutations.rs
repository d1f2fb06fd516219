//! Synchronous mutations: argument rules, duplicates, the audit trail, and the operations
//! listing.

use std::collections::HashSet;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::harness::{Api, tenancy};

#[tokio::test]
async fn invalid_arguments_name_the_field_and_write_nothing() -> Result<()> {
    let api = Api::start("invalid_arguments_name_the_field_and_write_nothing").await?;
    let admin = api.admin().await?;
    let (ws, project, app) = tenancy(&admin, "acme").await?;
    let before = api.counts().await?;

    let cases: [(&str, Value, &str); 8] = [
        (
            "mutation { createWorkspace(name: \"Acme\") { workspace { id } } }",
            json!({}),
            "invalid name: name must start with a lowercase letter",
        ),
        (
            "mutation { createWorkspace(name: \"ok\", displayName: \"  \") { workspace { id } } }",
            json!({}),
            "invalid displayName: must not be empty",
        ),
        (
            "mutation($w: UUID!) { createProject(workspaceId: $w, name: \"a--b\") { project { id } } }",
            json!({ "w": ws }),
            "invalid name: name must not contain \"--\"",
        ),
        (
            "mutation($p: UUID!) { createApp(projectId: $p, name: \"web_app\") { app { id } } }",
            json!({ "p": project }),
            "invalid name: name may only contain lowercase letters",
        ),
        (
            "mutation($a: UUID!) { createEnvironment(appId: $a, name: \"stg\", kind: STAGING, wakeBudgetMs: 50) { id } }",
            json!({ "a": app }),
            "invalid wakeBudgetMs: must be between 100 and 300000",
        ),
        (
            "mutation($w: UUID!) { grantRole(workspaceId: $w, email: \"nobody\", role: VIEWER) { grant { id } } }",
            json!({ "w": ws }),
            "invalid email",
        ),
        (
            "query($w: UUID!) { operations(workspaceId: $w, first: 500) { nodes { id } } }",
            json!({ "w": ws }),
            "invalid first: must be between 1 and 100",
        ),
        (
            "query($w: UUID!) { projects(workspaceId: $w) { id } }",
            json!({ "w": "not-a-uuid" }),
            "",
        ),
    ];
    for (query, vars, expected) in cases {
        let (code, message) = admin.error(query, vars).await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{query}: {message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    // Well-formed ids that name nothing say what was not found.
    let missing = uuid::Uuid::now_v7();
    let (code, message) = admin
        .error(
            "mutation($p: UUID!) { createApp(projectId: $p, name: \"web\") { app { id } } }",
            json!({ "p": missing }),
        )
        .await?;
    assert_eq!(
        (code.as_str(), message),
        ("NOT_FOUND", format!("project {missing} not found"))
    );

    assert_eq!(
        api.counts().await?,
        before,
        "refused mutations write nothing"
    );
    Ok(())
}

#[tokio::test]
async fn duplicate_names_conflict() -> Result<()> {
    let api = Api::start("duplicate_names_conflict").await?;
    let admin = api.admin().await?;
    let (ws, project, _) = tenancy(&admin, "acme").await?;
    let before = api.counts().await?;

    let cases: [(&str, Value, &str); 4] = [
        (
            "mutation { createWorkspace(name: \"acme-ws\") { workspace { id } } }",
            json!({}),
            "a workspace named \"acme-ws\" already exists",
        ),
        (
            "mutation($w: UUID!) { createProject(workspaceId: $w, name: \"acme-proj\") { project { id } } }",
            json!({ "w": ws }),
            "a project named \"acme-proj\" already exists",
        ),
        (
            "mutation($p: UUID!) { createApp(projectId: $p, name: \"acme-app\") { app { id } } }",
            json!({ "p": project }),
            "an app named \"acme-app\" already exists",
        ),
        (
            "mutation($w: UUID!) { grantRole(workspaceId: $w, email: \"admin@example.com\", role: VIEWER) { grant { id } } }",
            json!({ "w": ws }),
            "last owner",
        ),
    ];
    for (query, vars, expected) in cases {
        let (code, message) = admin.error(query, vars).await?;
        assert_eq!(code, "CONFLICT", "{query}: {message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    assert_eq!(
        api.counts().await?,
        before,
        "refused mutations write nothing"
    );
    Ok(())
}

#[tokio::test]
async fn every_accepted_mutation_is_audited() -> Result<()> {
    let api = Api::start("every_accepted_mutation_is_audited").await?;
    let admin = api.admin().await?;
    let actor = admin.data("{ me { actor } }", json!({})).await?["me"]["actor"].clone();

    let ws = admin
        .data("mutation { createWorkspace(name: \"acme\", displayName: \"Acme Inc.\") { workspace { id } operation { id } } }", json!({}))
        .await?["createWorkspace"]
        .clone();
    let w = ws["workspace"]["id"].clone();
    let project = admin
        .data("mutation($w: UUID!) { createProject(workspaceId: $w, name: \"shop\") { project { id } operation { id } } }", json!({ "w": w }))
        .await?["createProject"]
        .clone();
    let app = admin
        .data("mutation($p: UUID!) { createApp(projectId: $p, name: \"web\") { app { id } operation { id } } }", json!({ "p": project["project"]["id"] }))
        .await?["createApp"]
        .clone();
    let grant = admin
        .data("mutation($w: UUID!) { grantRole(workspaceId: $w, email: \"dev@example.com\", role: DEVELOPER) { grant { id } operation { id } } }", json!({ "w": w }))
        .await?["grantRole"]
        .clone();
    let token = admin
        .data(
            "mutation { createToken(name: \"ci\") { operation { id targetId } } }",
            json!({}),
        )
        .await?["createToken"]
        .clone();

    let expected = [
        (
            "grant.create",
            "grant",
            &grant["grant"]["id"],
            &grant["operation"]["id"],
        ),
        (
            "app.create",
            "app",
            &app["app"]["id"],
            &app["operation"]["id"],
        ),
        (
            "project.create",
            "project",
            &project["project"]["id"],
            &project["operation"]["id"],
        ),
        (
            "workspace.create",
            "workspace",
            &ws["workspace"]["id"],
            &ws["operation"]["id"],
        ),
    ];
    let audit = admin
        .data("query($w: UUID!) { auditLog(workspaceId: $w) { nodes { actor action targetType targetId operationId } } }", json!({ "w": w }))
        .await?;
    let entries = audit["auditLog"]["nodes"]
        .as_array()
        .context("audit entries")?;
    assert_eq!(entries.len(), expected.len(), "{audit}");
    for (entry, (action, target_type, target_id, operation_id)) in entries.iter().zip(expected) {
        assert_eq!(entry["actor"], actor);
        assert_eq!(entry["action"], action);
        assert_eq!(entry["targetType"], target_type);
        assert_eq!(&entry["targetId"], target_id);
        assert_eq!(&entry["operationId"], operation_id);
        // The operation each entry names records its two stages and succeeded.
        let op = admin
            .data(crate::harness::OPERATION, json!({ "id": operation_id }))
            .await?["operation"]
            .clone();
        assert_eq!(op["status"], "SUCCEEDED");
        assert_eq!(op["actor"], actor);
        assert_eq!(&op["targetId"], target_id);
        let stages: Vec<&str> = op["stages"]
            .as_array()
            .context("stages")?
            .iter()
            .filter_map(|s| s["stage"].as_str())
            .collect();
        assert_eq!(stages, ["requested", "applied"]);
    }

    // A token belongs to no workspace: the caller finds its creation in its own log.
    let own = admin
        .data(
            "{ auditLog { nodes { actor action targetType targetId operationId } } }",
            json!({}),
        )
        .await?;
    let entry = &own["auditLog"]["nodes"][0];
    assert_eq!(entry["action"], "token.create");
    assert_eq!(entry["actor"], actor);
    assert_eq!(entry["targetId"], token["operation"]["targetId"]);
    assert_eq!(entry["operationId"], token["operation"]["id"]);
    Ok(())
}

#[tokio::test]
async fn operations_page_newest_first_and_filter() -> Result<()> {
    let api = Api::start("operations_page_newest_first_and_filter").await?;
    let admin = api.admin().await?;
    let (ws, project, _) = tenancy(&admin, "acme").await?;
    for name in ["b", "c", "d", "e"] {
        admin
            .data(
                "mutation($p: UUID!, $n: String!) { createApp(projectId: $p, name: $n) { app { id } } }",
                json!({ "p": project, "n": name }),
            )
            .await?;
    }
    // 1 workspace + 1 project + 5 apps.
    const PAGE: &str = "query($w: UUID!, $k: OperationKind, $after: String) {
        operations(workspaceId: $w, kind: $k, first: 3, after: $after) {
            edges { cursor node { id kind } } pageInfo { hasNextPage endCursor } } }";
    let mut seen = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let page =
            admin.data(PAGE, json!({ "w": ws, "after": after })).await?["operations"].clone();
        pages += 1;
        let edges = page["edges"].as_array().context("edges")?;
        assert!(edges.len() <= 3);
        seen.extend(
            edges
                .iter()
                .map(|e| e["node"]["id"].as_str().unwrap_or_default().to_owned()),
        );
        if !page["pageInfo"]["hasNextPage"].as_bool().unwrap_or(false) {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    assert_eq!((pages, seen.len()), (3, 7));
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        7,
        "no operation twice"
    );
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first, "UUIDv7 ids: newest first");

    let apps = admin
        .data(PAGE, json!({ "w": ws, "k": "APP_CREATE" }))
        .await?["operations"]
        .clone();
    let kinds: Vec<&Value> = apps["edges"]
        .as_array()
        .context("edges")?
        .iter()
        .map(|e| &e["node"]["kind"])
        .collect();
    assert_eq!(kinds, [&json!("APP_CREATE"); 3]);
    assert_eq!(apps["pageInfo"]["hasNextPage"], true);
    let none = admin
        .data(
            "query($w: UUID!) { operations(workspaceId: $w, status: FAILED) { nodes { id } pageInfo { hasNextPage } } }",
            json!({ "w": ws }),
        )
        .await?;
    assert_eq!(none["operations"]["nodes"], json!([]));
    Ok(())
}
