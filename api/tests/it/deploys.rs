//! `deploy`'s refusals: what a deploy may target (preview environments only) and what it
//! may clone (remote URLs without credentials; local repositories only where the operator
//! allows them). Each refused deploy records nothing: no operation, audit row or deployment.

use anyhow::Result;
use serde_json::json;

use crate::harness::{Api, Caller, environment_row, tenancy};

const DEPLOY: &str =
    "mutation($e: UUID!, $r: String!) { deploy(environmentId: $e, repository: $r) { id } }";

/// Deploys `repository` to `env` as `caller`; the refusal's code and message, after
/// checking that nothing was recorded.
async fn refused(
    api: &Api,
    caller: &Caller,
    env: uuid::Uuid,
    repository: &str,
) -> Result<(String, String)> {
    let before = api.counts().await?;
    let refusal = caller
        .error(DEPLOY, json!({ "e": env, "r": repository }))
        .await?;
    assert_eq!(
        api.counts().await?,
        before,
        "{repository}: a refused deploy records nothing"
    );
    Ok(refusal)
}

/// A deploy serves preview environments only: staging and production move through a
/// promotion, and the refusal says so, with nothing recorded.
#[tokio::test]
async fn a_deploy_to_staging_or_production_is_refused_naming_promote() -> Result<()> {
    let api = Api::start("a_deploy_to_staging_or_production_is_refused_naming_promote").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "nodeploy").await?;
    for kind in ["staging", "production"] {
        let env = environment_row(&api, &app, kind, kind).await?;
        let (code, message) = refused(&api, &admin, env.id, "https://example.com/app.git").await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{kind}: {message}");
        assert!(
            message.contains("invalid environmentId")
                && message.contains(&format!("is a {kind} environment"))
                && message.contains("rhone promote"),
            "{kind}: {message}"
        );
    }
    Ok(())
}

/// A credential in the repository URL would land in the audit row, the deployment, stage
/// evidence and the Temporal history: any user part of an https, http or git URL is refused
/// by name, and the refusal does not repeat it.
#[tokio::test]
async fn a_repository_url_with_a_token_is_refused_without_echoing_it() -> Result<()> {
    let api = Api::start("a_repository_url_with_a_token_is_refused_without_echoing_it").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "tokenurl").await?;
    let env = environment_row(&api, &app, "pr", "preview").await?;
    for url in [
        "https://ghp_TOKEN123@github.com/acme/app.git",
        "https://user:ghp_TOKEN123@github.com/acme/app.git",
        "git://ghp_TOKEN123@example.com/app.git",
    ] {
        let (code, message) = refused(&api, &admin, env.id, url).await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{url}: {message}");
        assert!(
            message.starts_with("invalid repository: carries credentials"),
            "{url}: {message}"
        );
        assert!(!message.contains("ghp_TOKEN123"), "{url}: {message}");
    }
    Ok(())
}

/// Where the operator has not allowed local repositories, a path or file:// URL (a
/// repository on the builder's own host) is refused, naming the setting; `rhone dev`
/// allows them.
#[tokio::test]
async fn local_repositories_are_refused_unless_the_operator_allows_them() -> Result<()> {
    let api = Api::start_without_local_repositories("local_repositories_are_refused").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "localrepo").await?;
    let env = environment_row(&api, &app, "pr", "preview").await?;
    for repository in ["/srv/git/other-tenant", "file:///var/lib/rhone/repos/x"] {
        let (code, message) = refused(&api, &admin, env.id, repository).await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{repository}: {message}");
        assert!(
            message.starts_with("invalid repository:")
                && message.contains("RHONE_ALLOW_LOCAL_REPOSITORIES=1")
                && message.contains("rhone dev"),
            "{repository}: {message}"
        );
    }
    Ok(())
}
