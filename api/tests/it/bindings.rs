//! Runtime service bindings: `bindRuntimeService`, `unbindRuntimeService` and
//! `Environment.runtimeServices`, on SQLite and PostgreSQL. The rows written are the ones the
//! edge's policy and promotion's `runtime_services_ready` gate read.

use anyhow::{Context, Result};
use rhone_schema::{
    entity::{app, artifact, project, runtime_service_binding, workspace},
    fixtures::{self, Tenancy},
    routes::{OwnerWrite, write_owner},
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Api, environment_row, member, tenancy};

const BIND: &str = "mutation($e: UUID!, $s: RuntimeService!, $c: JSON) {
    bindRuntimeService(environmentId: $e, service: $s, config: $c) {
        replaced
        binding { service status config createdAt }
        environment { id runtimeServices { service status config } }
        operation { id kind status targetType targetId
            auditEntries { action actor targetId operationId detail } } } }";
const UNBIND: &str = "mutation($e: UUID!, $s: RuntimeService!) {
    unbindRuntimeService(environmentId: $e, service: $s) {
        service environment { id runtimeServices { service } }
        operation { id kind status auditEntries { action detail } } } }";
const SERVICES: &str = "query($a: UUID!) { environments(appId: $a) { name runtimeServices { service status config createdAt } } }";

/// The `ready` bindings of an environment as the edge reads them: service names.
async fn ready_rows(api: &Api, env: Uuid) -> Result<Vec<String>> {
    let mut rows: Vec<String> = runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(env))
        .filter(runtime_service_binding::Column::Status.eq("ready"))
        .all(&api.db)
        .await?
        .into_iter()
        .map(|b| b.service)
        .collect();
    rows.sort();
    Ok(rows)
}

async fn bind_and_unbind(api: Api) -> Result<()> {
    let admin = api.admin().await?;
    let actor = admin.data("{ me { actor } }", json!({})).await?["me"]["actor"].clone();
    let (ws, _, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "prod", "production").await?;
    let e = env.id.to_string();

    // Idempotency is Rhone's own: no config, ready at once.
    let bound = admin
        .data(BIND, json!({ "e": e, "s": "IDEMPOTENCY" }))
        .await?["bindRuntimeService"]
        .clone();
    assert_eq!(bound["replaced"], false, "{bound}");
    assert_eq!(
        (
            &bound["binding"]["service"],
            &bound["binding"]["status"],
            &bound["binding"]["config"]
        ),
        (
            &json!("IDEMPOTENCY"),
            &json!("ready"),
            &json!({ "provider": "rhone" })
        ),
        "{bound}"
    );
    assert_eq!(
        bound["environment"]["runtimeServices"],
        json!([{ "service": "IDEMPOTENCY", "status": "ready", "config": { "provider": "rhone" } }])
    );
    let op = &bound["operation"];
    assert_eq!(
        (
            &op["kind"],
            &op["status"],
            &op["targetType"],
            &op["targetId"]
        ),
        (
            &json!("ENVIRONMENT_UPDATE"),
            &json!("SUCCEEDED"),
            &json!("environment"),
            &json!(e)
        ),
        "{op}"
    );
    let entries = op["auditEntries"].as_array().context("audit entries")?;
    assert_eq!(entries.len(), 1, "{op}");
    assert_eq!(entries[0]["action"], "environment.bind_runtime_service");
    assert_eq!(entries[0]["actor"], actor);
    assert_eq!(entries[0]["operationId"], op["id"]);
    assert_eq!(
        entries[0]["detail"],
        json!({ "service": "idempotency", "status": "ready", "config": { "provider": "rhone" }, "before": null })
    );
    assert_eq!(ready_rows(&api, env.id).await?, ["idempotency"]);
    // The workspace's audit log has it too.
    let audit = admin
        .data("query($w: UUID!) { auditLog(workspaceId: $w, first: 1) { nodes { action targetId operationId } } }", json!({ "w": ws }))
        .await?;
    assert_eq!(
        audit["auditLog"]["nodes"][0],
        json!({ "action": "environment.bind_runtime_service", "targetId": e, "operationId": op["id"] })
    );

    // Binding it again replaces it: still one binding, the audit row names what it was.
    let again = admin
        .data(
            BIND,
            json!({ "e": e, "s": "IDEMPOTENCY", "c": { "provider": "rhone" } }),
        )
        .await?["bindRuntimeService"]
        .clone();
    assert_eq!(again["replaced"], true);
    assert_eq!(
        again["binding"]["createdAt"], bound["binding"]["createdAt"],
        "the binding is the same row"
    );
    assert_eq!(
        again["operation"]["auditEntries"][0]["detail"]["before"],
        json!({ "status": "ready", "config": { "provider": "rhone" } })
    );
    assert_eq!(ready_rows(&api, env.id).await?, ["idempotency"]);

    // Refusals name the field and write nothing.
    let viewer = member(&api, &admin, &ws, "viewer@example.com", "VIEWER").await?;
    let outsider = api.user("outsider@example.com").await?;
    let before = api.counts().await?;
    let password = "pa55-w0rd-xyzzy";
    let cases: [(Value, &str, &str); 7] = [
        (
            json!({ "provider": "redis" }),
            "INVALID_ARGUMENT",
            "invalid config.url: is required by the \"redis\" provider of session_store",
        ),
        (
            json!(null),
            "INVALID_ARGUMENT",
            "invalid config.provider: is required for session_store: one of \"redis\" (url; optional password_secret), \"sql\" (dsn_secret)",
        ),
        (
            json!({ "provider": "memcached", "url": "redis://cache:6379" }),
            "INVALID_ARGUMENT",
            "invalid config.provider: is not a provider of session_store",
        ),
        (
            json!({ "provider": "sql", "dsn_secret": "postgres://u:p@db/x" }),
            "INVALID_ARGUMENT",
            "invalid config.dsn_secret: must be the name of a secret of the environment",
        ),
        (
            json!({ "provider": "redis", "url": "redis://cache:6379", "password": password }),
            "INVALID_ARGUMENT",
            "invalid config.password: is not a field of the \"redis\" provider of session_store; expected url, password_secret",
        ),
        (
            json!({ "provider": "redis", "url": format!("redis://default:{password}@cache.internal:6379/0") }),
            "INVALID_ARGUMENT",
            "invalid config.url: must not carry credentials",
        ),
        (
            json!({ "provider": "redis", "url": format!("rediss://cache.internal:6379/0?password={password}") }),
            "INVALID_ARGUMENT",
            "invalid config.url: must not carry credentials in its query string",
        ),
    ];
    for (config, code, expected) in &cases {
        let response = admin
            .gql(BIND, json!({ "e": e, "s": "SESSION_STORE", "c": config }))
            .await?;
        let (got, message) = crate::harness::error_of(&response)?;
        assert_eq!(&got, code, "{config}: {message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert!(
            !response.to_string().contains(password),
            "the password is repeated: {response}"
        );
    }
    let good = json!({ "provider": "redis", "url": "redis://cache.internal:6379/0", "password_secret": "REDIS_PASSWORD" });
    let (code, message) = viewer
        .error(BIND, json!({ "e": e, "s": "SESSION_STORE", "c": good }))
        .await?;
    assert_eq!(code, "FORBIDDEN", "{message}");
    assert!(message.contains("needs the developer role"), "{message}");
    let (code, message) = viewer
        .error(UNBIND, json!({ "e": e, "s": "IDEMPOTENCY" }))
        .await?;
    assert_eq!(code, "FORBIDDEN", "{message}");
    let (code, message) = outsider
        .error(BIND, json!({ "e": e, "s": "IDEMPOTENCY" }))
        .await?;
    assert_eq!(
        (code.as_str(), message),
        ("NOT_FOUND", format!("environment {e} not found"))
    );
    assert_eq!(
        api.counts().await?,
        before,
        "refused bindings write nothing"
    );
    assert_eq!(ready_rows(&api, env.id).await?, ["idempotency"]);

    // A viewer sees the bindings.
    let seen = viewer.data(SERVICES, json!({ "a": app })).await?;
    assert_eq!(
        seen["environments"][0]["runtimeServices"][0]["service"],
        "IDEMPOTENCY"
    );

    // A complete session store is ready; its secret is named, never given.
    let store = admin
        .data(BIND, json!({ "e": e, "s": "SESSION_STORE", "c": good }))
        .await?["bindRuntimeService"]
        .clone();
    assert_eq!(store["binding"]["status"], "ready");
    assert_eq!(store["binding"]["config"], good);
    assert_eq!(
        ready_rows(&api, env.id).await?,
        ["idempotency", "session_store"]
    );

    // A binding written by other means (a provisioner) with a credential in its URL is shown
    // redacted, and its replacement's audit row does not repeat it.
    let mut row: runtime_service_binding::ActiveModel = runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(env.id))
        .filter(runtime_service_binding::Column::Service.eq("session_store"))
        .one(&api.db)
        .await?
        .context("the session store row")?
        .into();
    row.config = Set(
        json!({ "provider": "redis", "url": format!("redis://default:{password}@cache:6379") }),
    );
    row.update(&api.db).await?;
    let shown = admin.data(SERVICES, json!({ "a": app })).await?;
    assert!(!shown.to_string().contains(password), "{shown}");
    assert!(
        shown.to_string().contains("redis://***@cache:6379"),
        "{shown}"
    );
    let replaced = admin
        .data(BIND, json!({ "e": e, "s": "SESSION_STORE", "c": good }))
        .await?;
    assert!(!replaced.to_string().contains(password), "{replaced}");
    assert_eq!(
        replaced["bindRuntimeService"]["operation"]["auditEntries"][0]["detail"]["before"]["config"]
            ["url"],
        "redis://***@cache:6379"
    );
    let log = admin
        .data(
            "query($w: UUID!) { auditLog(workspaceId: $w, first: 100) { nodes { detail } } }",
            json!({ "w": ws }),
        )
        .await?;
    assert!(!log.to_string().contains(password), "{log}");

    // Unbinding removes it; unbinding what is not bound says so.
    let unbound = admin
        .data(UNBIND, json!({ "e": e, "s": "IDEMPOTENCY" }))
        .await?["unbindRuntimeService"]
        .clone();
    assert_eq!(unbound["service"], "IDEMPOTENCY");
    assert_eq!(
        unbound["environment"]["runtimeServices"],
        json!([{ "service": "SESSION_STORE" }])
    );
    assert_eq!(
        (
            &unbound["operation"]["kind"],
            &unbound["operation"]["status"]
        ),
        (&json!("ENVIRONMENT_UPDATE"), &json!("SUCCEEDED"))
    );
    assert_eq!(
        unbound["operation"]["auditEntries"][0],
        json!({
            "action": "environment.unbind_runtime_service",
            "detail": { "service": "idempotency", "before": { "status": "ready", "config": { "provider": "rhone" } } },
        })
    );
    assert_eq!(ready_rows(&api, env.id).await?, ["session_store"]);
    let before = api.counts().await?;
    let (code, message) = admin
        .error(UNBIND, json!({ "e": e, "s": "IDEMPOTENCY" }))
        .await?;
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "NOT_FOUND",
            "runtime service binding idempotency of environment \"prod\" not found"
        )
    );
    assert_eq!(api.counts().await?, before);
    Ok(())
}

#[tokio::test]
async fn bind_and_unbind_on_sqlite() -> Result<()> {
    bind_and_unbind(Api::start("bind_and_unbind_on_sqlite").await?).await
}

#[tokio::test]
async fn bind_and_unbind_on_postgres() -> Result<()> {
    bind_and_unbind(Api::start_postgres("bind_and_unbind_on_postgres").await?).await
}

/// Unbinding a service the artifact serving the environment requires is refused: the edge
/// and the app rely on it there.
#[tokio::test]
async fn a_service_the_served_artifact_requires_stays_bound() -> Result<()> {
    let api = Api::start("a_service_the_served_artifact_requires_stays_bound").await?;
    let admin = api.admin().await?;
    let (ws, project, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "prod", "production").await?;
    let e = env.id.to_string();
    for s in ["IDEMPOTENCY", "CACHE"] {
        let c = (s == "CACHE").then(|| json!({ "provider": "redis", "url": "redis://cache:6379" }));
        admin.data(BIND, json!({ "e": e, "s": s, "c": c })).await?;
    }
    let db = &api.db;
    let t = Tenancy {
        workspace: workspace::Entity::find_by_id(ws.parse::<Uuid>()?)
            .one(db)
            .await?
            .context("workspace")?,
        project: project::Entity::find_by_id(project.parse::<Uuid>()?)
            .one(db)
            .await?
            .context("project")?,
        app: app::Entity::find_by_id(app.parse::<Uuid>()?)
            .one(db)
            .await?
            .context("app")?,
        environment: env.clone(),
    };
    let digest = fixtures::digest(7);
    let mut a: artifact::ActiveModel = fixtures::artifact(db, &digest).await?.into();
    a.manifest = Set(json!({ "app": { "required_services": ["idempotency"] } }));
    a.update(db).await?;
    let d = fixtures::deployment(db, &t, &digest, "healthy").await?;
    let (cell, _) = fixtures::local_cell(db).await?;
    write_owner(
        db,
        OwnerWrite {
            instances: 1,
            route_key: "acme-app.acme-proj.acme-ws.rhone.localhost".into(),
            environment_id: env.id,
            deployment_id: d.id,
            artifact_digest: digest.clone(),
            region_id: cell.region_id,
            cell_id: cell.id,
            operation_id: None,
            expected_epoch: None,
        },
    )
    .await?;

    let before = api.counts().await?;
    let (code, message) = admin
        .error(UNBIND, json!({ "e": e, "s": "IDEMPOTENCY" }))
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");
    assert!(
        message.contains(&format!(
            "environment \"prod\" serves artifact {digest} (deployment {}), which requires idempotency",
            d.id
        )),
        "{message}"
    );
    assert_eq!(
        api.counts().await?,
        before,
        "a refused unbind writes nothing"
    );
    // What the artifact does not require can go.
    admin.data(UNBIND, json!({ "e": e, "s": "CACHE" })).await?;
    assert_eq!(ready_rows(&api, env.id).await?, ["idempotency"]);
    Ok(())
}

/// The GraphQL enum spells exactly the manifest's services.
#[tokio::test]
async fn runtime_services_are_the_manifests() -> Result<()> {
    let api = Api::start("runtime_services_are_the_manifests").await?;
    let admin = api.admin().await?;
    let t = admin
        .data(
            "{ __type(name: \"RuntimeService\") { enumValues { name } } }",
            json!({}),
        )
        .await?;
    let mut got: Vec<String> = t["__type"]["enumValues"]
        .as_array()
        .context("enum values")?
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_lowercase))
        .collect();
    let mut expected: Vec<String> = rhone_manifest::app::Service::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    Ok(())
}
