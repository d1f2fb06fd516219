//! `promote`, `rollback` and `routeOwner` against a real database (SQLite, and PostgreSQL for
//! the writes) and the real Temporal dev server. No worker runs the promotion here: these
//! tests check what the API records and the workflow input it starts with.

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use rhone_schema::{
    entity::{app, deployment, environment, project, workspace},
    fixtures::{self, Tenancy},
    new_id,
    ops::{self, NewOperation},
    routes::{OwnerWrite, write_owner},
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use temporalio_common::{
    UntypedWorkflow, protos::temporal::api::history::v1::history_event::Attributes,
};
use uuid::Uuid;

use crate::harness::{Api, Caller, OPERATION, tenancy};

const PROMOTE: &str = "mutation($d: UUID!, $e: UUID!, $n: Int) {
    promote(deploymentId: $d, environmentId: $e, instances: $n) {
        id kind status currentStage targetType targetId workflowId } }";
const ROLLBACK: &str = "mutation($e: UUID!, $to: UUID) {
    rollback(environmentId: $e, to: $to) {
        id kind status currentStage targetType targetId workflowId } }";
const ROUTE_OWNER: &str = "query($h: String!) { routeOwner(host: $h) {
    routeKey epoch artifactDigest operationId updatedAt
    deployment { id environmentId artifactDigest promotedFrom }
    environment { id name kind } } }";

/// A workspace made through the API (`<prefix>-ws/-proj/-app`, owned by `caller`) and its
/// app's environments, made directly in the DB as the environment workflow would.
struct World {
    ws: Uuid,
    app: app::Model,
    base: Tenancy,
}

impl World {
    async fn new(api: &Api, caller: &Caller, prefix: &str) -> Result<World> {
        let (ws, project, app) = tenancy(caller, prefix).await?;
        let db = &api.db;
        let workspace = workspace::Entity::find_by_id(ws.parse::<Uuid>()?)
            .one(db)
            .await?
            .context("workspace")?;
        let project = project::Entity::find_by_id(project.parse::<Uuid>()?)
            .one(db)
            .await?
            .context("project")?;
        let app = app::Entity::find_by_id(app.parse::<Uuid>()?)
            .one(db)
            .await?
            .context("app")?;
        let base = Tenancy {
            workspace,
            project,
            app: app.clone(),
            environment: env_row(api, &app, "preview", "preview").await?,
        };
        Ok(World {
            ws: base.workspace.id,
            app,
            base,
        })
    }

    /// The preview environment's tenancy for the fixtures.
    fn preview(&self) -> &Tenancy {
        &self.base
    }

    /// Another environment of the app.
    async fn env(&self, api: &Api, name: &str, kind: &str) -> Result<Tenancy> {
        Ok(Tenancy {
            environment: env_row(api, &self.app, name, kind).await?,
            ..self.base.clone()
        })
    }
}

async fn env_row(
    api: &Api,
    app: &app::Model,
    name: &str,
    kind: &str,
) -> Result<environment::Model> {
    Ok(environment::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(app.workspace_id),
        app_id: Set(app.id),
        name: Set(name.to_owned()),
        kind: Set(kind.to_owned()),
        requires_approval: Set(kind == "production"),
        self_approval: Set(kind != "production"),
        scale_to_zero: Set(false),
        wake_budget_ms: Set(environment::DEFAULT_WAKE_BUDGET_MS),
        sleep_after_ms: Set(environment::DEFAULT_SLEEP_AFTER_MS),
        wake_state: Set(environment::WAKE_STATE_HOT.into()),
        created_at: Set(Utc::now()),
    }
    .insert(&api.db)
    .await?)
}

/// A deployment of a new artifact `sha256:…n` in `t`'s environment, at `stage`.
async fn deployment(api: &Api, t: &Tenancy, n: u64, stage: &str) -> Result<deployment::Model> {
    let digest = fixtures::digest(n);
    if rhone_schema::entity::artifact::Entity::find_by_id(digest.clone())
        .one(&api.db)
        .await?
        .is_none()
    {
        fixtures::artifact(&api.db, &digest).await?;
    }
    Ok(fixtures::deployment(&api.db, t, &digest, stage).await?)
}

/// Points the environment's route at `d`, as a promotion or a preview would; returns the
/// new epoch.
async fn own(api: &Api, route_key: &str, d: &deployment::Model) -> Result<i64> {
    let (cell, _) = fixtures::local_cell(&api.db).await?;
    let owner = write_owner(
        &api.db,
        OwnerWrite {
            instances: 1,
            route_key: route_key.to_owned(),
            environment_id: d.environment_id,
            deployment_id: d.id,
            artifact_digest: d.artifact_digest.clone().context("digest")?,
            region_id: cell.region_id,
            cell_id: cell.id,
            operation_id: None,
            expected_epoch: None,
        },
    )
    .await?;
    Ok(owner.epoch)
}

/// The input the workflow `workflow_id` was started with.
async fn started_input(api: &Api, workflow_id: &str) -> Result<Value> {
    let history = api
        .temporal
        .get_workflow_handle::<UntypedWorkflow>(workflow_id.to_owned())
        .fetch_history(Default::default())
        .into_events()
        .await?;
    for event in history {
        if let Some(Attributes::WorkflowExecutionStartedEventAttributes(a)) = event.attributes {
            let kind = a.workflow_type.map(|t| t.name).unwrap_or_default();
            ensure!(kind == "promotion", "workflow type {kind}");
            let payload = a
                .input
                .and_then(|p| p.payloads.into_iter().next())
                .context("a start input")?;
            return Ok(serde_json::from_slice(&payload.data)?);
        }
    }
    anyhow::bail!("{workflow_id} has no start event")
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

#[tokio::test]
async fn promote_refuses_what_is_not_a_validated_preview() -> Result<()> {
    let api = Api::start("promote_refuses_what_is_not_a_validated_preview").await?;
    let admin = api.admin().await?;
    let w = World::new(&api, &admin, "acme").await?;
    let prod = w.env(&api, "prod", "production").await?;
    let pr = w.env(&api, "pr-7", "preview").await?;
    let ready = deployment(&api, w.preview(), 1, "preview_ready").await?;
    let building = deployment(&api, w.preview(), 2, "building").await?;

    // A deploy whose operation failed: the deployment row never reached preview_ready.
    let failed = deployment(&api, w.preview(), 3, "queued").await?;
    let op_id = new_id();
    ops::create_operation(
        &api.db,
        NewOperation {
            id: op_id,
            workspace_id: Some(w.ws),
            kind: "deploy",
            actor: "system",
            target_type: "deployment",
            target_id: &s(failed.id),
            initial_stage: "queued",
            status: "running",
            workflow_id: &format!("deploy-{op_id}"),
        },
    )
    .await?;
    ops::set_status(
        &api.db,
        op_id,
        "failed",
        Some("the build exited with status 2".into()),
    )
    .await?;
    let mut row: deployment::ActiveModel = failed.clone().into();
    row.operation_id = Set(Some(op_id));
    row.update(&api.db).await?;

    let staging = w.env(&api, "staging", "staging").await?;
    let mut promoted: deployment::ActiveModel = deployment(&api, &prod, 1, "healthy").await?.into();
    promoted.promoted_from = Set(Some(ready.id));
    let promoted = promoted.update(&api.db).await?;

    let other_app = {
        let a = admin
            .data(
                "mutation($p: UUID!) { createApp(projectId: $p, name: \"api\") { app { id } } }",
                json!({ "p": w.base.project.id }),
            )
            .await?["createApp"]["app"]["id"]
            .as_str()
            .context("app id")?
            .parse::<Uuid>()?;
        let app = app::Entity::find_by_id(a)
            .one(&api.db)
            .await?
            .context("app")?;
        let env = env_row(&api, &app, "preview", "preview").await?;
        let t = Tenancy {
            app,
            environment: env,
            ..w.base.clone()
        };
        deployment(&api, &t, 4, "preview_ready").await?
    };
    let foreign = {
        let t = fixtures::tenancy(&api.db, "foreign", "preview").await?;
        deployment(&api, &t, 5, "preview_ready").await?
    };
    // A viewer of the workspace may look, not promote.
    admin
        .data(
            "mutation($w: UUID!) { grantRole(workspaceId: $w, email: \"viewer@example.com\", role: VIEWER) { grant { id } } }",
            json!({ "w": w.ws }),
        )
        .await?;
    let viewer = api.user("viewer@example.com").await?;

    let before = api.counts().await?;
    let prod_id = s(prod.environment.id);
    let cases: [(String, String, i32, &str, &str); 9] = [
        (
            s(ready.id),
            prod_id.clone(),
            0,
            "INVALID_ARGUMENT",
            "invalid instances: must be from 1 to 20, got 0",
        ),
        (
            s(ready.id),
            prod_id.clone(),
            21,
            "INVALID_ARGUMENT",
            "invalid instances: must be from 1 to 20, got 21",
        ),
        (
            s(building.id),
            prod_id.clone(),
            1,
            "INVALID_ARGUMENT",
            "is not a validated preview (it is at stage building)",
        ),
        (
            s(failed.id),
            prod_id.clone(),
            1,
            "INVALID_ARGUMENT",
            "is failed at queued: the build exited with status 2",
        ),
        (
            s(promoted.id),
            s(staging.environment.id),
            1,
            "INVALID_ARGUMENT",
            &format!("is itself a promotion of deployment {}", ready.id),
        ),
        (
            s(ready.id),
            s(w.preview().environment.id),
            1,
            "INVALID_ARGUMENT",
            "is already in environment \"preview\"",
        ),
        (
            s(ready.id),
            s(pr.environment.id),
            1,
            "INVALID_ARGUMENT",
            "\"pr-7\" is a preview environment",
        ),
        (
            s(other_app.id),
            prod_id.clone(),
            1,
            "INVALID_ARGUMENT",
            "belongs to another app",
        ),
        (
            s(foreign.id),
            prod_id.clone(),
            1,
            "NOT_FOUND",
            &format!("deployment {} not found", foreign.id),
        ),
    ];
    for (d, e, n, code, expected) in &cases {
        let (got, message) = admin
            .error(PROMOTE, json!({ "d": d, "e": e, "n": n }))
            .await?;
        assert_eq!(&got, code, "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    let (code, _) = viewer
        .error(PROMOTE, json!({ "d": ready.id, "e": prod_id }))
        .await?;
    assert_eq!(code, "FORBIDDEN");
    let after = api.counts().await?;
    assert_eq!(after, before, "refused promotions write nothing");
    Ok(())
}

async fn promote_records_the_deployment_and_starts_the_workflow(api: Api) -> Result<()> {
    let admin = api.admin().await?;
    let w = World::new(&api, &admin, "acme").await?;
    let prod = w.env(&api, "prod", "production").await?;
    let ready = deployment(&api, w.preview(), 1, "preview_ready").await?;
    // The production route moved twice already.
    let key = "acme-app.acme-proj.acme-ws.rhone.localhost";
    let earlier = deployment(&api, &prod, 2, "healthy").await?;
    own(&api, key, &earlier).await?;
    let earlier2 = deployment(&api, &prod, 3, "healthy").await?;
    assert_eq!(own(&api, key, &earlier2).await?, 2);

    let op = admin
        .data(
            PROMOTE,
            json!({ "d": ready.id, "e": prod.environment.id, "n": 3 }),
        )
        .await?["promote"]
        .clone();
    let id = op["id"].as_str().context("operation id")?;
    assert_eq!(
        (
            &op["kind"],
            &op["status"],
            &op["currentStage"],
            &op["targetType"]
        ),
        (
            &json!("PROMOTION"),
            &json!("RUNNING"),
            &json!("requested"),
            &json!("deployment")
        ),
        "{op}"
    );
    let workflow_id = format!("promotion-{id}");
    assert_eq!(op["workflowId"], workflow_id);

    let new_id: Uuid = op["targetId"].as_str().context("target")?.parse()?;
    let row = deployment::Entity::find_by_id(new_id)
        .one(&api.db)
        .await?
        .context("the production deployment")?;
    assert_eq!(row.environment_id, prod.environment.id);
    assert_eq!(row.artifact_digest, ready.artifact_digest);
    assert_eq!(row.source, ready.source);
    assert_eq!(row.promoted_from, Some(ready.id));
    assert_eq!(row.stage, "requested");
    assert_eq!(row.operation_id, Some(id.parse()?));

    let input = started_input(&api, &workflow_id).await?;
    assert_eq!(
        input,
        json!({
            "operation_id": id,
            "kind": "promotion",
            "environment_id": prod.environment.id,
            "deployment_id": new_id,
            "source_deployment_id": ready.id,
            "expected_epoch": 2,
            "instances": 3,
        })
    );

    let shown = admin.data(OPERATION, json!({ "id": id })).await?["operation"].clone();
    assert_eq!(shown["kind"], "PROMOTION");
    assert_eq!(shown["stages"][0]["stage"], "requested");
    let audit = admin
        .data("query($w: UUID!) { auditLog(workspaceId: $w, first: 1) { nodes { action targetId operationId detail } } }", json!({ "w": w.ws }))
        .await?;
    let entry = &audit["auditLog"]["nodes"][0];
    assert_eq!(entry["action"], "deployment.promote");
    assert_eq!(entry["targetId"], s(new_id));
    assert_eq!(entry["operationId"], id);
    assert_eq!(entry["detail"]["promoted_from"], s(ready.id));

    // A second promotion is not refused here: both start from epoch 2, and the route's
    // compare-and-swap lets one win. One allocation unless told otherwise.
    let second = admin
        .data(PROMOTE, json!({ "d": ready.id, "e": prod.environment.id }))
        .await?["promote"]
        .clone();
    let second_id = second["id"].as_str().context("operation id")?;
    let input = started_input(&api, &format!("promotion-{second_id}")).await?;
    assert_eq!(
        (&input["expected_epoch"], &input["instances"]),
        (&json!(2), &json!(1))
    );
    assert_ne!(
        second["targetId"], op["targetId"],
        "each promotion has its deployment"
    );
    Ok(())
}

#[tokio::test]
async fn promote_records_the_deployment_and_starts_the_workflow_on_sqlite() -> Result<()> {
    let api =
        Api::start("promote_records_the_deployment_and_starts_the_workflow_on_sqlite").await?;
    promote_records_the_deployment_and_starts_the_workflow(api).await
}

#[tokio::test]
async fn promote_records_the_deployment_and_starts_the_workflow_on_postgres() -> Result<()> {
    let api =
        Api::start_postgres("promote_records_the_deployment_and_starts_the_workflow_on_postgres")
            .await?;
    promote_records_the_deployment_and_starts_the_workflow(api).await
}

async fn rollback_targets_and_refusals(api: Api) -> Result<()> {
    let admin = api.admin().await?;
    let w = World::new(&api, &admin, "acme").await?;
    let prod = w.env(&api, "prod", "production").await?;
    let staging = w.env(&api, "staging", "staging").await?;
    let canary = w.env(&api, "canary", "staging").await?;
    let key = "acme-app.acme-proj.acme-ws.rhone.localhost";
    let d1 = deployment(&api, &prod, 1, "healthy").await?;
    let d2 = deployment(&api, &prod, 2, "healthy").await?;
    let d3 = deployment(&api, &prod, 3, "healthy").await?;
    let never = deployment(&api, &prod, 4, "healthy").await?;
    let preview = deployment(&api, w.preview(), 1, "preview_ready").await?;
    for d in [&d1, &d2, &d1, &d2, &d3] {
        own(&api, key, d).await?;
    }
    let only = deployment(&api, &canary, 5, "healthy").await?;
    own(
        &api,
        "canary.acme-app.acme-proj.acme-ws.rhone.localhost",
        &only,
    )
    .await?;

    let before = api.counts().await?;
    let env = prod.environment.id;
    let cases: [(Uuid, Option<Uuid>, &str); 5] = [
        (
            env,
            Some(d3.id),
            "already owns the route of environment \"prod\" (epoch 5)",
        ),
        (
            env,
            Some(never.id),
            &format!("deployment {} never owned the route", never.id),
        ),
        (
            env,
            Some(preview.id),
            "never owned the route of environment \"prod\"",
        ),
        (
            staging.environment.id,
            None,
            "environment \"staging\" has no route owner",
        ),
        (
            canary.environment.id,
            None,
            "there is nothing to roll back to",
        ),
    ];
    for (e, to, expected) in cases {
        let (code, message) = admin.error(ROLLBACK, json!({ "e": e, "to": to })).await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    assert_eq!(
        api.counts().await?,
        before,
        "refused rollbacks write nothing"
    );

    // By default: the last owner before the current one.
    let op = admin.data(ROLLBACK, json!({ "e": env })).await?["rollback"].clone();
    let id = op["id"].as_str().context("operation id")?;
    assert_eq!(
        (
            &op["kind"],
            &op["status"],
            &op["currentStage"],
            &op["targetId"]
        ),
        (
            &json!("ROLLBACK"),
            &json!("RUNNING"),
            &json!("requested"),
            &json!(s(d2.id))
        ),
        "{op}"
    );
    assert_eq!(op["workflowId"], format!("rollback-{id}"));
    let input = started_input(&api, &format!("rollback-{id}")).await?;
    assert_eq!(
        input,
        json!({
            "operation_id": id,
            "kind": "rollback",
            "environment_id": env,
            "deployment_id": d2.id,
            "source_deployment_id": null,
            "expected_epoch": 5,
            "instances": 1,
        })
    );

    // Any earlier owner by name.
    let op = admin
        .data(ROLLBACK, json!({ "e": env, "to": d1.id }))
        .await?["rollback"]
        .clone();
    assert_eq!(op["targetId"], s(d1.id));
    let after = api.counts().await?;
    assert_eq!(
        after["deployments"], before["deployments"],
        "a rollback makes no deployment"
    );
    assert_eq!(
        after["operations"],
        json!(before["operations"].as_u64().unwrap_or(0) + 2)
    );
    Ok(())
}

#[tokio::test]
async fn rollback_targets_and_refusals_on_sqlite() -> Result<()> {
    rollback_targets_and_refusals(Api::start("rollback_targets_and_refusals_on_sqlite").await?)
        .await
}

#[tokio::test]
async fn rollback_targets_and_refusals_on_postgres() -> Result<()> {
    rollback_targets_and_refusals(
        Api::start_postgres("rollback_targets_and_refusals_on_postgres").await?,
    )
    .await
}

#[tokio::test]
async fn route_owner_is_visible_to_members_of_its_workspace_only() -> Result<()> {
    let api = Api::start("route_owner_is_visible_to_members_of_its_workspace_only").await?;
    let admin = api.admin().await?;
    let w = World::new(&api, &admin, "acme").await?;
    let prod = w.env(&api, "prod", "production").await?;
    let d = deployment(&api, &prod, 1, "healthy").await?;
    let key = "acme-app.acme-proj.acme-ws.rhone.localhost";
    own(&api, key, &d).await?;
    assert_eq!(
        own(&api, key, &deployment(&api, &prod, 2, "healthy").await?).await?,
        2
    );
    own(&api, key, &d).await?;

    let owner = admin
        .data(
            ROUTE_OWNER,
            json!({ "h": "ACME-app.acme-proj.acme-ws.rhone.localhost:8081" }),
        )
        .await?["routeOwner"]
        .clone();
    assert_eq!(owner["routeKey"], key);
    assert_eq!(owner["epoch"], 3);
    assert_eq!(owner["artifactDigest"], fixtures::digest(1));
    assert_eq!(owner["deployment"]["id"], s(d.id));
    assert_eq!(owner["environment"]["name"], "prod");
    assert_eq!(owner["environment"]["kind"], "PRODUCTION");
    assert_eq!(owner["operationId"], Value::Null);

    let envs = admin
        .data(
            "query($a: UUID!) { environments(appId: $a) { name routeOwner { routeKey epoch deployment { id } } } }",
            json!({ "a": w.app.id }),
        )
        .await?;
    let by_name = |name: &str| {
        envs["environments"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .map(|e| e["routeOwner"].clone())
    };
    assert_eq!(
        by_name("prod"),
        Some(json!({ "routeKey": key, "epoch": 3, "deployment": { "id": s(d.id) } }))
    );
    assert_eq!(by_name("preview"), Some(Value::Null));

    // A member of another workspace and a user with no grant see nothing, as for a host
    // nobody owns.
    let outsider = api.user("outsider@example.com").await?;
    let other = api.user("other@example.com").await?;
    other
        .data(
            "mutation { createWorkspace(name: \"other\") { workspace { id } } }",
            json!({}),
        )
        .await?;
    for (caller, host) in [
        (&outsider, key),
        (&other, key),
        (&admin, "nobody.example.com"),
    ] {
        let got = caller.data(ROUTE_OWNER, json!({ "h": host })).await?;
        assert_eq!(got["routeOwner"], Value::Null, "{host}");
    }
    let (code, message) = admin.error(ROUTE_OWNER, json!({ "h": "web/shop" })).await?;
    assert_eq!(code, "INVALID_ARGUMENT", "{message}");
    Ok(())
}

/// In production (by default) the member who requested a promotion cannot approve it:
/// another developer does. The refusal says who may and how an admin allows it.
#[tokio::test]
async fn a_requester_cannot_approve_their_own_production_promotion() -> Result<()> {
    let api = Api::start("a_requester_cannot_approve_their_own_production_promotion").await?;
    let admin = api.admin().await?;
    let w = World::new(&api, &admin, "acme").await?;
    let prod = w.env(&api, "prod", "production").await?;
    let ready = deployment(&api, w.preview(), 1, "preview_ready").await?;
    let op = admin
        .data(
            PROMOTE,
            json!({ "d": ready.id, "e": prod.environment.id, "n": 1 }),
        )
        .await?["promote"]
        .clone();
    let id: Uuid = op["id"].as_str().context("operation id")?.parse()?;
    // As the promotion parks at its approval gate (no worker runs here).
    rhone_schema::ops::set_status(&api.db, id, "waiting", None).await?;
    const APPROVE: &str =
        "mutation($o: UUID!) { decideOperation(id: $o, decision: APPROVE) { id } }";
    let before = api.counts().await?;
    let (code, message) = admin.error(APPROVE, json!({ "o": id })).await?;
    assert_eq!(code, "FORBIDDEN", "{message}");
    assert!(
        message.contains("you requested operation")
            && message.contains("another member")
            && message.contains("--self-approval true"),
        "{message}"
    );
    assert_eq!(
        api.counts().await?,
        before,
        "a refused approval writes nothing"
    );

    let dev = crate::harness::member(
        &api,
        &admin,
        &w.ws.to_string(),
        "dev@example.com",
        "DEVELOPER",
    )
    .await?;
    // Another developer passes the policy: the approval goes to the workflow, which no
    // worker answers here.
    let (code, message) = dev.error(APPROVE, json!({ "o": id })).await?;
    assert_eq!(code, "UNAVAILABLE", "{message}");
    assert!(message.contains("the Rhone worker"), "{message}");
    Ok(())
}
