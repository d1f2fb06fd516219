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
