//! Environments.

use async_graphql::{Context, Json, Object, SimpleObject};
use uuid::Uuid;

use crate::{
    graphql::{
        caller,
        types::{Environment, Operation, RuntimeServiceBinding, SecretInfo},
    },
    service::{
        bindings::{self, RuntimeService},
        environments::{self, EnvironmentKind, NewEnvironment, ScaleToZero},
        secrets,
    },
};

/// What `setScaleToZero` changed.
#[derive(SimpleObject)]
pub struct SetScaleToZeroPayload {
    pub environment: Environment,
    /// The `environment_update` operation, applied.
    pub operation: Operation,
    /// The Wake workflow started to watch the route, when it was hot: it sleeps once idle.
    pub watch_workflow_id: Option<String>,
}

/// What `bindRuntimeService` did.
#[derive(SimpleObject)]
pub struct BindRuntimeServicePayload {
    pub binding: RuntimeServiceBinding,
    pub environment: Environment,
    /// The `environment_update` operation, applied.
    pub operation: Operation,
    /// The service was bound already: its config was replaced.
    pub replaced: bool,
}

/// What `unbindRuntimeService` did.
#[derive(SimpleObject)]
pub struct UnbindRuntimeServicePayload {
    pub service: RuntimeService,
    pub environment: Environment,
    /// The `environment_update` operation, applied.
    pub operation: Operation,
}

/// What `setSecret` or `unsetSecret` did.
#[derive(SimpleObject)]
pub struct SecretPayload {
    /// The secret as set; null once unset.
    pub secret: Option<SecretInfo>,
    pub environment: Environment,
    /// The `environment_update` operation, applied.
    pub operation: Operation,
}

impl TryFrom<secrets::Changed> for SecretPayload {
    type Error = crate::error::ApiError;
    fn try_from(c: secrets::Changed) -> Result<Self, Self::Error> {
        Ok(SecretPayload {
            secret: c.secret.map(SecretInfo::from),
            environment: Environment::try_from(c.environment)?,
            operation: Operation::try_from(c.operation)?,
        })
    }
}

#[derive(Default)]
pub struct EnvironmentQuery;

#[Object]
impl EnvironmentQuery {
    /// The environments of an app, by name.
    async fn environments(
        &self,
        ctx: &Context<'_>,
        app_id: Uuid,
    ) -> async_graphql::Result<Vec<Environment>> {
        let (state, actor) = caller(ctx)?;
        let rows = environments::environments(&state.db, actor, app_id).await?;
        Ok(rows
            .into_iter()
            .map(Environment::try_from)
            .collect::<Result<_, _>>()?)
    }
}

#[derive(Default)]
pub struct EnvironmentMutation;

#[Object]
impl EnvironmentMutation {
    /// Starts creating an environment of an app; needs developer. Returns the running
    /// operation: poll `operation(id)` until its status is final.
    // The arguments are the GraphQL field's arguments, flat as clients write them.
    #[allow(clippy::too_many_arguments)]
    async fn create_environment(
        &self,
        ctx: &Context<'_>,
        app_id: Uuid,
        name: String,
        kind: EnvironmentKind,
        #[graphql(desc = "Whether promotions need approval. Default: true for PRODUCTION.")]
        requires_approval: Option<bool>,
        #[graphql(
            desc = "Whether the member who requested an operation here may approve it too. Default: false for PRODUCTION, true otherwise; true on PRODUCTION needs admin."
        )]
        self_approval: Option<bool>,
        #[graphql(desc = "Whether the app sleeps when idle. Default: true for PREVIEW.")]
        scale_to_zero: Option<bool>,
        #[graphql(
            desc = "How long the edge holds a request while the app wakes, 100 to 300000 ms. Default: 10000."
        )]
        wake_budget_ms: Option<i32>,
    ) -> async_graphql::Result<Operation> {
        let (state, actor) = caller(ctx)?;
        let new = NewEnvironment {
            name,
            kind,
            requires_approval,
            self_approval,
            scale_to_zero,
            wake_budget_ms,
        };
        let op = environments::create_environment(state, actor, app_id, new).await?;
        Ok(Operation::try_from(op)?)
    }

    /// Turns scale to zero on or off for an environment; needs developer. Applied at once.
    /// Turned on for a route that is serving, a Wake run starts to watch it: after
    /// `sleepAfterMs` without a request and with no open WebSocket it sleeps (its allocations
    /// drain), and the next request wakes it within the wake budget.
    async fn set_scale_to_zero(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        enabled: bool,
        #[graphql(
            desc = "How long the app stays awake without a request, 1000 to 86400000 ms. Default: unchanged (300000 for a new environment)."
        )]
        sleep_after_ms: Option<i32>,
        #[graphql(
            desc = "How long the edge holds a request while the app wakes, 100 to 300000 ms. Default: unchanged."
        )]
        wake_budget_ms: Option<i32>,
    ) -> async_graphql::Result<SetScaleToZeroPayload> {
        let (state, actor) = caller(ctx)?;
        let args = ScaleToZero {
            enabled,
            sleep_after_ms,
            wake_budget_ms,
        };
        let set = environments::set_scale_to_zero(state, actor, environment_id, args).await?;
        Ok(SetScaleToZeroPayload {
            environment: Environment::try_from(set.environment)?,
            operation: Operation::try_from(set.operation)?,
            watch_workflow_id: set.watch,
        })
    }

    /// Binds a runtime service to an environment, or replaces the config of its binding (one
    /// binding per environment and service); needs developer. Rhone first probes the service
    /// (within 3 s, with the secret the config names): a Redis is AUTHed and PINGed, a SQL
    /// DSN runs `SELECT 1`, a NATS server must greet; the binding is then `ready`, or
    /// `unreachable` with the probe's `error` (the mutation still succeeds; the edge and the
    /// gates refuse a binding that is not ready). Binding again probes again. Applied at once.
    /// IDEMPOTENCY is provided by Rhone: no config, or `{"provider": "rhone"}`. The others
    /// name their provider: SESSION_STORE `{"provider": "redis", "url": "redis://host:6379"}`
    /// (optional `password_secret`) or `{"provider": "sql", "dsn_secret": "NAME"}`;
    /// BROADCAST redis, or `{"provider": "nats", "url": "nats://…"}`; CACHE redis; QUEUE
    /// redis or sql; OBJECT_STORAGE `{"provider": "s3", "bucket": …}` (optional `endpoint`,
    /// `region`, `credentials_secret`). A URL carrying credentials is refused: secrets are
    /// named, never given. A refusal names the field (`config.url`).
    async fn bind_runtime_service(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        service: RuntimeService,
        config: Option<Json<serde_json::Value>>,
    ) -> async_graphql::Result<BindRuntimeServicePayload> {
        let (state, actor) = caller(ctx)?;
        let bound =
            bindings::bind(state, actor, environment_id, service, config.map(|c| c.0)).await?;
        Ok(BindRuntimeServicePayload {
            binding: RuntimeServiceBinding::try_from(bound.binding)?,
            environment: Environment::try_from(bound.environment)?,
            operation: Operation::try_from(bound.operation)?,
            replaced: bound.replaced,
        })
    }

    /// Sets a secret of an environment (version 1, or one more); needs developer. The value
    /// is sealed under the operator's key and never shown again; allocations started from
    /// now on get it as the environment variable `name` (running ones keep theirs until the
    /// next deploy, promotion or wake).
    async fn set_secret(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        #[graphql(desc = "An environment variable name: letters, digits and `_`.")] name: String,
        #[graphql(secret, desc = "The value, up to 64 KiB.")] value: String,
    ) -> async_graphql::Result<SecretPayload> {
        let (state, actor) = caller(ctx)?;
        let value = rhone_core::secret::Secret::new(value);
        let changed = secrets::set(state, actor, environment_id, &name, value).await?;
        Ok(SecretPayload::try_from(changed)?)
    }

    /// Removes a secret of an environment; needs developer. NOT_FOUND when it is not set.
    async fn unset_secret(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        name: String,
    ) -> async_graphql::Result<SecretPayload> {
        let (state, actor) = caller(ctx)?;
        let changed = secrets::unset(state, actor, environment_id, &name).await?;
        Ok(SecretPayload::try_from(changed)?)
    }

    /// Removes a runtime service's binding from an environment; needs developer. Refused
    /// (CONFLICT) while the artifact serving the environment requires the service.
    async fn unbind_runtime_service(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        service: RuntimeService,
    ) -> async_graphql::Result<UnbindRuntimeServicePayload> {
        let (state, actor) = caller(ctx)?;
        let unbound = bindings::unbind(state, actor, environment_id, service).await?;
        Ok(UnbindRuntimeServicePayload {
            service,
            environment: Environment::try_from(unbound.environment)?,
            operation: Operation::try_from(unbound.operation)?,
        })
    }
}
