//! Environments: reads, and `createEnvironment`, the first mutation carried out by a
//! workflow. The API records the operation and its audit row, then starts
//! `EnvironmentCreateWorkflow`; the workflow writes every later stage.

use rhone_core::{OperationId, OperationKind, Role};
use rhone_schema::{
    begin_write,
    entity::{environment, operation},
    new_id,
};
use rhone_workflows::{
    EnvironmentCreateInput, EnvironmentCreateWorkflow, WakeInput, WakeTrigger, WakeWorkflow,
    activities::CreateEnvironmentInput,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder,
};
use serde_json::json;
use temporalio_client::{
    WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions,
    errors::WorkflowStartError,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    record::{self, Mutation},
    service::{promotions, tenancy::app_for, validate},
};

/// The traffic and policy lane an environment is.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironmentKind {
    Preview,
    Staging,
    Production,
}

impl EnvironmentKind {
    /// The text stored in `environments.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preview => environment::KIND_PREVIEW,
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Preview, Self::Staging, Self::Production]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// The arguments of `createEnvironment`; `None` takes the kind's default.
#[derive(Debug, Clone)]
pub(crate) struct NewEnvironment {
    pub name: String,
    pub kind: EnvironmentKind,
    /// Default: production needs approval, other kinds do not.
    pub requires_approval: Option<bool>,
    /// Default: off for production, on for other kinds.
    pub self_approval: Option<bool>,
    /// Default: previews scale to zero, other kinds do not.
    pub scale_to_zero: Option<bool>,
    /// Default: [`environment::DEFAULT_WAKE_BUDGET_MS`].
    pub wake_budget_ms: Option<i32>,
}

pub(crate) async fn environments(
    db: &DatabaseConnection,
    actor: &Actor,
    app_id: Uuid,
) -> Result<Vec<environment::Model>, ApiError> {
    app_for(db, actor, app_id, Role::Viewer).await?;
    Ok(environment::Entity::find()
        .filter(environment::Column::AppId.eq(app_id))
        .order_by_asc(environment::Column::Name)
        .all(db)
        .await?)
}

/// Records the operation and starts its workflow; returns the operation, running. If the
/// workflow cannot be started the operation is marked failed with the reason and the
/// answer is UNAVAILABLE.
pub(crate) async fn create_environment(
    state: &ApiState,
    actor: &Actor,
    app_id: Uuid,
    new: NewEnvironment,
) -> Result<operation::Model, ApiError> {
    let db = &state.db;
    let app = app_for(db, actor, app_id, Role::Developer).await?;
    let name = validate::name("name", &new.name)?;
    let wake_budget_ms = match new.wake_budget_ms {
        Some(ms) => validate::wake_budget_ms(ms)?,
        None => environment::DEFAULT_WAKE_BUDGET_MS,
    };
    let exists = environment::Entity::find()
        .filter(environment::Column::AppId.eq(app_id))
        .filter(environment::Column::Name.eq(name.as_str()))
        .one(db)
        .await?;
    if exists.is_some() {
        return Err(ApiError::Conflict(format!(
            "an environment named {:?} already exists in app {:?}",
            name.as_str(),
            app.name
        )));
    }
    let kind = new.kind;
    // Approval is production's guard: only an admin of the workspace may create a
    // production environment without it.
    let unguarded = [
        (
            new.requires_approval == Some(false),
            "without approval (requiresApproval: false)",
        ),
        (
            new.self_approval == Some(true),
            "whose requesters approve themselves (selfApproval: true)",
        ),
    ];
    if kind == EnvironmentKind::Production
        && let Some((_, what)) = unguarded.iter().find(|(asked, _)| *asked)
    {
        let role = crate::rbac::role_in(db, actor, app.workspace_id).await?;
        if !role.is_some_and(|r| r.allows(Role::Admin)) {
            return Err(ApiError::Forbidden(format!(
                "a production environment {what} needs an admin of the workspace; leave it out, or ask an admin of app {:?}'s workspace",
                app.name
            )));
        }
    }
    let operation_id = new_id();
    let environment = CreateEnvironmentInput {
        operation_id: OperationId(operation_id),
        environment_id: new_id(),
        workspace_id: app.workspace_id,
        app_id,
        name: name.to_string(),
        kind: kind.as_str().to_owned(),
        requires_approval: new
            .requires_approval
            .unwrap_or(kind == EnvironmentKind::Production),
        self_approval: Some(
            new.self_approval
                .unwrap_or(kind != EnvironmentKind::Production),
        ),
        scale_to_zero: new
            .scale_to_zero
            .unwrap_or(kind == EnvironmentKind::Preview),
        wake_budget_ms,
    };
    let m = Mutation {
        operation_id,
        kind: OperationKind::EnvironmentCreate,
        action: "environment.create",
        actor: actor.subject(),
        workspace_id: Some(app.workspace_id),
        target_type: "environment",
        target_id: environment.environment_id.to_string(),
        detail: json!({
            "name": environment.name,
            "kind": environment.kind,
            "app_id": app_id,
            "requires_approval": environment.requires_approval,
            "self_approval": environment.self_approval,
            "scale_to_zero": environment.scale_to_zero,
            "wake_budget_ms": environment.wake_budget_ms,
        }),
    };
    let span = tracing::info_span!(
        "create_environment",
        operation_id = %operation_id,
        environment_id = %environment.environment_id
    );
    async {
        let txn = begin_write(db).await?;
        let op = record::requested(&txn, &m).await?;
        txn.commit().await?;

        let input = EnvironmentCreateInput {
            operation_id: OperationId(operation_id),
            environment,
        };
        let options = WorkflowStartOptions::new(state.task_queue.clone(), m.workflow_id()).build();
        match state
            .temporal
            .start_workflow(EnvironmentCreateWorkflow::run, input, options)
            .await
        {
            Ok(_) => {
                tracing::info!(workflow_id = %op.workflow_id, "workflow started");
                Ok(op)
            }
            Err(err) => Err(start_failed(db, &m, err).await),
        }
    }
    .instrument(span)
    .await
}

/// The arguments of `setScaleToZero`; `None` keeps the current value.
#[derive(Debug, Clone)]
pub(crate) struct ScaleToZero {
    pub enabled: bool,
    pub sleep_after_ms: Option<i32>,
    pub wake_budget_ms: Option<i32>,
}

/// What `setScaleToZero` did.
pub(crate) struct ScaleToZeroSet {
    pub environment: environment::Model,
    pub operation: operation::Model,
    /// The Wake run started to watch the hot route (`<workflow id>`), when one was.
    pub watch: Option<String>,
}

/// Turns scale to zero on or off for an environment (and sets how long it stays awake
/// without a request, and its wake budget): applied at once, with its operation
/// (`environment_update`, `applied`) and audit row in the same transaction. Turned on for a
/// route that is hot, a Wake run starts to watch it (trigger `setting`), so it sleeps once
/// idle; a run already watching it is kept. Turned off, a watching run stops at its next
/// check and the route stays up; a sleeping route wakes on its next request and stays up.
pub(crate) async fn set_scale_to_zero(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    args: ScaleToZero,
) -> Result<ScaleToZeroSet, ApiError> {
    let db = &state.db;
    let sleep_after_ms = args
        .sleep_after_ms
        .map(validate::sleep_after_ms)
        .transpose()?;
    let wake_budget_ms = args
        .wake_budget_ms
        .map(validate::wake_budget_ms)
        .transpose()?;
    let txn = begin_write(db).await?;
    let before = promotions::environment_for(&txn, actor, environment_id).await?;
    let mut row: environment::ActiveModel = before.clone().into();
    row.scale_to_zero = Set(args.enabled);
    if let Some(ms) = sleep_after_ms {
        row.sleep_after_ms = Set(ms);
    }
    if let Some(ms) = wake_budget_ms {
        row.wake_budget_ms = Set(ms);
    }
    let env = row.update(&txn).await?;
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::EnvironmentUpdate,
        action: "environment.set_scale_to_zero",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "environment",
        target_id: env.id.to_string(),
        detail: json!({
            "scale_to_zero": env.scale_to_zero,
            "sleep_after_ms": env.sleep_after_ms,
            "wake_budget_ms": env.wake_budget_ms,
            "before": {
                "scale_to_zero": before.scale_to_zero,
                "sleep_after_ms": before.sleep_after_ms,
                "wake_budget_ms": before.wake_budget_ms,
            },
        }),
    };
    let op = record::applied(&txn, &m).await?;
    let owner = promotions::owner_of(&txn, env.id).await?;
    txn.commit().await?;

    let mut watch = None;
    if let Some(owner) =
        owner.filter(|_| env.scale_to_zero && env.wake_state == environment::WAKE_STATE_HOT)
    {
        let workflow_id = rhone_core::wake_workflow_id(&owner.route_key, owner.epoch);
        let input = WakeInput {
            route_key: owner.route_key.clone(),
            epoch: owner.epoch,
            trigger: WakeTrigger::Setting {
                operation_id: op.id,
            },
        };
        let options = WorkflowStartOptions::new(state.task_queue.clone(), workflow_id.clone())
            .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .build();
        match state
            .temporal
            .start_workflow(WakeWorkflow::run, input, options)
            .await
        {
            Ok(_) => watch = Some(workflow_id),
            // The setting stands; the next promotion or deploy starts the watch.
            Err(e) => {
                tracing::warn!(error = %e, %workflow_id, "the watch of the hot route did not start")
            }
        }
    }
    tracing::info!(environment_id = %env.id, scale_to_zero = env.scale_to_zero, ?watch, "scale to zero set");
    Ok(ScaleToZeroSet {
        environment: env,
        operation: op,
        watch,
    })
}

/// Marks the operation failed because its workflow could not be started, and names the
/// error to answer with.
pub(crate) async fn start_failed(
    db: &DatabaseConnection,
    m: &Mutation,
    err: WorkflowStartError,
) -> ApiError {
    let (reason, answer) = match err {
        WorkflowStartError::Rpc(status) => (
            "the workflow could not be started: Temporal is unavailable",
            ApiError::Unavailable {
                service: "Temporal",
                source: Box::new(status),
            },
        ),
        other => (
            "the workflow could not be started",
            ApiError::internal("starting the workflow", other),
        ),
    };
    if let Err(mark) = record::start_failed(db, m.operation_id, m.kind, reason).await {
        // The operation stays `requested`, and no workflow will ever move it: say so loudly.
        tracing::error!(operation_id = %m.operation_id, error = %mark, "could not mark the operation failed");
    }
    answer
}
