//! Database providers and bindings, on a real PostgreSQL (the control DB's server doubles as
//! the provider): an operator registers a server, whose admin URL is kept sealed and never
//! shown; each environment bound read-write gets a database and a role of its own, reached
//! through its `DATABASE_URL` secret; a preview is refused write access to production's
//! database and may read it through a read-only role.

use std::time::Duration;

use anyhow::{Context, Result};
use rhone_core::secret::Secret;
use rhone_schema::{
    entity::{audit_log, database_provider},
    secrets::{self, Keyring},
};
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::{Value, json};

use crate::harness::{Api, SECRETS_KEY, environment_row, tenancy};

const ADD: &str = "mutation($n: String!, $u: String!) {
    addDatabaseProvider(name: $n, adminUrl: $u, pointInTimeRecovery: true) {
        provider { name kind host pointInTimeRecovery } operation { kind status } } }";
const BIND: &str = "mutation($e: UUID!, $p: String!, $d: String, $ro: Boolean!) {
    bindDatabase(environmentId: $e, provider: $p, database: $d, readOnly: $ro) {
        binding { provider database role access status } operation { id kind status } } }";

/// The test server's admin URL, with a password added (trust authentication ignores it),
/// so that the test can look for it where it must never be.
async fn admin_url() -> Result<(String, &'static str)> {
    const PASSWORD: &str = "pw-7f3a9c-not-shown";
    let url = rhone_testkit::postgres::admin_url().await?;
    Ok((
        url.replacen("://rhone@", &format!("://rhone:{PASSWORD}@"), 1),
        PASSWORD,
    ))
}

async fn bind(
    api: &Api,
    caller: &crate::harness::Caller,
    env: &str,
    database: Option<&str>,
    read_only: bool,
) -> Result<Value> {
    let bound = caller
        .data(
            BIND,
            json!({ "e": env, "p": "main", "d": database, "ro": read_only }),
        )
        .await?["bindDatabase"]
        .clone();
    let id = bound["operation"]["id"].as_str().context("operation id")?;
    let op = api.wait_final(caller, id, Duration::from_secs(60)).await?;
    assert_eq!(op["status"], "SUCCEEDED", "{op}");
    Ok(op)
}

/// The `DATABASE_URL` the worker sealed for environment `env`.
async fn database_url(api: &Api, env: uuid::Uuid) -> Result<Secret> {
    let keys = Keyring::new(SECRETS_KEY, &[])?;
    secrets::open_all(&api.db, &keys, env)
        .await?
        .into_iter()
        .find(|(name, _)| name == "DATABASE_URL")
        .map(|(_, v)| v)
        .context("DATABASE_URL is set")
}

async fn connect(url: &Secret) -> Result<sea_orm::DatabaseConnection> {
    Ok(sea_orm::Database::connect(url.expose()).await?)
}

#[tokio::test]
async fn providers_are_added_by_operators_and_their_urls_never_shown() -> Result<()> {
    let api = Api::start_postgres("db_providers").await?;
    let admin = api.admin().await?;
    let (url, password) = admin_url().await?;

    let someone = api.user("someone@example.com").await?;
    let (code, _) = someone.error(ADD, json!({ "n": "main", "u": url })).await?;
    assert_eq!(code, "FORBIDDEN");

    for (bad, expected) in [
        ("mysql://root:pw-7f3a9c-not-shown@127.0.0.1/x", "scheme"),
        (
            "postgres://rhone:pw-7f3a9c-not-shown@127.0.0.1:1/postgres",
            "cannot connect to the server at 127.0.0.1:1: Connection refused",
        ),
    ] {
        let (code, message) = admin.error(ADD, json!({ "n": "main", "u": bad })).await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{message}");
        assert!(
            message.contains("adminUrl") && message.contains(expected),
            "{message}"
        );
        assert!(
            !message.contains(password),
            "the password is never repeated: {message}"
        );
    }

    let added = admin.data(ADD, json!({ "n": "main", "u": url })).await?;
    let provider = &added["addDatabaseProvider"]["provider"];
    assert_eq!(provider["kind"], "postgres");
    assert_eq!(provider["pointInTimeRecovery"], true);
    assert!(
        provider["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1:"))
    );
    assert_eq!(
        added["addDatabaseProvider"]["operation"]["kind"],
        "PROVIDER_ADD"
    );
    let (code, _) = admin.error(ADD, json!({ "n": "main", "u": url })).await?;
    assert_eq!(code, "CONFLICT");

    // At rest: sealed; in the audit log and the listing: absent.
    let row = database_provider::Entity::find()
        .one(&api.db)
        .await?
        .context("provider row")?;
    assert!(!row.sealed_admin_url.contains(password));
    let keys = Keyring::new(SECRETS_KEY, &[])?;
    assert_eq!(keys.open_provider(&row)?.expose(), url);
    let audit = audit_log::Entity::find().all(&api.db).await?;
    assert!(
        audit
            .iter()
            .all(|a| !a.detail.to_string().contains(password))
    );
    let listed = someone
        .data("{ databaseProviders { name host } }", json!({}))
        .await?;
    assert_eq!(listed["databaseProviders"][0]["name"], "main");
    assert!(!listed.to_string().contains(password));
    Ok(())
}

#[tokio::test]
async fn each_environment_gets_its_own_database_and_a_preview_never_writes_production() -> Result<()>
{
    let api = Api::start_postgres("db_bindings").await?;
    let _worker = api.worker()?;
    let admin = api.admin().await?;
    let (url, password) = admin_url().await?;
    admin.data(ADD, json!({ "n": "main", "u": url })).await?;
    let (_, _, app) = tenancy(&admin, "acme").await?;
    let preview = environment_row(&api, &app, "preview", "preview").await?;
    let production = environment_row(&api, &app, "production", "production").await?;

    let op = bind(&api, &admin, &production.id.to_string(), None, false).await?;
    let applied = op["stages"]
        .as_array()
        .and_then(|s| s.last())
        .context("stages")?;
    assert_eq!(applied["stage"], "applied");
    let prod_db = applied["evidence"]["database"]
        .as_str()
        .context("database")?
        .to_owned();
    assert_eq!(applied["evidence"]["database_url_version"], 1);
    assert!(!op.to_string().contains(password));
    bind(&api, &admin, &preview.id.to_string(), None, false).await?;

    let prod_url = database_url(&api, production.id).await?;
    let preview_url = database_url(&api, preview.id).await?;
    // The binding's workflow history never holds the role's password.
    let history = api
        .temporal
        .get_workflow_handle::<temporalio_common::UntypedWorkflow>(
            op["workflowId"].as_str().context("workflowId")?,
        )
        .fetch_history(Default::default())
        .to_json()
        .await?;
    let history = rhone_testkit::temporal::history_text(&history)?;
    let role_password = prod_url
        .expose()
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .context("a password in DATABASE_URL")?;
    assert!(history.contains(&prod_db), "the history is the binding's");
    assert!(!history.contains(&role_password) && !history.contains(password));
    assert_ne!(prod_url.expose(), preview_url.expose());
    assert!(
        prod_url.expose().ends_with(&format!("/{prod_db}")),
        "the URL names the database"
    );

    // Each role writes its own database.
    let prod = connect(&prod_url).await?;
    prod.execute_unprepared(
        "CREATE TABLE orders (id int primary key); INSERT INTO orders VALUES (1)",
    )
    .await?;
    let own = connect(&preview_url).await?;
    own.execute_unprepared("CREATE TABLE scratch (id int)")
        .await?;
    // The preview's role cannot even connect to production's database.
    let preview_role = preview_url
        .expose()
        .split("://")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .context("role")?
        .to_owned();
    let crossed =
        prod_url
            .expose()
            .replacen(&format!("://{}", prod_db), &format!("://{preview_role}"), 1);
    let refused = sea_orm::Database::connect(crossed.as_str()).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("permission denied"), "{message}");

    // Write access to production's database from a preview is refused, naming why.
    let (code, message) = admin
        .error(
            BIND,
            json!({ "e": preview.id, "p": "main", "d": prod_db, "ro": false }),
        )
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");
    assert!(
        message.contains("production environment \"production\""),
        "{message}"
    );

    // Reading it is a binding of its own (another environment: one database each).
    let reader = environment_row(&api, &app, "review", "preview").await?;
    bind(&api, &admin, &reader.id.to_string(), Some(&prod_db), true).await?;
    let reader_url = database_url(&api, reader.id).await?;
    let ro = connect(&reader_url).await?;
    let rows = ro
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id FROM orders",
        ))
        .await?;
    assert_eq!(rows.len(), 1);
    let write = ro.execute_unprepared("INSERT INTO orders VALUES (2)").await;
    let message = write.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("read-only transaction"), "{message}");

    // DATABASE_URL is the binding's: not set nor unset by hand.
    for query in [
        "mutation($e: UUID!) { setSecret(environmentId: $e, name: \"DATABASE_URL\", value: \"postgres://x@prod/db\") { secret { name } } }",
        "mutation($e: UUID!) { unsetSecret(environmentId: $e, name: \"DATABASE_URL\") { secret { name } } }",
    ] {
        let (code, message) = admin.error(query, json!({ "e": preview.id })).await?;
        assert_eq!(code, "CONFLICT", "{message}");
        assert!(
            message.contains("belongs to its database binding"),
            "{message}"
        );
    }
    assert_eq!(
        database_url(&api, preview.id).await?.expose(),
        preview_url.expose()
    );

    // A second database for one environment is refused.
    let (code, message) = admin
        .error(
            BIND,
            json!({ "e": reader.id, "p": "main", "d": null, "ro": false }),
        )
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");
    assert!(message.contains("one DATABASE_URL"), "{message}");

    let listed = admin
        .data(
            "query($a: UUID!) { environments(appId: $a) { name databases { provider database access status } secrets { name setBy } } }",
            json!({ "a": app }),
        )
        .await?;
    let review = listed["environments"]
        .as_array()
        .and_then(|envs| envs.iter().find(|e| e["name"] == "review"))
        .context("review listed")?;
    assert_eq!(
        review["databases"],
        json!([{ "provider": "main", "database": prod_db, "access": "READ_ONLY", "status": "ready" }])
    );
    assert!(
        review["secrets"][0]["setBy"]
            .as_str()
            .is_some_and(|s| s.starts_with("binding:"))
    );
    for c in [prod, own, ro] {
        c.close().await?;
    }
    Ok(())
}
