//! Runtime service bindings: `bindRuntimeService`, `unbindRuntimeService` and
//! `Environment.runtimeServices`, on SQLite and PostgreSQL. The rows written are the ones the
//! edge's policy and promotion's `runtime_services_ready` gate read. Bindings are probed
//! before they are `ready`: against a real Redis (`rhone_testkit::redis`) and the test
//! PostgreSQL, and against ports nobody listens on.

use anyhow::{Context, Result};
use rhone_schema::{
    entity::{app, artifact, project, runtime_service_binding, workspace},
    fixtures::{self, Tenancy},
    routes::{OwnerWrite, write_owner},
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Api, Caller, environment_row, member, tenancy};

const BIND: &str = "mutation($e: UUID!, $s: RuntimeService!, $c: JSON) {
    bindRuntimeService(environmentId: $e, service: $s, config: $c) {
        replaced
        binding { service status config createdAt error probedAt }
        environment { id runtimeServices { service status config } }
        operation { id kind status targetType targetId
            auditEntries { action actor targetId operationId detail } } } }";
const UNBIND: &str = "mutation($e: UUID!, $s: RuntimeService!) {
    unbindRuntimeService(environmentId: $e, service: $s) {
        service environment { id runtimeServices { service } }
        operation { id kind status auditEntries { action detail } } } }";
const SERVICES: &str = "query($a: UUID!) { environments(appId: $a) { name runtimeServices { service status config createdAt error probedAt } } }";
const SET_SECRET: &str = "mutation($e: UUID!, $n: String!, $v: String!) {
    setSecret(environmentId: $e, name: $n, value: $v) { secret { name version } } }";

/// Sets secret `name` of environment `e` to `value`.
async fn set_secret(admin: &Caller, e: &str, name: &str, value: &str) -> Result<()> {
    admin
        .data(SET_SECRET, json!({ "e": e, "n": name, "v": value }))
        .await?;
    Ok(())
}

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
        json!({ "service": "idempotency", "status": "ready", "error": null, "config": { "provider": "rhone" }, "before": null })
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
        json!({ "status": "ready", "config": { "provider": "rhone" }, "error": null })
    );
    // Rhone's own store is not probed.
    assert_eq!(again["binding"]["probedAt"], Value::Null, "{again}");
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
    let redis = rhone_testkit::redis::server().await?;
    let good =
        json!({ "provider": "redis", "url": redis.url, "password_secret": "REDIS_PASSWORD" });
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

    // A session store Rhone reached (AUTH with the secret's password, PING) is ready; its
    // secret is named, never given.
    set_secret(&admin, &e, "REDIS_PASSWORD", &redis.password).await?;
    let store = admin
        .data(BIND, json!({ "e": e, "s": "SESSION_STORE", "c": good }))
        .await?["bindRuntimeService"]
        .clone();
    assert_eq!(store["binding"]["status"], "ready", "{store}");
    assert_eq!(store["binding"]["error"], Value::Null, "{store}");
    assert!(store["binding"]["probedAt"].is_string(), "{store}");
    assert_eq!(store["binding"]["config"], good);
    assert!(!store.to_string().contains(&redis.password), "{store}");
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
        replaced["bindRuntimeService"]["binding"]["status"], "ready",
        "binding again probes again: {replaced}"
    );
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
    let redis = rhone_testkit::redis::server().await?;
    set_secret(&admin, &e, "REDIS_PASSWORD", &redis.password).await?;
    for s in ["IDEMPOTENCY", "CACHE"] {
        let c = (s == "CACHE").then(
            || json!({ "provider": "redis", "url": redis.url, "password_secret": "REDIS_PASSWORD" }),
        );
        admin.data(BIND, json!({ "e": e, "s": s, "c": c })).await?;
    }
    assert_eq!(ready_rows(&api, env.id).await?, ["cache", "idempotency"]);
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

/// Binds SESSION_STORE with `config`: the binding as answered.
async fn bind_store(admin: &Caller, e: &str, config: Value) -> Result<Value> {
    Ok(admin
        .data(BIND, json!({ "e": e, "s": "SESSION_STORE", "c": config }))
        .await?["bindRuntimeService"]["binding"]
        .clone())
}

/// The status and error of a binding as answered, after checking that an unreachable one
/// was probed and says why.
fn outcome(binding: &Value) -> (String, String) {
    let status = binding["status"].as_str().unwrap_or_default().to_owned();
    let error = binding["error"].as_str().unwrap_or_default().to_owned();
    assert!(binding["probedAt"].is_string(), "{binding}");
    if status == "ready" {
        assert_eq!(binding["error"], Value::Null, "{binding}");
    } else {
        assert!(!error.is_empty(), "{binding}");
    }
    (status, error)
}

/// A port on 127.0.0.1 nobody listens on (it was free a moment ago).
fn closed_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A Redis binding is `ready` only once Rhone has reached the server with the password of
/// the secret it names. A secret that is not set, a wrong password, no password and a port
/// nobody listens on each leave it `unreachable`, the mutation answering why and never a
/// password, and the edge sees no ready session store; the secret mended, binding again
/// probes again and the store is ready.
#[tokio::test]
async fn a_redis_binding_is_ready_only_once_reached() -> Result<()> {
    let api = Api::start("a_redis_binding_is_ready_only_once_reached").await?;
    let admin = api.admin().await?;
    let (ws, _, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "prod", "production").await?;
    let e = env.id.to_string();
    let redis = rhone_testkit::redis::server().await?;
    let wrong = "wr0ng-redis-pw-qwerty";
    let store =
        json!({ "provider": "redis", "url": redis.url, "password_secret": "REDIS_PASSWORD" });

    let unset = bind_store(&admin, &e, store.clone()).await?;
    assert_eq!(
        outcome(&unset),
        (
            "unreachable".into(),
            "secret REDIS_PASSWORD is not set".into()
        )
    );
    assert!(ready_rows(&api, env.id).await?.is_empty());

    set_secret(&admin, &e, "REDIS_PASSWORD", wrong).await?;
    let (status, error) = outcome(&bind_store(&admin, &e, store.clone()).await?);
    assert_eq!(status, "unreachable");
    assert!(
        error.starts_with(&format!(
            "redis at {}: AUTH refused the password in secret REDIS_PASSWORD",
            redis.url
        )),
        "{error}"
    );
    assert!(ready_rows(&api, env.id).await?.is_empty());

    let no_password = json!({ "provider": "redis", "url": redis.url });
    let (status, error) = outcome(&bind_store(&admin, &e, no_password).await?);
    assert_eq!(status, "unreachable");
    assert!(error.contains("NOAUTH"), "{error}");

    let nobody = format!("redis://127.0.0.1:{}/0", closed_port()?);
    let started = std::time::Instant::now();
    let (status, error) = outcome(
        &bind_store(
            &admin,
            &e,
            json!({ "provider": "redis", "url": nobody, "password_secret": "REDIS_PASSWORD" }),
        )
        .await?,
    );
    assert_eq!(status, "unreachable");
    assert!(
        error.starts_with(&format!("redis at {nobody}: cannot connect")),
        "{error}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // What the environment shows, and the gates and the edge read, is the last probe.
    let shown = admin.data(SERVICES, json!({ "a": app })).await?;
    let shown = &shown["environments"][0]["runtimeServices"][0];
    assert_eq!(
        (&shown["status"], &shown["error"]),
        (&json!("unreachable"), &json!(error)),
        "{shown}"
    );
    assert!(ready_rows(&api, env.id).await?.is_empty());

    set_secret(&admin, &e, "REDIS_PASSWORD", &redis.password).await?;
    let (status, error) = outcome(&bind_store(&admin, &e, store).await?);
    assert_eq!((status.as_str(), error.as_str()), ("ready", ""));
    assert_eq!(ready_rows(&api, env.id).await?, ["session_store"]);

    let log = admin
        .data(
            "query($w: UUID!) { auditLog(workspaceId: $w, first: 100) { nodes { action detail } } }",
            json!({ "w": ws }),
        )
        .await?;
    let text = log.to_string();
    assert!(
        !text.contains(wrong) && !text.contains(&redis.password),
        "{log}"
    );
    assert!(
        text.contains("AUTH refused the password in secret REDIS_PASSWORD"),
        "the audit rows keep each probe's error: {log}"
    );
    Ok(())
}

/// `url` with `password` as its userinfo's password.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (user, host) = match rest.split_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap_or("rhone"), host),
        None => ("rhone", rest),
    };
    format!("{scheme}://{user}:{password}@{host}")
}

/// A SQL session store is `ready` once `SELECT 1` answers on the database its DSN secret
/// names (the test PostgreSQL); a database that does not exist or a DSN that is not a
/// PostgreSQL URL leaves it `unreachable`, and the DSN's password is never shown.
#[tokio::test]
async fn a_sql_binding_is_ready_once_select_1_answers() -> Result<()> {
    let name = "a_sql_binding_is_ready_once_select_1_answers";
    let api = Api::start(name).await?;
    let admin = api.admin().await?;
    let (ws, _, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "prod", "production").await?;
    let e = env.id.to_string();
    let sql = json!({ "provider": "sql", "dsn_secret": "SESSION_DSN" });

    let (status, error) = outcome(&bind_store(&admin, &e, sql.clone()).await?);
    assert_eq!(
        (status.as_str(), error.as_str()),
        ("unreachable", "secret SESSION_DSN is not set")
    );

    let dsn = rhone_testkit::postgres::database(&rhone_testkit::unique_name(name)).await?;
    set_secret(&admin, &e, "SESSION_DSN", &dsn).await?;
    let (status, error) = outcome(&bind_store(&admin, &e, sql.clone()).await?);
    assert_eq!((status.as_str(), error.as_str()), ("ready", ""));
    assert_eq!(ready_rows(&api, env.id).await?, ["session_store"]);

    let password = "dsn-pa55word-zyxw";
    let (server, _) = dsn.rsplit_once('/').context("a database in the URL")?;
    let missing = with_password(&format!("{server}/no_such_database_xyz"), password);
    set_secret(&admin, &e, "SESSION_DSN", &missing).await?;
    let answer = bind_store(&admin, &e, sql.clone()).await?;
    let (status, error) = outcome(&answer);
    assert_eq!(status, "unreachable");
    assert!(
        error.starts_with("database of secret SESSION_DSN: cannot connect")
            && error.contains("no_such_database_xyz"),
        "{error}"
    );
    assert!(!answer.to_string().contains(password), "{answer}");
    assert!(ready_rows(&api, env.id).await?.is_empty());

    set_secret(&admin, &e, "SESSION_DSN", "sqlite::memory:").await?;
    let (status, error) = outcome(&bind_store(&admin, &e, sql).await?);
    assert_eq!(status, "unreachable");
    assert_eq!(
        error,
        "secret SESSION_DSN does not hold a postgres:// or postgresql:// URL, the SQL Rhone connects to"
    );
    let log = admin
        .data(
            "query($w: UUID!) { auditLog(workspaceId: $w, first: 100) { nodes { detail } } }",
            json!({ "w": ws }),
        )
        .await?;
    assert!(!log.to_string().contains(password), "{log}");
    Ok(())
}

/// A NATS broadcast must greet with `INFO`: a port nobody listens on and a server that is
/// not NATS (the test Redis, which waits for a command) leave it `unreachable`. S3 object
/// storage is not probed: ready on its config, with no `probedAt`.
#[tokio::test]
async fn nats_is_probed_and_s3_is_not() -> Result<()> {
    let api = Api::start("nats_is_probed_and_s3_is_not").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "prod", "production").await?;
    let e = env.id.to_string();
    let broadcast =
        |url: String| json!({ "e": e, "s": "BROADCAST", "c": { "provider": "nats", "url": url } });
    let port = closed_port()?;
    let bound = admin
        .data(BIND, broadcast(format!("nats://127.0.0.1:{port}")))
        .await?;
    let (status, error) = outcome(&bound["bindRuntimeService"]["binding"]);
    assert_eq!(status, "unreachable");
    assert!(
        error.starts_with(&format!("nats at 127.0.0.1:{port}: cannot connect")),
        "{error}"
    );
    let redis = rhone_testkit::redis::server().await?;
    let not_nats = redis.url.replace("redis://", "nats://");
    let bound = admin.data(BIND, broadcast(not_nats)).await?;
    let (status, error) = outcome(&bound["bindRuntimeService"]["binding"]);
    assert_eq!(status, "unreachable");
    assert!(error.ends_with("no answer within 3s"), "{error}");

    let s3 = admin
        .data(
            BIND,
            json!({ "e": e, "s": "OBJECT_STORAGE", "c": { "provider": "s3", "bucket": "assets" } }),
        )
        .await?["bindRuntimeService"]["binding"]
        .clone();
    assert_eq!(
        (&s3["status"], &s3["error"], &s3["probedAt"]),
        (&json!("ready"), &Value::Null, &Value::Null),
        "{s3}"
    );
    assert_eq!(ready_rows(&api, env.id).await?, ["object_storage"]);
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
