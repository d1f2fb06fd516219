//! Secrets: `setSecret`, `unsetSecret` and `Environment.secrets`, on SQLite and PostgreSQL.
//! A value goes in and never comes out: not in an answer, an audit row or the table, which
//! holds ciphertext the harness's key opens.

use anyhow::Result;
use rhone_schema::{entity::secret, secrets::Keyring};
use sea_orm::EntityTrait;
use serde_json::json;

use crate::harness::{Api, SECRETS_KEY, environment_row, member, tenancy};

const SET: &str = "mutation($e: UUID!, $n: String!, $v: String!) {
    setSecret(environmentId: $e, name: $n, value: $v) {
        secret { name version setBy updatedAt }
        environment { id secrets { name version } }
        operation { kind status auditEntries { action actor detail } } } }";
const UNSET: &str = "mutation($e: UUID!, $n: String!) {
    unsetSecret(environmentId: $e, name: $n) { secret { name } environment { secrets { name } } } }";

const VALUE: &str = "sk_live_51HxQ-not-a-real-key";

async fn set_list_and_unset(api: Api) -> Result<()> {
    let admin = api.admin().await?;
    let actor = admin.data("{ me { actor } }", json!({})).await?["me"]["actor"].clone();
    let (ws, _, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "preview", "preview").await?;
    let e = env.id.to_string();

    let first = admin
        .data(SET, json!({ "e": e, "n": "STRIPE_KEY", "v": VALUE }))
        .await?["setSecret"]
        .clone();
    assert_eq!(first["secret"]["name"], "STRIPE_KEY");
    assert_eq!(first["secret"]["version"], 1);
    assert_eq!(first["secret"]["setBy"], actor);
    assert_eq!(first["operation"]["kind"], "ENVIRONMENT_UPDATE");
    assert_eq!(first["operation"]["status"], "SUCCEEDED");
    let audit = &first["operation"]["auditEntries"][0];
    assert_eq!(audit["action"], "environment.set_secret");
    assert_eq!(audit["detail"]["name"], "STRIPE_KEY");
    assert_eq!(audit["detail"]["version"], 1);
    let again = admin
        .data(
            SET,
            json!({ "e": e, "n": "STRIPE_KEY", "v": "sk_live_rotated" }),
        )
        .await?["setSecret"]
        .clone();
    assert_eq!(again["secret"]["version"], 2);
    assert_eq!(
        again["environment"]["secrets"],
        json!([{ "name": "STRIPE_KEY", "version": 2 }])
    );
    for answer in [&first, &again] {
        let text = answer.to_string();
        assert!(
            !text.contains(VALUE) && !text.contains("sk_live_rotated"),
            "{text}"
        );
    }

    // At rest: ciphertext, bound to its row, that the operator's key opens.
    let rows = secret::Entity::find().all(&api.db).await?;
    let [row] = rows.as_slice() else {
        anyhow::bail!("one secret row: {rows:?}");
    };
    assert!(
        !row.ciphertext
            .windows(15)
            .any(|w| w == &b"sk_live_rotated"[..]),
        "the value is stored in clear"
    );
    let keys = Keyring::new(SECRETS_KEY, &[])?;
    assert_eq!(keys.open(row)?.expose(), "sk_live_rotated");
    assert_eq!(row.key_id, keys.current_id());

    // Names that are not variable names, and values that are not values, are refused.
    for (name, value, field) in [
        ("1PASSWORD", "x", "name"),
        ("STRIPE-KEY", "x", "name"),
        ("PORT", "x", "name"),
        ("OK_NAME", "", "value"),
    ] {
        let (code, message) = admin
            .error(SET, json!({ "e": e, "n": name, "v": value }))
            .await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{name}: {message}");
        assert!(
            message.starts_with(&format!("invalid {field}: ")),
            "{message}"
        );
    }
    let big = "x".repeat(64 * 1024 + 1);
    let (code, message) = admin
        .error(SET, json!({ "e": e, "n": "BIG", "v": big }))
        .await?;
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(!message.contains("xxxx"), "{message}");

    // A viewer may not set one.
    let viewer = member(&api, &admin, &ws, "viewer@example.com", "VIEWER").await?;
    let (code, _) = viewer
        .error(SET, json!({ "e": e, "n": "OTHER", "v": "v" }))
        .await?;
    assert_eq!(code, "FORBIDDEN");

    let unset = admin
        .data(UNSET, json!({ "e": e, "n": "STRIPE_KEY" }))
        .await?["unsetSecret"]
        .clone();
    assert_eq!(unset["secret"], json!(null));
    assert_eq!(unset["environment"]["secrets"], json!([]));
    let (code, message) = admin
        .error(UNSET, json!({ "e": e, "n": "STRIPE_KEY" }))
        .await?;
    assert_eq!(code, "NOT_FOUND", "{message}");
    assert!(
        secret::Entity::find().all(&api.db).await?.is_empty(),
        "the row is gone"
    );
    Ok(())
}

#[tokio::test]
async fn secrets_are_sealed_versioned_and_never_shown_on_sqlite() -> Result<()> {
    set_list_and_unset(Api::start("secrets_on_sqlite").await?).await
}

#[tokio::test]
async fn secrets_are_sealed_versioned_and_never_shown_on_postgres() -> Result<()> {
    set_list_and_unset(Api::start_postgres("secrets_on_postgres").await?).await
}
