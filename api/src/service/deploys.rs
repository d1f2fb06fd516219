//! Deploys: `deploy` records a Deployment and its operation (stage `queued`) with the audit
//! row in one transaction, then starts `DeployWorkflow`, which writes every later stage.

use chrono::Utc;
use rhone_core::{OperationId, OperationKind, Role};
use rhone_schema::{
    begin_write,
    entity::{deployment, environment, operation},
    new_id,
};
use rhone_workflows::{DeployInput, DeployWorkflow, activities::SourceSpec};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::json;
use temporalio_client::WorkflowStartOptions;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    record::{self, Mutation},
    service::{
        environments::{EnvironmentKind, start_failed},
        tenancy::app_for,
    },
};

/// The longest ref accepted.
const MAX_REF_LEN: usize = 255;

/// Checks a repository location (`rhone_core::repository::check`); local paths and
/// `file://` only where the operator allows them.
pub(crate) fn repository(text: &str, allow_local: bool) -> Result<String, ApiError> {
    rhone_core::repository::check(text, allow_local)
        .map_err(|reason| ApiError::invalid("repository", reason))
}

/// Checks a git ref (branch, tag or commit) by git's own naming rules, loosely.
pub(crate) fn git_ref(text: Option<&str>) -> Result<String, ApiError> {
    let field = "ref";
    let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok("HEAD".to_owned());
    };
    let bad = t.len() > MAX_REF_LEN
        || t.starts_with('-')
        || t.contains("..")
        || t.contains("@{")
        || t.ends_with('/')
        || t.ends_with(".lock")
        || t.chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(ApiError::invalid(
            field,
            format!("{t:?} is not a valid branch, tag or commit name"),
        ));
    }
    Ok(t.to_owned())
}

pub(crate) async fn deploy(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    repository_text: &str,
    ref_text: Option<&str>,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let not_found = || ApiError::NotFound {
        what: "environment",
        id: environment_id.to_string(),
    };
    let env = environment::Entity::find_by_id(environment_id)
        .one(db)
        .await?
        .ok_or_else(not_found)?;
    // Answers NOT_FOUND, not FORBIDDEN, where the caller has no access to the workspace.
    let app = app_for(db, actor, env.app_id, Role::Developer).await?;
    // A deploy builds and serves a preview; staging and production move only through a
    // promotion (approval, gates, the route's compare-and-swap, the drain of the old one).
    if env.kind != EnvironmentKind::Preview.as_str() {
        return Err(ApiError::invalid(
            "environmentId",
            format!(
                "environment {:?} is a {} environment: deploys go to preview environments only. Deploy to a preview, then move it here with `rhone promote` (the promote mutation)",
                env.name, env.kind
            ),
        ));
    }
    let source = SourceSpec {
        repository: repository(repository_text, state.local_repositories)?,
        git_ref: git_ref(ref_text)?,
    };
    let operation_id = new_id();
    let deployment_id = new_id();
    let m = Mutation {
        operation_id,
        kind: OperationKind::Deploy,
        action: "deployment.create",
        actor: actor.subject(),
        workspace_id: Some(app.workspace_id),
        target_type: "deployment",
        target_id: deployment_id.to_string(),
        detail: json!({
            "environment_id": environment_id,
            "app_id": app.id,
            "repository": source.repository,
            "ref": source.git_ref,
        }),
    };
    let span =
        tracing::info_span!("deploy", operation_id = %operation_id, deployment_id = %deployment_id);
    async {
        let txn = begin_write(db).await?;
        // The operation first: the deployment row refers to it.
        let op = record::requested(&txn, &m).await?;
        let now = Utc::now();
        deployment::ActiveModel {
            id: Set(deployment_id),
            workspace_id: Set(app.workspace_id),
            app_id: Set(app.id),
            environment_id: Set(environment_id),
            artifact_digest: Set(None),
            source: Set(json!({ "repository": source.repository, "ref": source.git_ref })),
            stage: Set(OperationKind::Deploy.initial_stage().to_owned()),
            operation_id: Set(Some(operation_id)),
            promoted_from: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;

        let input = DeployInput {
            operation_id: OperationId(operation_id),
            deployment_id,
            environment_id,
            source,
        };
        let options = WorkflowStartOptions::new(state.task_queue.clone(), m.workflow_id()).build();
        match state
            .temporal
            .start_workflow(DeployWorkflow::run, input, options)
            .await
        {
            Ok(_) => {
                tracing::info!(workflow_id = %op.workflow_id, "deploy started");
                Ok(op)
            }
            Err(err) => Err(start_failed(db, &m, err).await),
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_name_the_field() {
        assert!(repository("https://example.com/a.git", false).is_ok());
        assert!(repository("/srv/git/app", true).is_ok());
        let err = repository("https://TOKEN@host/r.git", true)
            .expect_err("a token in the URL")
            .to_string();
        assert!(
            err.starts_with("invalid repository: carries credentials"),
            "{err}"
        );
        assert!(!err.contains("TOKEN"), "{err}");
    }

    #[test]
    fn refs() {
        assert_eq!(git_ref(None).ok().as_deref(), Some("HEAD"));
        for ok in ["main", "v1.2.3", "feature/x", "0123abcd"] {
            assert!(git_ref(Some(ok)).is_ok(), "{ok}");
        }
        for bad in ["-x", "a..b", "a b", "x.lock", "a~1", "a^", "a:b", "x/"] {
            assert!(git_ref(Some(bad)).is_err(), "{bad}");
        }
    }
}
