//! Authentication and tokens: who may call at all, and how tokens are kept.

use anyhow::{Context, Result};
use rhone_schema::entity::api_token;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::harness::{Api, error_of};

#[tokio::test]
async fn calls_without_a_valid_token_are_refused() -> Result<()> {
    let api = Api::start("calls_without_a_valid_token_are_refused").await?;
    let admin = api.admin().await?;
    let before = api.counts().await?;

    let query = json!({ "query": "{ workspaces { id } }" });
    let mutation =
        json!({ "query": "mutation { createWorkspace(name: \"x\") { workspace { id } } }" });
    let unknown = format!("rhone_{}", "a".repeat(43));
    for caller in [
        api.anonymous(),
        api.caller("not-a-token"),
        api.caller(&unknown),
    ] {
        for body in [&query, &mutation] {
            let (status, response) = caller.post(body.clone()).await?;
            assert_eq!(status, 401, "{response}");
            assert_eq!(error_of(&response)?.0, "UNAUTHENTICATED", "{response}");
            assert!(response["data"].is_null(), "{response}");
        }
    }

    // A revoked token is refused like an unknown one.
    let token = admin.token().context("admin token")?;
    assert!(admin.data("{ me { actor } }", json!({})).await.is_ok());
    let row = api_token::Entity::find()
        .filter(api_token::Column::TokenHash.eq(api_token::hash_token(token)))
        .one(&api.db)
        .await?
        .context("the admin token row")?;
    let mut revoked: api_token::ActiveModel = row.into();
    revoked.revoked_at = Set(Some(chrono::Utc::now()));
    revoked.update(&api.db).await?;
    let (status, response) = admin.post(query.clone()).await?;
    assert_eq!(
        (status, error_of(&response)?.0.as_str()),
        (401, "UNAUTHENTICATED")
    );

    assert_eq!(api.counts().await?, before, "refused calls write nothing");
    Ok(())
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_shown_once() -> Result<()> {
    let api = Api::start("tokens_are_stored_hashed_and_shown_once").await?;
    let admin = api.admin().await?;
    assert_eq!(
        rhone_api::bootstrap_admin(&api.db, "other@example.com").await?,
        None,
        "bootstrap only acts on an empty DB"
    );

    let me = admin
        .data(
            "{ me { actor kind user { email } memberships { role } } }",
            json!({}),
        )
        .await?;
    assert_eq!(me["me"]["kind"], "USER");
    assert_eq!(me["me"]["user"]["email"], "admin@example.com");

    let created = admin
        .data(
            "mutation { createToken(name: \"laptop\") { token prefix operation { kind status actor } } }",
            json!({}),
        )
        .await?["createToken"]
        .clone();
    let token = created["token"].as_str().context("token")?;
    assert!(token.starts_with("rhone_") && token.len() == 49, "{token}");
    assert_eq!(created["prefix"].as_str(), Some(&token[..12]));
    assert_eq!(created["operation"]["kind"], "TOKEN_CREATE");
    assert_eq!(created["operation"]["status"], "SUCCEEDED");
    assert_eq!(created["operation"]["actor"], me["me"]["actor"]);

    let rows = api_token::Entity::find().all(&api.db).await?;
    let row = rows
        .iter()
        .find(|r| r.name == "laptop")
        .context("the new token's row")?;
    assert_eq!(row.token_hash, api_token::hash_token(token));
    assert!(
        rows.iter()
            .all(|r| r.token_hash != token && !r.prefix.contains(&token[12..]))
    );

    // The new token works; the response never shows a token again.
    let laptop = api.caller(token);
    let again = laptop.data("{ me { actor } }", json!({})).await?;
    assert_eq!(again["me"]["actor"], me["me"]["actor"]);
    Ok(())
}

/// A token lasts `expiresInDays` (90 by default, 1 to 365), is refused once expired with a
/// message saying so, shows when it was last used, and its owner lists and revokes it (an
/// operation and audit row); another user cannot even see it.
#[tokio::test]
async fn tokens_expire_show_their_use_and_are_revoked_by_their_owner() -> Result<()> {
    let api = Api::start("tokens_expire_show_their_use_and_are_revoked_by_their_owner").await?;
    let admin = api.admin().await?;
    const CREATE: &str = "mutation($d: Int) { createToken(name: \"ci\", expiresInDays: $d) { id token prefix expiresAt } }";
    const LIST: &str =
        "{ tokens { id name prefix kind createdAt lastUsedAt expiresAt revokedAt } }";
    const REVOKE: &str = "mutation($id: UUID!) { revokeToken(id: $id) { token { id revokedAt } operation { kind status actor } } }";

    for bad in [0, 366, -1] {
        let (code, message) = admin.error(CREATE, json!({ "d": bad })).await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{bad}: {message}");
        assert!(
            message.contains("invalid expiresInDays: must be between 1 and 365"),
            "{message}"
        );
    }
    let default = admin.data(CREATE, json!({})).await?["createToken"].clone();
    let expires: chrono::DateTime<chrono::Utc> = default["expiresAt"]
        .as_str()
        .context("expiresAt")?
        .parse()?;
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!(
        (89.9..=90.0).contains(&days),
        "default lifetime {days} days"
    );

    let created = admin.data(CREATE, json!({ "d": 7 })).await?["createToken"].clone();
    let id = created["id"].as_str().context("id")?.to_owned();
    let ci = api.caller(created["token"].as_str().context("token")?);
    ci.data("{ me { actor } }", json!({})).await?;
    let listed = admin.data(LIST, json!({})).await?["tokens"].clone();
    let row = listed
        .as_array()
        .context("tokens")?
        .iter()
        .find(|t| t["id"] == id.as_str())
        .context("the new token is listed")?
        .clone();
    assert_eq!(row["name"], "ci");
    assert_eq!(row["kind"], "user");
    assert!(row["lastUsedAt"].is_string(), "used once: {row}");
    assert!(row["revokedAt"].is_null(), "{row}");

    // Another user neither sees nor revokes it.
    let other = api.user("mallory@example.com").await?;
    let theirs = other.data(LIST, json!({})).await?["tokens"].clone();
    assert!(
        theirs
            .as_array()
            .context("tokens")?
            .iter()
            .all(|t| t["id"] != id.as_str())
    );
    let (code, _) = other.error(REVOKE, json!({ "id": id })).await?;
    assert_eq!(code, "NOT_FOUND");

    let revoked = admin.data(REVOKE, json!({ "id": id })).await?["revokeToken"].clone();
    assert!(revoked["token"]["revokedAt"].is_string(), "{revoked}");
    assert_eq!(revoked["operation"]["kind"], "TOKEN_REVOKE");
    assert_eq!(revoked["operation"]["status"], "SUCCEEDED");
    let (status, response) = ci.post(json!({ "query": "{ me { actor } }" })).await?;
    assert_eq!(status, 401, "{response}");
    assert_eq!(
        error_of(&response)?,
        (
            "UNAUTHENTICATED".to_owned(),
            "the token was revoked; use another one".to_owned()
        )
    );
    let (code, message) = admin.error(REVOKE, json!({ "id": id })).await?;
    assert_eq!(code, "CONFLICT", "{message}");

    // Expired: refused, saying when.
    let created = admin.data(CREATE, json!({ "d": 1 })).await?["createToken"].clone();
    let short = api.caller(created["token"].as_str().context("token")?);
    let row = api_token::Entity::find_by_id(
        created["id"]
            .as_str()
            .context("id")?
            .parse::<uuid::Uuid>()?,
    )
    .one(&api.db)
    .await?
    .context("row")?;
    let mut expired: api_token::ActiveModel = row.into();
    expired.expires_at = Set(Some(chrono::Utc::now() - chrono::TimeDelta::seconds(1)));
    expired.update(&api.db).await?;
    let (status, response) = short.post(json!({ "query": "{ me { actor } }" })).await?;
    assert_eq!(status, 401, "{response}");
    let (code, message) = error_of(&response)?;
    assert_eq!(code, "UNAUTHENTICATED");
    assert!(
        message.starts_with("the token expired at ") && message.contains("rhone tokens create"),
        "{message}"
    );
    Ok(())
}
