//! The Deploy workflow end to end on a real Temporal dev server, a real worker, real git and
//! Python builds of `examples/counter`, and an in-test runner: the blocked paths and their
//! decisions (approve, retry, abort) and the failures, each with its stage sequence, its
//! reason in `operations.error`, and no half-written preview left behind. The happy path
//! through `rhone dev` is `cli/tests/dev.rs`; a build digest mismatch and archive path
//! traversal are covered at the activity and store level (`deploy_activities`, `store`).

#[allow(dead_code)]
mod deploy_support;
#[allow(dead_code)]
#[path = "deploy_workflow/harness.rs"]
mod harness;

use anyhow::{Context, Result};
use deploy_support::{change_counter_codec, replace_in};
use harness::{Harness, stages};
use rhone_core::OperationKind;
use rhone_schema::entity::audit_log;
use rhone_workflows::{Decision, DecisionKind};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;

const TO_VALIDATING: [&str; 4] = ["queued", "cloning", "building", "validating"];

fn after_validating(rest: &[&str]) -> Vec<String> {
    stages(&[&TO_VALIDATING[..], rest].concat())
}

/// The first deploy reaches preview_ready; a second that changes a persisted primitive's
/// codec waits for approval, then takes the preview host over at the next epoch.
#[tokio::test]
async fn a_cold_deploy_waits_for_approval_then_proceeds() -> Result<()> {
    let h = Harness::start("deploy_wf_cold").await?;
    let repo = h.repo("repo", |_| Ok(()))?;
    let first = h.deploy(&repo).await?;
    let seen = h.wait_status(first, "succeeded", 1).await?;
    assert_eq!(seen.op.current_stage, "preview_ready");
    assert_eq!(seen.stages, after_validating(&["preview_ready"]));
    let [owner] = h.route_owners().await?.try_into().expect("one route owner");
    assert_eq!((owner.deployment_id, owner.epoch), (first.id, 1));
    assert!(
        owner.route_key.starts_with("preview.web.shop.ws-"),
        "{}",
        owner.route_key
    );

    let repo = change_counter_codec(&repo)?;
    let second = h.deploy(&repo).await?;
    let seen = h.wait_status(second, "waiting", 1).await?;
    assert_eq!(seen.op.current_stage, "blocked");
    assert_eq!(seen.stages, after_validating(&["blocked"]));
    assert!(
        seen.error()
            .starts_with("cold deploy: the state schema changes the codec of counter.count")
            && seen.error().ends_with("approve to proceed"),
        "{}",
        seen.error()
    );
    h.assert_no_preview(second).await?;
    let [owner] = h.route_owners().await?.try_into().expect("one route owner");
    assert_eq!(
        (owner.deployment_id, owner.epoch),
        (first.id, 1),
        "unchanged while blocked"
    );

    h.decide(second, DecisionKind::Approve).await?;
    let seen = h.wait_status(second, "succeeded", 1).await?;
    assert_eq!(seen.op.current_stage, "preview_ready");
    assert_eq!(
        seen.stages,
        after_validating(&["blocked", "validating", "preview_ready"])
    );
    assert_eq!(seen.op.error, None, "the blocker's reason is cleared");
    let [after] = h.route_owners().await?.try_into().expect("one route owner");
    assert_eq!(after.route_key, owner.route_key);
    assert_eq!((after.deployment_id, after.epoch), (second.id, 2));
    assert_eq!(h.allocations(second).await?.len(), 1);
    h.record_history(second, "deploy_cold_approved").await?;
    h.stop().await
}

/// Approval cannot clear a missing secret: the deploy stays blocked until aborted.
#[tokio::test]
async fn a_missing_secret_is_not_approvable_and_abort_ends_it() -> Result<()> {
    let h = Harness::start("deploy_wf_secret").await?;
    let repo = h.repo("repo", |dir| {
        replace_in(
            &dir.join("rhone.toml"),
            "[wake]",
            "[secrets]\nrequired = [\"STRIPE_API_KEY\"]\n\n[wake]",
        )
    })?;
    let d = h.deploy(&repo).await?;
    let blocked = h.wait_status(d, "waiting", 1).await?;
    assert_eq!(blocked.op.current_stage, "blocked");
    assert_eq!(
        blocked.error(),
        "missing secret STRIPE_API_KEY on environment preview: set it, then retry"
    );

    // The approval is refused by the workflow's validator, saying what it waits for.
    let refusal = h.refused(d, DecisionKind::Approve).await?;
    assert!(
        refusal
            .ends_with("waits in stage blocked for retry or abort; approve is not accepted there"),
        "{refusal}"
    );
    let seen = h.stays(d, &blocked).await?;
    assert_eq!(seen.error(), blocked.error());

    h.decide(d, DecisionKind::Abort).await?;
    let seen = h.wait_status(d, "aborted", 1).await?;
    assert_eq!(seen.op.current_stage, "failed");
    assert_eq!(seen.stages, after_validating(&["blocked", "failed"]));
    assert_eq!(seen.error(), "aborted by temporal:oncall");
    h.assert_no_preview(d).await?;
    h.record_history(d, "deploy_blocked_aborted").await?;
    h.stop().await
}

/// `examples/counter` with a migration, which blocks its preview until aborted.
fn with_a_migration(h: &Harness) -> Result<deploy_support::Repo> {
    h.repo("repo", |dir| {
        std::fs::create_dir_all(dir.join("migrations"))?;
        std::fs::write(
            dir.join("migrations/0001_counts.sql"),
            "CREATE TABLE counts (n int);\n",
        )?;
        let toml = dir.join("rhone.toml");
        let command = "python3 build.py && cp -r migrations dist/migrations";
        replace_in(
            &toml,
            "command = \"python3 build.py\"",
            &format!("command = '{command}'"),
        )?;
        replace_in(
            &toml,
            "[wake]",
            "[migrations]\ndir = \"migrations\"\n\n[wake]",
        )
    })
}

/// A migration blocks the preview; a retry with nothing changed validates again and blocks
/// again.
#[tokio::test]
async fn a_migration_blocks_and_a_retry_blocks_again() -> Result<()> {
    let h = Harness::start("deploy_wf_migration").await?;
    let repo = with_a_migration(&h)?;
    let d = h.deploy(&repo).await?;
    let seen = h.wait_status(d, "waiting", 1).await?;
    assert_eq!(seen.op.current_stage, "blocked");
    assert!(
        seen.error().starts_with(
            "migration blocks preview: 1 migration file(s) (migrations/0001_counts.sql)"
        ),
        "{}",
        seen.error()
    );

    h.decide(d, DecisionKind::Retry).await?;
    let seen = h.wait_status(d, "waiting", 2).await?;
    assert_eq!(
        seen.stages,
        after_validating(&["blocked", "validating", "blocked"])
    );
    assert!(
        seen.error().starts_with("migration blocks preview"),
        "{}",
        seen.error()
    );
    h.assert_no_preview(d).await?;

    h.decide(d, DecisionKind::Abort).await?;
    let seen = h.wait_status(d, "aborted", 1).await?;
    assert_eq!(seen.op.current_stage, "failed");
    h.record_history(d, "deploy_blocked_retried_aborted")
        .await?;
    h.stop().await
}

/// Nothing a sender types into a decision sent straight to Temporal makes it pass for one
/// taken through the API: a retry naming a user, `audited` set, is recorded and audited as
/// `temporal:user:…`. One naming the API's audit row of it (written as the API writes it)
/// keeps its user, and that row, marked taken, is its only audit entry; the same row named
/// again by a later decision no longer counts.
#[tokio::test]
async fn a_decision_passes_for_the_apis_only_with_the_apis_audit_row() -> Result<()> {
    let h = Harness::start("deploy_wf_forged_decision").await?;
    let repo = with_a_migration(&h)?;
    let d = h.deploy(&repo).await?;
    h.wait_status(d, "waiting", 1).await?;
    let user = format!("user:{}", uuid::Uuid::new_v4());
    let retry = |reason: &str, decision_id, audited| Decision {
        actor: user.clone(),
        reason: Some(reason.into()),
        decision_id,
        audited,
    };

    let forged = retry("forged", None, true);
    let taken = h
        .send_decision(OperationKind::Deploy, d, DecisionKind::Retry, forged)
        .await?;
    assert_eq!(taken.actor, format!("temporal:{user}"));
    h.wait_status(d, "waiting", 2).await?;

    let row = uuid::Uuid::new_v4();
    audit_log::ActiveModel {
        id: Set(row),
        workspace_id: Set(None),
        actor: Set(user.clone()),
        action: Set("operation.retry".into()),
        target_type: Set("operation".into()),
        target_id: Set(d.operation_id.to_string()),
        operation_id: Set(Some(d.operation_id.0)),
        detail: Set(json!({ "decision": "retry", "reason": "through the api" })),
        created_at: Set(chrono::Utc::now()),
    }
    .insert(&h.fx.db)
    .await?;
    let through_api = retry("through the api", Some(row), false);
    h.send_decision(OperationKind::Deploy, d, DecisionKind::Retry, through_api)
        .await?;
    h.wait_status(d, "waiting", 3).await?;

    let replayed = retry("replayed", Some(row), false);
    h.send_decision(OperationKind::Deploy, d, DecisionKind::Retry, replayed)
        .await?;
    h.wait_status(d, "waiting", 4).await?;
    h.decide(d, DecisionKind::Abort).await?;
    h.wait_status(d, "aborted", 1).await?;

    let retried_by: Vec<_> = rhone_schema::ops::stages(&h.fx.db, d.operation_id.0)
        .await?
        .into_iter()
        .filter_map(|s| s.evidence["retried_by"].as_str().map(str::to_owned))
        .collect();
    let temporal = format!("temporal:{user}");
    assert_eq!(retried_by, [temporal.as_str(), &user, &temporal]);
    let mut audited: Vec<_> = audit_log::Entity::find()
        .filter(audit_log::Column::OperationId.eq(d.operation_id.0))
        .filter(audit_log::Column::Action.eq("operation.retry"))
        .all(&h.fx.db)
        .await?
        .into_iter()
        .map(|r| {
            let reason = r.detail["reason"].as_str().unwrap_or_default().to_owned();
            let taken = r.detail.get("taken_by").is_some();
            let stage = r.detail["stage"].as_str().unwrap_or_default().to_owned();
            (reason, r.actor, taken, stage)
        })
        .collect();
    audited.sort();
    assert_eq!(
        audited,
        [
            ("forged".into(), temporal.clone(), false, "blocked".into()),
            ("replayed".into(), temporal.clone(), false, "blocked".into()),
            (
                "through the api".into(),
                user.clone(),
                true,
                "blocked".into()
            ),
        ]
    );
    h.record_history(d, "deploy_decisions_audited_by_the_workflow")
        .await?;
    h.stop().await
}

/// A deploy's workflow cancelled from outside (the Temporal UI, CLI or a client) runs no
/// code of its own to end the operation: the fleet watch ends it `aborted`, with who
/// cancelled it and why, read from the cancel request in the history.
#[tokio::test]
async fn a_workflow_cancelled_in_temporal_aborts_its_operation_naming_who_and_why() -> Result<()> {
    use temporalio_client::{NamespacedClient, grpc::WorkflowService};
    use temporalio_common::protos::temporal::api::{
        common::v1::WorkflowExecution, workflowservice::v1::RequestCancelWorkflowExecutionRequest,
    };
    let h = Harness::start("deploy_wf_cancelled").await?;
    let repo = with_a_migration(&h)?;
    let d = h.deploy(&repo).await?;
    h.wait_status(d, "waiting", 1).await?;
    // As the Temporal UI sends it: naming its sender, with a reason.
    let request = RequestCancelWorkflowExecutionRequest {
        namespace: h.client.namespace(),
        workflow_execution: Some(WorkflowExecution {
            workflow_id: rhone_core::workflow_id(OperationKind::Deploy, d.operation_id),
            run_id: String::new(),
        }),
        identity: "oncall@temporal-ui".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        reason: "superseded by a hotfix".into(),
        ..Default::default()
    };
    WorkflowService::request_cancel_workflow_execution(
        &mut h.client.clone(),
        temporalio_client::tonic::Request::new(request),
    )
    .await?;
    let seen = h.wait_status(d, "aborted", 1).await?;
    assert_eq!(seen.op.current_stage, "failed");
    assert_eq!(
        seen.error(),
        "its workflow was cancelled in Temporal by \"oncall@temporal-ui\": superseded by a hotfix"
    );
    let last = rhone_schema::ops::stages(&h.fx.db, d.operation_id.0)
        .await?
        .pop()
        .context("a stage record")?;
    let evidence = &last.evidence;
    assert_eq!(evidence["workflow"], "cancelled", "{evidence}");
    assert_eq!(evidence["reason"], "superseded by a hotfix", "{evidence}");
    assert_eq!(evidence["identity"], "oncall@temporal-ui", "{evidence}");
    h.stop().await
}

/// The key this file's worker seals secrets under.
const SECRETS_KEY: &str = "5c1f2e3d4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f9";
/// The environment role's password, and another secret of the environment.
const PASSWORD: &str = "pw-4b1d0c-never-in-a-history";
const STRIPE_KEY: &str = "sk_live_7Hq2-never-in-a-history";

/// A deploy whose artifact carries a migration, to an environment that owns a database:
/// its Migration runs as an operation of its own before the preview starts, and the table
/// is in the preview's database. Neither workflow's history holds a secret's value: not
/// the role's password in `DATABASE_URL`, not another secret of the environment; nor does
/// the build log of a build that prints its whole environment (builds get no secret).
#[tokio::test]
async fn a_deploy_applies_its_migrations_to_the_previews_own_database() -> Result<()> {
    use rhone_schema::{entity::provider_binding, providers, secrets::Keyring};
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait};
    let keys = std::sync::Arc::new(Keyring::new(SECRETS_KEY, &[])?);
    let worker_keys = keys.clone();
    let h = Harness::start_configured("deploy_wf_migrate", move |c| {
        c.secrets = Some(worker_keys);
    })
    .await?;
    // The environment's own database and role on the test server, as a binding makes them
    // (provisioning itself is tested in rhone-api's `databases` tests).
    let admin = rhone_core::secret::Secret::new(rhone_testkit::postgres::admin_url().await?);
    let env = &h.fx.env;
    let (database, role) = (
        providers::database_name(env.id),
        providers::role_name(env.id, "read_write"),
    );
    let server = sea_orm::Database::connect(admin.expose()).await?;
    for sql in [
        format!(r#"CREATE ROLE "{role}" LOGIN PASSWORD '{PASSWORD}'"#),
        format!(r#"CREATE DATABASE "{database}" OWNER "{role}""#),
    ] {
        server.execute_unprepared(&sql).await?;
    }
    server.close().await?;
    let host = providers::admin_url_host(&admin).map_err(anyhow::Error::msg)?;
    providers::add(&h.fx.db, &keys, "main", &host, &admin, true, "test").await?;
    let url = providers::database_url(
        &admin,
        &role,
        &rhone_core::secret::Secret::new(PASSWORD),
        &database,
    )
    .map_err(anyhow::Error::msg)?;
    rhone_schema::secrets::set(&h.fx.db, &keys, env.id, "DATABASE_URL", &url, "test").await?;
    let stripe = rhone_core::secret::Secret::new(STRIPE_KEY);
    rhone_schema::secrets::set(&h.fx.db, &keys, env.id, "STRIPE_KEY", &stripe, "test").await?;
    provider_binding::ActiveModel {
        id: Set(rhone_schema::new_id()),
        environment_id: Set(env.id),
        provider: Set("main".into()),
        resource: Set(database.clone()),
        status: Set(provider_binding::STATUS_READY.into()),
        created_at: Set(chrono::Utc::now()),
        role: Set(role),
        access: Set(provider_binding::ACCESS_READ_WRITE.into()),
        error: Set(None),
    }
    .insert(&h.fx.db)
    .await?;

    let repo = h.repo("repo", |dir| {
        std::fs::create_dir_all(dir.join("migrations"))?;
        std::fs::write(
            dir.join("migrations/0001_counts.sql"),
            "CREATE TABLE counts (n int);\nINSERT INTO counts VALUES (7);\n",
        )?;
        let toml = dir.join("rhone.toml");
        let command = "env && python3 build.py && cp -r migrations dist/migrations";
        replace_in(
            &toml,
            "command = \"python3 build.py\"",
            &format!("command = '{command}'"),
        )?;
        replace_in(
            &toml,
            "[wake]",
            "[migrations]\ndir = \"migrations\"\n\n[wake]",
        )
    })?;
    let d = h.deploy(&repo).await?;
    let seen = h.wait_status(d, "succeeded", 1).await?;
    assert_eq!(seen.stages, after_validating(&["preview_ready"]));
    let ready = rhone_schema::ops::stages(&h.fx.db, seen.op.id).await?;
    let migration = &ready.last().context("preview_ready")?.evidence["migration"];
    assert_eq!(migration["database"], database.as_str());
    assert_eq!(migration["applied"][0], "migrations/0001_counts.sql");
    let id: uuid::Uuid = migration["operation_id"].as_str().context("id")?.parse()?;
    let op = rhone_schema::entity::operation::Entity::find_by_id(id)
        .one(&h.fx.db)
        .await?
        .context("the migration's operation")?;
    assert_eq!(
        (op.kind.as_str(), op.status.as_str()),
        ("migration", "succeeded")
    );
    assert_eq!(
        op.actor, seen.op.actor,
        "it acts for the deploy's requester"
    );
    let names: Vec<String> = rhone_schema::ops::stages(&h.fx.db, id)
        .await?
        .into_iter()
        .map(|r| r.stage)
        .collect();
    assert_eq!(
        names,
        ["classified", "dry_run", "locked", "applying", "verified"]
    );
    let app_db = sea_orm::Database::connect(url.expose()).await?;
    let row = app_db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT n FROM counts",
        ))
        .await?
        .context("a row")?;
    assert_eq!(row.try_get::<i32>("", "n")?, 7);
    app_db.close().await?;

    let build_log: String = rhone_schema::entity::build_log::Entity::find()
        .all(&h.fx.db)
        .await?
        .into_iter()
        .filter(|c| c.operation_id == seen.op.id)
        .map(|c| c.chunk)
        .collect();
    assert!(
        build_log.contains("PATH="),
        "the build printed its environment: {build_log}"
    );
    for value in [PASSWORD, STRIPE_KEY, url.expose()] {
        assert!(
            !build_log.contains(value),
            "the build log holds a secret value"
        );
    }
    for (kind, op) in [
        (rhone_core::OperationKind::Deploy, seen.op.id),
        (rhone_core::OperationKind::Migration, id),
    ] {
        let history = h
            .client
            .get_workflow_handle::<temporalio_common::UntypedWorkflow>(rhone_core::workflow_id(
                kind,
                rhone_core::OperationId(op),
            ))
            .fetch_history(Default::default())
            .to_json()
            .await?;
        let history = rhone_testkit::temporal::history_text(&history)?;
        assert!(
            history.contains(&database),
            "the {kind} history names the database"
        );
        for value in [PASSWORD, STRIPE_KEY, url.expose()] {
            assert!(
                !history.contains(value),
                "the {kind} history holds a secret value"
            );
        }
    }
    h.stop().await
}

/// A fingerprinted file whose content no longer matches its name fails validation.
#[tokio::test]
async fn stale_generated_artifacts_fail_the_deploy() -> Result<()> {
    let h = Harness::start("deploy_wf_stale").await?;
    let repo = h.repo("repo", |dir| {
        let command =
            "python3 build.py && for f in dist/public/app.*.css; do printf tampered >> $f; done";
        replace_in(
            &dir.join("rhone.toml"),
            "command = \"python3 build.py\"",
            &format!("command = '{command}'"),
        )
    })?;
    let d = h.deploy(&repo).await?;
    let seen = h.wait_status(d, "failed", 1).await?;
    assert_eq!(seen.op.current_stage, "failed");
    assert_eq!(seen.stages, after_validating(&["failed"]));
    assert!(
        seen.error()
            .starts_with("stale generated artifact public/app.css: manifest says app."),
        "{}",
        seen.error()
    );
    h.assert_no_preview(d).await?;
    h.record_history(d, "deploy_failed_stale_artifacts").await?;
    h.stop().await
}

/// A Deploy workflow started around the API (the Temporal UI, a script) on a production
/// environment builds, but its preview step refuses to move the route: staging and
/// production move only through a promotion.
#[tokio::test]
async fn a_deploy_started_around_the_api_never_moves_a_production_route() -> Result<()> {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let h = Harness::start("deploy_wf_production").await?;
    let mut env: rhone_schema::entity::environment::ActiveModel = h.fx.env.clone().into();
    env.kind = Set("production".into());
    env.update(&h.fx.db).await?;
    let repo = h.repo("prod", |_| Ok(()))?;
    let d = h.deploy(&repo).await?;
    let seen = h.wait_status(d, "failed", 1).await?;
    assert_eq!(seen.stages, after_validating(&["failed"]));
    assert!(
        seen.error().contains("is a production environment")
            && seen.error().contains("rhone promote"),
        "{}",
        seen.error()
    );
    h.assert_no_preview(d).await?;
    h.stop().await
}

/// A failing build command and a malformed rhone.toml fail the deploy in `building`, with
/// the exit status and the manifest's line, column and field.
#[tokio::test]
async fn build_failures_fail_the_deploy_with_the_reason() -> Result<()> {
    let h = Harness::start("deploy_wf_build").await?;
    let failing = h.repo("failing", |dir| {
        replace_in(
            &dir.join("rhone.toml"),
            "command = \"python3 build.py\"",
            "command = 'echo boom: syntax error >&2; exit 3'",
        )
    })?;
    let malformed = h.repo("malformed", |dir| {
        replace_in(&dir.join("rhone.toml"), "port = 8080", "port = \"eighty\"")
    })?;
    let line = std::fs::read_to_string(malformed.path.join("rhone.toml"))?
        .lines()
        .position(|l| l.starts_with("port = "))
        .context("port line")?
        + 1;
    let failing = h.deploy(&failing).await?;
    let malformed = h.deploy(&malformed).await?;
    let to_failed = stages(&["queued", "cloning", "building", "failed"]);

    let seen = h.wait_status(failing, "failed", 1).await?;
    assert_eq!(seen.stages, to_failed);
    assert!(
        seen.error()
            .starts_with("build command exited with status 3; last lines of the build log:\n")
            && seen.error().ends_with("boom: syntax error"),
        "{}",
        seen.error()
    );

    let seen = h.wait_status(malformed, "failed", 1).await?;
    assert_eq!(seen.stages, to_failed);
    assert_eq!(
        seen.error(),
        format!(
            "rhone.toml:{line}:8: run.port: expected an integer between 1 and 65535, found \"eighty\""
        )
    );
    for d in [failing, malformed] {
        h.assert_no_preview(d).await?;
    }
    h.stop().await
}

/// The same deploy with the S3 artifact store (a real S3 API server) shared by the worker and
/// the runner: the artifact is stored in the bucket by digest and the preview runs it.
#[tokio::test]
async fn deploy_with_the_s3_artifact_store_reaches_preview() -> Result<()> {
    let h = Harness::start_s3("deploy_wf_s3").await?;
    let repo = h.repo("repo", |_| Ok(()))?;
    let d = h.deploy(&repo).await?;
    let seen = h.wait_status(d, "succeeded", 1).await?;
    assert_eq!(seen.stages, after_validating(&["preview_ready"]));
    let [owner] = h.route_owners().await?.try_into().expect("one route owner");
    assert_eq!(owner.deployment_id, d.id);
    let digest: rhone_store::Digest = owner.artifact_digest.parse()?;
    assert!(
        h.fx.config.store.exists(&digest).await?,
        "the artifact is in the bucket"
    );
    assert!(matches!(
        h.fx.config.store,
        rhone_store::ArtifactStore::S3(_)
    ));
    h.stop().await
}
