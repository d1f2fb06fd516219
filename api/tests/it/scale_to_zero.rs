//! Scale to zero through the API: `setScaleToZero` (its rules, what it writes, the watch it
//! starts for a hot route), `Environment.wakeState`, `Operation.auditEntries`, and decisions
//! sent to the one run an operation stored as `<workflow id>/<run id>` names. Against the
//! real Temporal dev server; no worker runs the Wake here.

use anyhow::{Context, Result};
use chrono::Utc;
use rhone_schema::{
    entity::{audit_log, environment},
    fixtures::{self, Tenancy},
    new_id,
    ops::{self, NewOperation},
    routes::{OwnerWrite, write_owner},
};
use rhone_workflows::{WakeInput, WakeTrigger, WakeWorkflow};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use temporalio_client::{
    NamespacedClient, WorkflowExecutionInfo, WorkflowIdReusePolicy, WorkflowStartOptions,
    WorkflowTerminateOptions,
};
use temporalio_common::protos::temporal::api::history::v1::{
    HistoryEvent, history_event::Attributes,
};
use uuid::Uuid;

use crate::harness::{Api, environment_row, member, tenancy};

const SET: &str = "mutation($e: UUID!, $on: Boolean!, $s: Int, $w: Int) {
    setScaleToZero(environmentId: $e, enabled: $on, sleepAfterMs: $s, wakeBudgetMs: $w) {
        environment { id scaleToZero sleepAfterMs wakeBudgetMs wakeState }
        operation { id kind status currentStage targetType targetId
            auditEntries { action actor operationId detail } }
        watchWorkflowId } }";
const ENVS: &str = "query($a: UUID!) { environments(appId: $a) { name scaleToZero sleepAfterMs wakeBudgetMs wakeState } }";

async fn set_scale_to_zero(api: Api) -> Result<()> {
    let admin = api.admin().await?;
    let (ws, _, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "staging", "staging").await?;
    let e = env.id.to_string();
    let viewer = member(&api, &admin, &ws, "viewer@example.com", "VIEWER").await?;

    // Out-of-range values name the argument and its range; nothing is written.
    let before = api.counts().await?;
    let cases: [(Option<i32>, Option<i32>, &str); 4] = [
        (
            Some(999),
            None,
            "invalid sleepAfterMs: must be between 1000 and 86400000 milliseconds, got 999",
        ),
        (
            Some(86_400_001),
            None,
            "invalid sleepAfterMs: must be between 1000 and 86400000 milliseconds, got 86400001",
        ),
        (
            None,
            Some(99),
            "invalid wakeBudgetMs: must be between 100 and 300000 milliseconds, got 99",
        ),
        (
            Some(60_000),
            Some(300_001),
            "invalid wakeBudgetMs: must be between 100 and 300000 milliseconds, got 300001",
        ),
    ];
    for (s, w, expected) in cases {
        let (code, message) = admin
            .error(SET, json!({ "e": e, "on": true, "s": s, "w": w }))
            .await?;
        assert_eq!(code, "INVALID_ARGUMENT", "{message}");
        assert_eq!(message, expected);
    }
    let (code, message) = viewer
        .error(SET, json!({ "e": e, "on": true, "s": 60_000 }))
        .await?;
    assert_eq!(code, "FORBIDDEN", "{message}");
    assert_eq!(api.counts().await?, before, "refusals write nothing");
    let row = environment::Entity::find_by_id(env.id)
        .one(&api.db)
        .await?
        .context("environment")?;
    assert!(!row.scale_to_zero);

    // On, with both values: written, and the payload says so. No route owner: no watch.
    let set = admin
        .data(SET, json!({ "e": e, "on": true, "s": 60_000, "w": 2_500 }))
        .await?["setScaleToZero"]
        .clone();
    assert_eq!(
        set["environment"],
        json!({ "id": e, "scaleToZero": true, "sleepAfterMs": 60_000, "wakeBudgetMs": 2_500, "wakeState": "hot" })
    );
    assert_eq!(set["watchWorkflowId"], Value::Null);
    let op = &set["operation"];
    assert_eq!(
        (
            &op["kind"],
            &op["status"],
            &op["currentStage"],
            &op["targetType"],
            &op["targetId"]
        ),
        (
            &json!("ENVIRONMENT_UPDATE"),
            &json!("SUCCEEDED"),
            &json!("applied"),
            &json!("environment"),
            &json!(e)
        ),
        "{op}"
    );
    assert_eq!(
        op["auditEntries"][0]["action"],
        "environment.set_scale_to_zero"
    );
    assert_eq!(
        op["auditEntries"][0]["detail"],
        json!({
            "scale_to_zero": true, "sleep_after_ms": 60_000, "wake_budget_ms": 2_500,
            "before": { "scale_to_zero": false, "sleep_after_ms": 300_000, "wake_budget_ms": 10_000 },
        })
    );
    let row = environment::Entity::find_by_id(env.id)
        .one(&api.db)
        .await?
        .context("environment")?;
    assert_eq!(
        (row.scale_to_zero, row.sleep_after_ms, row.wake_budget_ms),
        (true, 60_000, 2_500)
    );

    // The Wake's stage shows as the environment's wakeState.
    let mut asleep: environment::ActiveModel = row.into();
    asleep.wake_state = Set("sleeping".into());
    asleep.update(&api.db).await?;
    let envs = viewer.data(ENVS, json!({ "a": app })).await?;
    assert_eq!(
        envs["environments"][0],
        json!({ "name": "staging", "scaleToZero": true, "sleepAfterMs": 60_000, "wakeBudgetMs": 2_500, "wakeState": "sleeping" })
    );

    // Off, with no values: only the switch changes.
    let off = admin.data(SET, json!({ "e": e, "on": false })).await?["setScaleToZero"].clone();
    assert_eq!(
        off["environment"],
        json!({ "id": e, "scaleToZero": false, "sleepAfterMs": 60_000, "wakeBudgetMs": 2_500, "wakeState": "sleeping" })
    );
    assert_eq!(
        off["operation"]["auditEntries"][0]["detail"]["before"]["scale_to_zero"],
        true
    );
    Ok(())
}

#[tokio::test]
async fn set_scale_to_zero_on_sqlite() -> Result<()> {
    set_scale_to_zero(Api::start("set_scale_to_zero_on_sqlite").await?).await
}

#[tokio::test]
async fn set_scale_to_zero_on_postgres() -> Result<()> {
    set_scale_to_zero(Api::start_postgres("set_scale_to_zero_on_postgres").await?).await
}

/// The input a workflow run was started with, and its workflow type.
async fn started(api: &Api, workflow_id: &str, run_id: Option<&str>) -> Result<(String, Value)> {
    for event in history(api, workflow_id, run_id).await? {
        if let Some(Attributes::WorkflowExecutionStartedEventAttributes(a)) = event.attributes {
            let kind = a.workflow_type.map(|t| t.name).unwrap_or_default();
            let payload = a
                .input
                .and_then(|p| p.payloads.into_iter().next())
                .context("a start input")?;
            return Ok((kind, serde_json::from_slice(&payload.data)?));
        }
    }
    anyhow::bail!("{workflow_id} has no start event")
}

async fn history(api: &Api, workflow_id: &str, run_id: Option<&str>) -> Result<Vec<HistoryEvent>> {
    Ok(WorkflowExecutionInfo::builder()
        .namespace(api.temporal.namespace())
        .workflow_id(workflow_id)
        .maybe_run_id(run_id)
        .build()
        .bind_untyped(api.temporal.clone())
        .fetch_history(Default::default())
        .into_events()
        .await?)
}

/// Turned on for a hot route, a Wake run starts to watch it; the operation's audit entries
/// are the rows naming it, whoever wrote them.
#[tokio::test]
async fn a_hot_route_is_watched_and_its_operation_lists_its_audit_entries() -> Result<()> {
    let api =
        Api::start("a_hot_route_is_watched_and_its_operation_lists_its_audit_entries").await?;
    let admin = api.admin().await?;
    let (_, _, app) = tenancy(&admin, "acme").await?;
    let env = environment_row(&api, &app, "prod", "production").await?;
    let t = fixtures_tenancy(&api, &env).await?;
    let digest = fixtures::digest(1);
    fixtures::artifact(&api.db, &digest).await?;
    let d = fixtures::deployment(&api.db, &t, &digest, "healthy").await?;
    let (cell, _) = fixtures::local_cell(&api.db).await?;
    let key = "acme-app.acme-proj.acme-ws.rhone.localhost";
    let owner = write_owner(
        &api.db,
        OwnerWrite {
            instances: 1,
            route_key: key.into(),
            environment_id: env.id,
            deployment_id: d.id,
            artifact_digest: digest,
            region_id: cell.region_id,
            cell_id: cell.id,
            operation_id: None,
            expected_epoch: None,
        },
    )
    .await?;

    let set = admin
        .data(SET, json!({ "e": env.id, "on": true, "s": 5_000 }))
        .await?["setScaleToZero"]
        .clone();
    let watch = format!("wake-{key}-e{}", owner.epoch);
    assert_eq!(set["watchWorkflowId"], watch, "{set}");
    let op_id = set["operation"]["id"].as_str().context("operation id")?;
    let (kind, input) = started(&api, &watch, None).await?;
    assert_eq!(kind, "wake");
    assert_eq!(
        input,
        json!({ "route_key": key, "epoch": owner.epoch, "trigger": { "kind": "setting", "operation_id": op_id } })
    );

    // Set again while watched: the same watch (use-existing), and an operation of its own.
    let again =
        admin.data(SET, json!({ "e": env.id, "on": true })).await?["setScaleToZero"].clone();
    assert_eq!(again["watchWorkflowId"], watch);
    assert_ne!(again["operation"]["id"], op_id);

    // Evidence a Wake records on the operation.
    let op_uuid: Uuid = op_id.parse()?;
    audit_log::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(Some(env.workspace_id)),
        actor: Set("edge:dev-edge".into()),
        action: Set("wake.request".into()),
        target_type: Set("operation".into()),
        target_id: Set(op_id.to_owned()),
        operation_id: Set(Some(op_uuid)),
        detail: Set(json!({ "method": "GET", "path": "/" })),
        created_at: Set(Utc::now()),
    }
    .insert(&api.db)
    .await?;
    // The rows naming the operation, oldest first; not the later operation's.
    let shown = admin
        .data(
            "query($id: UUID!) { operation(id: $id) { auditEntries { action actor operationId detail } } }",
            json!({ "id": op_id }),
        )
        .await?;
    let entries = shown["operation"]["auditEntries"]
        .as_array()
        .context("entries")?;
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["environment.set_scale_to_zero", "wake.request"]);
    assert!(entries.iter().all(|e| e["operationId"] == op_id));
    assert_eq!(entries[1]["actor"], "edge:dev-edge");
    assert_eq!(
        entries[1]["detail"],
        json!({ "method": "GET", "path": "/" })
    );
    WorkflowExecutionInfo::builder()
        .namespace(api.temporal.namespace())
        .workflow_id(watch.as_str())
        .build()
        .bind_untyped(api.temporal.clone())
        .terminate(
            WorkflowTerminateOptions::builder()
                .reason("test over".to_owned())
                .build(),
        )
        .await?;
    Ok(())
}

/// The tenancy rows of `env` for the fixtures.
async fn fixtures_tenancy(api: &Api, env: &environment::Model) -> Result<Tenancy> {
    use rhone_schema::entity::{app, project, workspace};
    let app = app::Entity::find_by_id(env.app_id)
        .one(&api.db)
        .await?
        .context("app")?;
    Ok(Tenancy {
        workspace: workspace::Entity::find_by_id(env.workspace_id)
            .one(&api.db)
            .await?
            .context("workspace")?,
        project: project::Entity::find_by_id(app.project_id)
            .one(&api.db)
            .await?
            .context("project")?,
        app,
        environment: env.clone(),
    })
}

/// A decision for an operation stored as `<workflow id>/<run id>` goes to that run: not to a
/// later run of the same id, even a running one (which, with no worker here, would leave it
/// unanswered: UNAVAILABLE, not CONFLICT).
#[tokio::test]
async fn a_decision_goes_to_the_run_its_operation_names() -> Result<()> {
    let api = Api::start("a_decision_goes_to_the_run_its_operation_names").await?;
    let admin = api.admin().await?;
    let (ws, _, _) = tenancy(&admin, "acme").await?;
    let ws: Uuid = ws.parse()?;
    let workflow_id = format!(
        "wake-{}.rhone.localhost-e1",
        rhone_testkit::unique_name("decide")
    );
    let input = WakeInput {
        route_key: "decide.rhone.localhost".into(),
        epoch: 1,
        trigger: WakeTrigger::Setting {
            operation_id: new_id(),
        },
    };
    let options = || {
        WorkflowStartOptions::new(api.task_queue.clone(), workflow_id.clone())
            .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
            .build()
    };
    // Two runs of one workflow id: the first ended, the second runs (no worker: it waits).
    let first = api
        .temporal
        .start_workflow(WakeWorkflow::run, input.clone(), options())
        .await?;
    let r1 = first.run_id().context("first run id")?.to_owned();
    first
        .terminate(
            WorkflowTerminateOptions::builder()
                .reason("its awake period ended".to_owned())
                .build(),
        )
        .await?;
    let second = api
        .temporal
        .start_workflow(WakeWorkflow::run, input, options())
        .await?;
    let r2 = second.run_id().context("second run id")?.to_owned();
    assert_ne!(r1, r2);

    let mut ops_of = Vec::new();
    for run in [&r1, &r2] {
        let id = new_id();
        let stored = format!("{workflow_id}/{run}");
        ops::create_operation(
            &api.db,
            NewOperation {
                id,
                workspace_id: Some(ws),
                kind: "wake",
                actor: "system",
                target_type: "route",
                target_id: "decide.rhone.localhost",
                initial_stage: "cold",
                // Parked for on-call, so a decision is taken.
                status: "needs_attention",
                workflow_id: &stored,
            },
        )
        .await?;
        ops_of.push(id);
    }
    const DECIDE: &str = "mutation($o: UUID!, $d: Decision!) {
        decideOperation(id: $o, decision: $d) { id workflowId } }";

    // The first run is over: the decision is refused, though a run of the id is running.
    let before = api.counts().await?;
    let (code, message) = admin
        .error(DECIDE, json!({ "o": ops_of[0], "d": "ABORT" }))
        .await?;
    assert_eq!(code, "CONFLICT", "{message}");
    assert!(
        message.contains("has no running workflow to receive a decision"),
        "{message}"
    );
    assert_eq!(
        api.counts().await?,
        before,
        "an undelivered decision writes nothing"
    );

    // The second run's operation: the update reaches that run, which no worker answers.
    let (code, message) = admin
        .error(DECIDE, json!({ "o": ops_of[1], "d": "ABORT" }))
        .await?;
    assert_eq!(code, "UNAVAILABLE", "{message}");
    assert!(message.contains("the Rhone worker"), "{message}");
    assert_eq!(
        api.counts().await?,
        before,
        "an unanswered decision writes nothing"
    );
    second
        .terminate(
            WorkflowTerminateOptions::builder()
                .reason("test over".to_owned())
                .build(),
        )
        .await?;
    Ok(())
}
