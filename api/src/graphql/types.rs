//! GraphQL object types, each mapped explicitly from its entity, so a new column never
//! reaches the API without a decision.

use async_graphql::{ComplexObject, Context, Json, SimpleObject};
use chrono::{DateTime, Utc};
use rhone_schema::entity::{
    app, audit_log, deployment, environment, grant, operation, operation_stage, project,
    route_owner, runtime_service_binding, secret, user, workspace,
};
use uuid::Uuid;

use crate::{
    error::ApiError,
    graphql::{
        enums::{OperationKind, OperationStatus, Role},
        state,
    },
    service::{
        bindings::{self, RuntimeService},
        environments::EnvironmentKind,
        operations, routes,
    },
};

#[derive(SimpleObject)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub created_at: DateTime<Utc>,
}

impl From<workspace::Model> for Workspace {
    fn from(m: workspace::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            display_name: m.display_name,
            created_at: m.created_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct Project {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<project::Model> for Project {
    fn from(m: project::Model) -> Self {
        Self {
            id: m.id,
            workspace_id: m.workspace_id,
            name: m.name,
            created_at: m.created_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct App {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<app::Model> for App {
    fn from(m: app::Model) -> Self {
        Self {
            id: m.id,
            workspace_id: m.workspace_id,
            project_id: m.project_id,
            name: m.name,
            created_at: m.created_at,
        }
    }
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Environment {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub app_id: Uuid,
    pub name: String,
    pub kind: EnvironmentKind,
    pub requires_approval: bool,
    /// Whether the member who requested an operation here may approve it too.
    pub self_approval: bool,
    pub scale_to_zero: bool,
    /// How long the edge holds a request while the app wakes.
    pub wake_budget_ms: i32,
    /// How long a scale-to-zero environment stays awake without a request.
    pub sleep_after_ms: i32,
    /// The Wake stage of the environment's route: `hot`, `wake_requested`, `starting`,
    /// `readiness_wait`, `failed` or `sleeping`.
    pub wake_state: String,
    pub created_at: DateTime<Utc>,
}

#[ComplexObject]
impl Environment {
    /// Who serves the environment's host now; null before its first deploy or promotion.
    async fn route_owner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<RouteOwner>> {
        let view = routes::owner_of_environment(&state(ctx)?.db, self.id).await?;
        Ok(view.map(RouteOwner::try_from).transpose()?)
    }

    /// The runtime services bound to the environment, by service. The edge and promotion's
    /// `runtime_services_ready` gate use the `ready` ones.
    async fn runtime_services(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<RuntimeServiceBinding>> {
        let rows = bindings::bindings_of(&state(ctx)?.db, self.id).await?;
        Ok(rows
            .into_iter()
            .map(RuntimeServiceBinding::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// The environment's secrets, by name: names and versions, never values. An allocation
    /// gets them as environment variables when it starts.
    async fn secrets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SecretInfo>> {
        let rows = rhone_schema::secrets::list(&state(ctx)?.db, self.id)
            .await
            .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(SecretInfo::from).collect())
    }

    /// The environment's databases (one it owns, or one it reads); its allocations find
    /// the URL in the `DATABASE_URL` secret.
    async fn databases(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::graphql::databases::DatabaseBinding>> {
        let rows = crate::service::databases::of_environment(&state(ctx)?.db, self.id).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

/// A secret of an environment: its name and version, never its value.
#[derive(SimpleObject)]
pub struct SecretInfo {
    pub name: String,
    /// 1 for the first value, one more at each change.
    pub version: i64,
    /// Who set this version.
    pub set_by: String,
    pub updated_at: DateTime<Utc>,
}

impl From<secret::Model> for SecretInfo {
    fn from(m: secret::Model) -> Self {
        SecretInfo {
            name: m.name,
            version: m.version,
            set_by: m.set_by,
            updated_at: m.updated_at,
        }
    }
}

/// A runtime service bound to an environment: its provider and where it is.
#[derive(SimpleObject)]
pub struct RuntimeServiceBinding {
    pub service: RuntimeService,
    /// `ready` when the service can be used: `bindRuntimeService` probed it and it answered
    /// (or its provider is not probed: `rhone` for idempotency, `s3`); `unreachable` when
    /// the probe failed or a secret the config names is not set (`error` says why). The
    /// edge and the deploy and promotion gates use only `ready` bindings.
    pub status: String,
    /// `{"provider": …}` and the provider's fields; secrets appear by name only
    /// (`password_secret`), and any credential in a URL as `***`.
    pub config: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    /// Why the last probe failed (status `unreachable`), without any secret's value; null
    /// when it succeeded or the provider is not probed.
    pub error: Option<String>,
    /// When Rhone last probed the service (on `bindRuntimeService`); null when its provider
    /// is not probed.
    pub probed_at: Option<DateTime<Utc>>,
}

impl TryFrom<runtime_service_binding::Model> for RuntimeServiceBinding {
    type Error = ApiError;
    fn try_from(m: runtime_service_binding::Model) -> Result<Self, ApiError> {
        let service = RuntimeService::parse(&m.service).ok_or_else(|| {
            ApiError::internal(
                "reading a runtime service binding",
                format!("unknown service {:?}", m.service),
            )
        })?;
        Ok(Self {
            service,
            status: m.status,
            config: Json(bindings::redact(&m.config)),
            created_at: m.created_at,
            error: m.error,
            probed_at: m.probed_at,
        })
    }
}

impl TryFrom<environment::Model> for Environment {
    type Error = ApiError;
    fn try_from(m: environment::Model) -> Result<Self, ApiError> {
        let kind = EnvironmentKind::parse(&m.kind).ok_or_else(|| {
            ApiError::internal(
                "reading an environment",
                format!("unknown kind {:?}", m.kind),
            )
        })?;
        Ok(Self {
            id: m.id,
            workspace_id: m.workspace_id,
            app_id: m.app_id,
            name: m.name,
            kind,
            requires_approval: m.requires_approval,
            self_approval: m.self_approval,
            scale_to_zero: m.scale_to_zero,
            wake_budget_ms: i32::try_from(m.wake_budget_ms)
                .map_err(|e| ApiError::internal("reading an environment's wake budget", e))?,
            sleep_after_ms: i32::try_from(m.sleep_after_ms)
                .map_err(|e| ApiError::internal("reading an environment's sleep after", e))?,
            wake_state: m.wake_state,
            created_at: m.created_at,
        })
    }
}

/// A release of an app into an environment: its source, the immutable artifact once built,
/// and the stage of the operation that made it.
#[derive(SimpleObject)]
pub struct Deployment {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub app_id: Uuid,
    pub environment_id: Uuid,
    /// `sha256:<hex>`, once built (a promoted deployment has its preview's from the start).
    pub artifact_digest: Option<String>,
    /// `{repository, ref}` as deployed.
    pub source: Json<serde_json::Value>,
    pub stage: String,
    /// The deploy or promotion operation that made it.
    pub operation_id: Option<Uuid>,
    /// The preview deployment whose exact artifact this one was promoted from.
    pub promoted_from: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<deployment::Model> for Deployment {
    fn from(m: deployment::Model) -> Self {
        Self {
            id: m.id,
            workspace_id: m.workspace_id,
            app_id: m.app_id,
            environment_id: m.environment_id,
            artifact_digest: m.artifact_digest,
            source: Json(m.source),
            stage: m.stage,
            operation_id: m.operation_id,
            promoted_from: m.promoted_from,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// The authority for a host: the deployment and exact artifact it serves, at a monotonic
/// `epoch` that only promotion and rollback advance (a deploy advances a preview host's).
#[derive(SimpleObject)]
pub struct RouteOwner {
    /// The host, e.g. `web.shop.acme.rhone.localhost`.
    pub route_key: String,
    pub epoch: i64,
    pub deployment: Deployment,
    pub artifact_digest: String,
    pub environment: Environment,
    /// The operation that moved the route to this epoch.
    pub operation_id: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<routes::OwnerView> for RouteOwner {
    type Error = ApiError;
    fn try_from(v: routes::OwnerView) -> Result<Self, ApiError> {
        let route_owner::Model {
            route_key,
            epoch,
            artifact_digest,
            operation_id,
            updated_at,
            ..
        } = v.owner;
        Ok(Self {
            route_key,
            epoch,
            deployment: v.deployment.into(),
            artifact_digest,
            environment: v.environment.try_into()?,
            operation_id,
            updated_at,
        })
    }
}

#[derive(SimpleObject)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
}

impl From<user::Model> for User {
    fn from(m: user::Model) -> Self {
        Self {
            id: m.id,
            email: m.email,
            display_name: m.display_name,
        }
    }
}

/// A user's role in one workspace.
#[derive(SimpleObject)]
pub struct Grant {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub user: User,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl Grant {
    pub fn new(g: grant::Model, user: user::Model) -> Result<Self, ApiError> {
        Ok(Self {
            id: g.id,
            workspace_id: g.workspace_id,
            user: user.into(),
            role: crate::rbac::parse_role(&g.role)?.into(),
            created_at: g.created_at,
        })
    }
}

/// A meaningful mutation and where it stands. Poll `operation(id)` until `status` is
/// final (succeeded, failed or aborted).
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Operation {
    pub id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub kind: OperationKind,
    /// `user:<uuid>`, `runtime:<app uuid>` or `system`.
    pub actor: String,
    pub target_type: String,
    pub target_id: String,
    pub status: OperationStatus,
    pub current_stage: String,
    /// The Temporal workflow id, derived from the operation id; for an operation that is
    /// one run of a reused workflow id (a Wake), `<workflow id>/<run id>`.
    pub workflow_id: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[ComplexObject]
impl Operation {
    /// The stage records, in order.
    async fn stages(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<OperationStage>> {
        let rows = operations::stages(&state(ctx)?.db, self.id).await?;
        Ok(rows.into_iter().map(OperationStage::from).collect())
    }

    /// The audit entries that name this operation, oldest first: the mutation that started
    /// it, decisions sent to it, and evidence its workflow recorded (`wake.request`: a
    /// request an edge held or answered while the route woke; `route.cas_conflict` …).
    async fn audit_entries(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AuditEntry>> {
        let rows = operations::audit_entries(&state(ctx)?.db, self.id).await?;
        Ok(rows.into_iter().map(AuditEntry::from).collect())
    }
}

impl TryFrom<operation::Model> for Operation {
    type Error = ApiError;
    fn try_from(m: operation::Model) -> Result<Self, ApiError> {
        let kind: rhone_core::OperationKind = m
            .kind
            .parse()
            .map_err(|e| ApiError::internal("reading an operation's kind", e))?;
        let status: rhone_core::OperationStatus = m
            .status
            .parse()
            .map_err(|e| ApiError::internal("reading an operation's status", e))?;
        Ok(Self {
            id: m.id,
            workspace_id: m.workspace_id,
            kind: kind.into(),
            actor: m.actor,
            target_type: m.target_type,
            target_id: m.target_id,
            status: status.into(),
            current_stage: m.current_stage,
            workflow_id: m.workflow_id,
            error: m.error,
            created_at: m.created_at,
            updated_at: m.updated_at,
        })
    }
}

/// One stage an operation entered.
#[derive(SimpleObject)]
pub struct OperationStage {
    pub stage: String,
    /// Orders the records of one operation, from 1.
    pub seq: i32,
    /// Counts re-entries of the same stage (retries), from 1.
    pub attempt: i32,
    pub entered_at: DateTime<Utc>,
    pub evidence: Json<serde_json::Value>,
    pub error: Option<String>,
}

impl From<operation_stage::Model> for OperationStage {
    fn from(m: operation_stage::Model) -> Self {
        Self {
            stage: m.stage,
            seq: m.seq,
            attempt: m.attempt,
            entered_at: m.entered_at,
            evidence: Json(m.evidence),
            error: m.error,
        }
    }
}

/// Who did what to which object, and the operation it started.
#[derive(SimpleObject)]
pub struct AuditEntry {
    pub id: Uuid,
    pub workspace_id: Option<Uuid>,
    pub actor: String,
    /// `<object>.<verb>`, e.g. `project.create`, `operation.approve`.
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub operation_id: Option<Uuid>,
    pub detail: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

impl From<audit_log::Model> for AuditEntry {
    fn from(m: audit_log::Model) -> Self {
        Self {
            id: m.id,
            workspace_id: m.workspace_id,
            actor: m.actor,
            action: m.action,
            target_type: m.target_type,
            target_id: m.target_id,
            operation_id: m.operation_id,
            detail: Json(m.detail),
            created_at: m.created_at,
        }
    }
}
