//! RBAC: roles inside a workspace, walls between workspaces, and runtime identities that
//! never change tenancy. Every refusal writes nothing.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::harness::{Api, Caller, tenancy};

const CREATE_PROJECT: &str =
    "mutation($w: UUID!) { createProject(workspaceId: $w, name: \"more\") { project { id } } }";
const CREATE_APP: &str =
    "mutation($p: UUID!) { createApp(projectId: $p, name: \"more\") { app { id } } }";
const CREATE_ENV: &str =
    "mutation($a: UUID!) { createEnvironment(appId: $a, name: \"more\", kind: STAGING) { id } }";
const GRANT: &str = "mutation($w: UUID!, $e: String!, $r: Role!) { grantRole(workspaceId: $w, email: $e, role: $r) { grant { role } } }";
const DECIDE: &str = "mutation($o: UUID!) { decideOperation(id: $o, decision: APPROVE) { id } }";

async fn expect(caller: &Caller, query: &str, vars: Value, code: &str) -> Result<String> {
    let (got, message) = caller.error(query, vars.clone()).await?;
    assert_eq!(got, code, "{query} {vars}: {message}");
    Ok(message)
}

async fn first_operation(caller: &Caller, ws: &str) -> Result<String> {
    let ops = caller
        .data(
            "query($w: UUID!) { operations(workspaceId: $w, first: 1) { nodes { id } } }",
            json!({ "w": ws }),
        )
        .await?;
    Ok(ops["operations"]["nodes"][0]["id"]
        .as_str()
        .context("an operation")?
        .to_owned())
}

#[tokio::test]
async fn roles_limit_what_members_may_change() -> Result<()> {
    let api = Api::start("roles_limit_what_members_may_change").await?;
    let admin = api.admin().await?;
    let (ws, project, app) = tenancy(&admin, "acme").await?;
    let op = first_operation(&admin, &ws).await?;
    for (email, role) in [
        ("viewer@example.com", "VIEWER"),
        ("dev@example.com", "DEVELOPER"),
    ] {
        admin
            .data(GRANT, json!({ "w": ws, "e": email, "r": role }))
            .await?;
    }
    let viewer = api.user("viewer@example.com").await?;
    let dev = api.user("dev@example.com").await?;
    let before = api.counts().await?;

    // A viewer reads everything and changes nothing.
    let projects = viewer
        .data(
            "query($w: UUID!) { projects(workspaceId: $w) { id } }",
            json!({ "w": ws }),
        )
        .await?;
    assert_eq!(
        projects["projects"][0]["id"].as_str(),
        Some(project.as_str())
    );
    let message = expect(&viewer, CREATE_PROJECT, json!({ "w": ws }), "FORBIDDEN").await?;
    assert!(
        message.contains("needs the admin role") && message.contains("you are viewer"),
        "{message}"
    );
    expect(&viewer, CREATE_APP, json!({ "p": project }), "FORBIDDEN").await?;
    expect(&viewer, CREATE_ENV, json!({ "a": app }), "FORBIDDEN").await?;
    expect(&viewer, DECIDE, json!({ "o": op }), "FORBIDDEN").await?;
    let grant = json!({ "w": ws, "e": "x@example.com", "r": "VIEWER" });
    expect(&viewer, GRANT, grant, "FORBIDDEN").await?;

    // A developer creates apps, not projects; an admin grants anything but owner.
    expect(&dev, CREATE_PROJECT, json!({ "w": ws }), "FORBIDDEN").await?;
    let owner = json!({ "w": ws, "e": "dev@example.com", "r": "OWNER" });
    expect(&dev, GRANT, owner, "FORBIDDEN").await?;
    // Nor a production environment without approval: that is an admin's call.
    let unguarded = json!({ "a": app });
    let message = expect(&dev, CREATE_UNGUARDED_PROD, unguarded, "FORBIDDEN").await?;
    assert!(
        message.contains("requiresApproval: false") && message.contains("needs an admin"),
        "{message}"
    );
    // Nor one whose requesters approve their own promotions.
    let self_approving = json!({ "a": app });
    let message = expect(
        &dev,
        CREATE_SELF_APPROVING_PROD,
        self_approving,
        "FORBIDDEN",
    )
    .await?;
    assert!(
        message.contains("selfApproval: true") && message.contains("needs an admin"),
        "{message}"
    );
    assert_eq!(
        api.counts().await?,
        before,
        "refused mutations write nothing"
    );

    dev.data(CREATE_APP, json!({ "p": project })).await?;
    // The admin may; the developer may create one that requires approval.
    admin
        .data(CREATE_UNGUARDED_PROD, json!({ "a": app }))
        .await?;
    dev.data(
        "mutation($a: UUID!) { createEnvironment(appId: $a, name: \"guarded\", kind: PRODUCTION) { id } }",
        json!({ "a": app }),
    )
    .await?;
    Ok(())
}

const CREATE_SELF_APPROVING_PROD: &str = "mutation($a: UUID!) { createEnvironment(appId: $a, name: \"self-approving\", kind: PRODUCTION, selfApproval: true) { id } }";
const CREATE_UNGUARDED_PROD: &str = "mutation($a: UUID!) { createEnvironment(appId: $a, name: \"unguarded\", kind: PRODUCTION, requiresApproval: false) { id } }";

#[tokio::test]
async fn workspaces_are_walled_off_from_each_other() -> Result<()> {
    let api = Api::start("workspaces_are_walled_off_from_each_other").await?;
    let alice = api.admin().await?;
    let bob = api.user("bob@example.com").await?;
    let (a_ws, ..) = tenancy(&alice, "alpha").await?;
    let (b_ws, b_project, b_app) = tenancy(&bob, "beta").await?;
    let b_op = first_operation(&bob, &b_ws).await?;
    let before = api.counts().await?;

    // Lists leave the other workspace out.
    let listed = alice
        .data(
            "{ workspaces { id } me { memberships { workspace { id } } } }",
            json!({}),
        )
        .await?;
    assert_eq!(listed["workspaces"], json!([{ "id": a_ws }]));
    assert_eq!(
        listed["me"]["memberships"],
        json!([{ "workspace": { "id": a_ws } }])
    );

    // Reads and writes of the other workspace's objects answer as if they did not exist,
    // exactly like ids that exist nowhere.
    let nowhere = uuid::Uuid::now_v7().to_string();
    let reads: [(&str, Value, &str); 8] = [
        (
            "query($i: UUID!) { workspace(id: $i) { id } }",
            json!({ "i": b_ws }),
            "workspace",
        ),
        (
            "query($i: UUID!) { projects(workspaceId: $i) { id } }",
            json!({ "i": b_ws }),
            "workspace",
        ),
        (
            "query($i: UUID!) { apps(projectId: $i) { id } }",
            json!({ "i": b_project }),
            "project",
        ),
        (
            "query($i: UUID!) { environments(appId: $i) { id } }",
            json!({ "i": b_app }),
            "app",
        ),
        (
            "query($i: UUID!) { operation(id: $i) { id } }",
            json!({ "i": b_op }),
            "operation",
        ),
        (
            "query($i: UUID!) { operations(workspaceId: $i) { nodes { id } } }",
            json!({ "i": b_ws }),
            "workspace",
        ),
        (
            "query($i: UUID!) { auditLog(workspaceId: $i) { nodes { id } } }",
            json!({ "i": b_ws }),
            "workspace",
        ),
        (
            "query($i: UUID!) { apps(projectId: $i) { id } }",
            json!({ "i": nowhere }),
            "project",
        ),
    ];
    for (query, vars, what) in reads {
        let message = expect(&alice, query, vars, "NOT_FOUND").await?;
        assert!(
            message.starts_with(what) && message.ends_with("not found"),
            "{message}"
        );
    }
    expect(&alice, CREATE_PROJECT, json!({ "w": b_ws }), "NOT_FOUND").await?;
    expect(&alice, CREATE_APP, json!({ "p": b_project }), "NOT_FOUND").await?;
    expect(&alice, CREATE_ENV, json!({ "a": b_app }), "NOT_FOUND").await?;
    expect(&alice, DECIDE, json!({ "o": b_op }), "NOT_FOUND").await?;
    let grant = json!({ "w": b_ws, "e": "alice@example.com", "r": "OWNER" });
    expect(&alice, GRANT, grant, "NOT_FOUND").await?;

    assert_eq!(
        api.counts().await?,
        before,
        "refused mutations write nothing"
    );
    Ok(())
}

#[tokio::test]
async fn runtime_identities_never_change_tenancy() -> Result<()> {
    let api = Api::start("runtime_identities_never_change_tenancy").await?;
    let admin = api.admin().await?;
    let (ws, project, app) = tenancy(&admin, "shop").await?;
    let (other_ws, ..) = tenancy(&admin, "other").await?;
    let app_id = uuid::Uuid::parse_str(&app)?;
    let runtime = api.caller(&rhone_api::issue_runtime_token(&api.db, app_id, "runtime").await?);
    let before = api.counts().await?;

    let me = runtime
        .data("{ me { actor kind appId user { id } } }", json!({}))
        .await?;
    assert_eq!(me["me"]["kind"], "RUNTIME");
    assert_eq!(me["me"]["actor"], format!("runtime:{app}"));
    assert!(me["me"]["user"].is_null());
    // It reads its own workspace, and only that.
    let projects = runtime
        .data(
            "query($w: UUID!) { projects(workspaceId: $w) { id } }",
            json!({ "w": ws }),
        )
        .await?;
    assert_eq!(
        projects["projects"][0]["id"].as_str(),
        Some(project.as_str())
    );
    let other = "query($w: UUID!) { projects(workspaceId: $w) { id } }";
    expect(&runtime, other, json!({ "w": other_ws }), "NOT_FOUND").await?;

    let message = expect(&runtime, CREATE_PROJECT, json!({ "w": ws }), "FORBIDDEN").await?;
    assert!(message.contains("runtime identities cannot"), "{message}");
    let grant = json!({ "w": ws, "e": "x@example.com", "r": "VIEWER" });
    expect(&runtime, GRANT, grant, "FORBIDDEN").await?;
    expect(&runtime, CREATE_APP, json!({ "p": project }), "FORBIDDEN").await?;
    expect(&runtime, CREATE_ENV, json!({ "a": app }), "FORBIDDEN").await?;
    let ws_create = "mutation { createWorkspace(name: \"mine\") { workspace { id } } }";
    expect(&runtime, ws_create, json!({}), "FORBIDDEN").await?;
    let token = "mutation { createToken(name: \"more\") { prefix } }";
    expect(&runtime, token, json!({}), "FORBIDDEN").await?;

    assert_eq!(
        api.counts().await?,
        before,
        "refused mutations write nothing"
    );
    Ok(())
}
