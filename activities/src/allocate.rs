//! Allocations on runners, shared by the preview and promotion activities: the spec an
//! artifact runs with (one function, so a later command for the same allocation is the same
//! workload), placement on a ready runner, the PUT, the poll until the runner reports ready
//! (heartbeating every poll), the reports that bring the row to `ready`, and the stop
//! command a drain sends.
//!
//! Also the retryability helpers of these activities: [`refuse`] is final, [`transient`] is
//! retried.

use std::time::Duration;

use rhone_core::fleet::Need;
use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_manifest::artifact::ArtifactManifest;
use rhone_runner_protocol::{AllocationSpec, AllocationStatus, Desired, ProcessSpec, RunnerKey};
use rhone_schema::{
    SchemaError,
    allocations::{self, ReportSource, RunnerReport},
    entity::{
        allocation, app, artifact, deployment, environment, project, route_owner, runner, workspace,
    },
    fleet::{self, Placement},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use temporalio_common::error::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;

use crate::error::activity_error;

/// The ready allocations of `deployment_id` running `digest` that are meant to run, oldest
/// first: what already serves a route, or could.
pub(crate) async fn ready_of<C: sea_orm::ConnectionTrait>(
    db: &C,
    deployment_id: Uuid,
    digest: &str,
) -> Result<Vec<allocation::Model>, sea_orm::DbErr> {
    allocation::Entity::find()
        .filter(allocation::Column::DeploymentId.eq(deployment_id))
        .filter(allocation::Column::ArtifactDigest.eq(digest))
        .filter(allocation::Column::Desired.eq(rhone_schema::allocations::Desired::Run.as_str()))
        .filter(allocation::Column::Stage.eq(AllocationStage::Ready.as_str()))
        .order_by_asc(allocation::Column::CreatedAt)
        .all(db)
        .await
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How often a start is polled.
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// Pulling and unpacking come before the app's own readiness time.
pub(crate) const PULL_ALLOWANCE: Duration = Duration::from_secs(120);
/// A status request is a read of the runner's memory; one slower than this counts as a
/// runner that did not answer (and leaves room for the 5 s heartbeat timeout).
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// The log lines a failure message quotes.
const LOG_LINES: usize = 10;

/// A refusal no retry can fix.
pub(crate) fn refuse(message: impl Into<String>) -> ActivityError {
    let message = message.into();
    tracing::warn!(%message, "activity refused");
    ActivityError::application(ApplicationFailure::non_retryable(message))
}

/// Something a later attempt may get past (a runner restarting, a slow start).
pub(crate) fn transient(message: impl Into<String>) -> ActivityError {
    ActivityError::application(ApplicationFailure::new(message.into()))
}

pub(crate) fn db_err(e: impl Into<SchemaError>) -> ActivityError {
    activity_error(e.into())
}

/// How often [`Heartbeat::during`] beats.
const BEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Records heartbeats of the running activity; does nothing when the activity's logic is
/// called directly (tests).
#[derive(Clone, Copy, Default)]
pub struct Heartbeat<'a>(Option<&'a ActivityContext>);

impl<'a> Heartbeat<'a> {
    pub fn of(ctx: &'a ActivityContext) -> Self {
        Heartbeat(Some(ctx))
    }

    /// No activity context: nothing is recorded.
    pub fn none() -> Self {
        Heartbeat(None)
    }

    /// Runs `work`, heartbeating every [`BEAT_EVERY`] until it ends. Temporal then knows
    /// within the step's heartbeat timeout (`stages::watched`, 5 s) that a worker which
    /// died mid-way is gone, and retries the activity, instead of after its whole
    /// start-to-close timeout (two hours for a build).
    pub async fn during<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        if self.0.is_none() {
            return work.await;
        }
        let mut work = std::pin::pin!(work);
        let mut every = tokio::time::interval(BEAT_EVERY);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                _ = every.tick() => self.beat(serde_json::Value::Null).await,
            }
        }
    }

    pub async fn beat(&self, details: serde_json::Value) {
        if let Some(ctx) = self.0
            && let Err(e) = ctx.record_heartbeat(details).await
        {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
    }
}

/// The stored manifest of artifact `digest`.
pub(crate) async fn manifest(
    db: &DatabaseConnection,
    digest: &str,
) -> Result<ArtifactManifest, ActivityError> {
    let art = artifact::Entity::find_by_id(digest.to_owned())
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| refuse(format!("artifact {digest} is not recorded")))?;
    serde_json::from_value(art.manifest)
        .map_err(|e| refuse(format!("artifact {digest} has an unreadable manifest: {e}")))
}

/// The command for `alloc` at its current generation. Every command for one allocation is
/// built here, so the runner sees the same workload and only `generation`/`desired` move:
/// its secrets are the environment's as sealed for it at its first command.
pub(crate) async fn spec(
    db: &DatabaseConnection,
    runners: &RunnerClient,
    alloc: &allocation::Model,
    manifest: &ArtifactManifest,
    desired: Desired,
) -> Result<AllocationSpec, ActivityError> {
    let secrets = rhone_schema::secrets::of_allocation(db, runners.keys.as_deref(), alloc)
        .await
        .map_err(|e| match e {
            rhone_schema::secrets::SecretsError::Schema(e) => db_err(e),
            other => refuse(format!("allocation {}: {other}", alloc.id)),
        })?;
    let egress = egress(db, alloc, &secrets).await?;
    let process = &manifest.app.process;
    Ok(AllocationSpec {
        allocation_id: alloc.id,
        generation: alloc.generation,
        artifact_digest: alloc
            .artifact_digest
            .parse()
            .map_err(|e| refuse(format!("allocation {}: {e}", alloc.id)))?,
        process: ProcessSpec {
            command: process.command.clone(),
            port: process.port,
            health_path: process.health_path.clone(),
            readiness_timeout_ms: process.readiness_timeout_secs.saturating_mul(1000),
            drain_timeout_ms: None,
            limits: process.limits,
        },
        env: Default::default(),
        secrets,
        desired,
        egress,
    })
}

/// Where `alloc` may open connections: the database server of each provider binding of
/// its environment, and each runtime service it binds that has an address (a Redis or NATS
/// URL in the binding's config, a `sql` service's DSN among the allocation's `secrets`).
/// An address an allocation could not be let through to is refused, naming the binding.
async fn egress(
    db: &DatabaseConnection,
    alloc: &allocation::Model,
    secrets: &std::collections::BTreeMap<String, rhone_core::Secret>,
) -> Result<Vec<rhone_core::Endpoint>, ActivityError> {
    use rhone_core::Endpoint;
    use rhone_schema::entity::runtime_service_binding;
    let deployment = deployment::Entity::find_by_id(alloc.deployment_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| refuse(format!("allocation {}: its deployment is gone", alloc.id)))?;
    let env = deployment.environment_id;
    let unusable = |what: String| {
        refuse(format!(
            "allocation {}: {what} is not an address an allocation can reach \
             (a DNS name or an IPv4 address, and a port)",
            alloc.id
        ))
    };
    let mut egress: Vec<Endpoint> = Vec::new();
    for binding in rhone_schema::providers::bindings_of(db, env)
        .await
        .map_err(db_err)?
    {
        let provider = rhone_schema::providers::named(db, &binding.provider)
            .await
            .map_err(db_err)?;
        let endpoint = Endpoint::of_url(&provider.host, 5432).ok_or_else(|| {
            unusable(format!(
                "database provider {} at {}",
                provider.name, provider.host
            ))
        })?;
        egress.push(endpoint);
    }
    let services = runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(env))
        .order_by_asc(runtime_service_binding::Column::CreatedAt)
        .all(db)
        .await
        .map_err(db_err)?;
    for service in services {
        let field = |name: &str| service.config.get(name).and_then(|v| v.as_str());
        let found = match field("provider").unwrap_or_default() {
            "redis" => field("url").map(|url| (url.to_owned(), 6379)),
            "nats" => field("url").map(|url| (url.to_owned(), 4222)),
            "sql" => field("dsn_secret")
                .and_then(|name| secrets.get(name))
                .map(|dsn| (dsn.expose().to_owned(), 5432)),
            _ => None,
        };
        let Some((url, port)) = found else { continue };
        // The URL may hold a password: the refusal names the binding, not the URL.
        let endpoint = Endpoint::of_url(&url, port).ok_or_else(|| {
            unusable(format!(
                "the address of runtime service {}",
                service.service
            ))
        })?;
        egress.push(endpoint);
    }
    egress.sort();
    egress.dedup();
    Ok(egress)
}

/// The worker's client of runner APIs: every call carries the call token the operator's
/// runner key derives for that runner (`rhone_runner_protocol::credentials`).
#[derive(Debug, Clone)]
pub struct RunnerClient {
    http: reqwest::Client,
    key: Option<RunnerKey>,
    /// The operator's secrets key: opens the environment secrets an allocation starts with.
    keys: Option<std::sync::Arc<rhone_schema::secrets::Keyring>>,
}

impl RunnerClient {
    /// Without a key, calls carry no token and every runner refuses them (401).
    pub fn new(http: reqwest::Client, key: Option<RunnerKey>) -> Self {
        RunnerClient {
            http,
            key,
            keys: None,
        }
    }

    /// With the operator's secrets key: allocations of environments with secrets get them.
    pub fn with_secrets(
        mut self,
        keys: Option<std::sync::Arc<rhone_schema::secrets::Keyring>>,
    ) -> Self {
        self.keys = keys;
        self
    }

    fn call(
        &self,
        method: reqwest::Method,
        runner: &runner::Model,
        url: String,
    ) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.key {
            Some(key) => request.bearer_auth(key.call_token(&runner.name).expose()),
            None => request,
        }
    }
}

/// What a runner says of itself (`GET /v1/allocations`), as far as placement reads it.
#[derive(serde::Deserialize)]
struct Inventory {
    subnet: String,
}

/// Records the subnet a runner's allocations live in, at the first contact, for a runner
/// that did not register one (one a test or fixture wrote): reports from it are then taken
/// only with addresses inside it.
pub(crate) async fn record_network(
    db: &DatabaseConnection,
    runners: &RunnerClient,
    runner: runner::Model,
) -> Result<runner::Model, ActivityError> {
    if runner.subnet.is_some() {
        return Ok(runner);
    }
    let url = format!("{}/v1/allocations", runner.address.trim_end_matches('/'));
    let resp = runners
        .call(reqwest::Method::GET, &runner, url)
        .timeout(STATUS_TIMEOUT)
        .send()
        .await
        .map_err(|e| transient(format!("runner {} unreachable: {e}", runner.name)))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err(transient(format!(
            "runner {} refused this worker's call token (is RHONE_RUNNER_KEY the same on both?)",
            runner.name
        )));
    }
    let inventory: Inventory = resp
        .error_for_status()
        .map_err(|e| transient(format!("runner {}: {e}", runner.name)))?
        .json()
        .await
        .map_err(|e| transient(format!("runner {} inventory unreadable: {e}", runner.name)))?;
    let runner = rhone_schema::topology::record_runner_subnet(db, runner.id, &inventory.subnet)
        .await
        .map_err(|e| refuse(format!("runner {}: {e}", runner.name)))?;
    tracing::info!(runner = %runner.name, subnet = ?runner.subnet, "runner network recorded");
    Ok(runner)
}

/// Where a new allocation `id` of `deployment`'s artifact `digest` may go: a runner of the
/// environment's region (its route's, when it has one) with room for the artifact's `[run]`
/// memory and CPU.
pub(crate) async fn placement(
    db: &DatabaseConnection,
    id: Uuid,
    deployment_id: Uuid,
    digest: &str,
) -> Result<Placement, ActivityError> {
    let dep = deployment::Entity::find_by_id(deployment_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| refuse(format!("deployment {deployment_id} is gone")))?;
    let region_id = route_owner::Entity::find()
        .filter(route_owner::Column::EnvironmentId.eq(dep.environment_id))
        .one(db)
        .await
        .map_err(db_err)?
        .map(|o| o.region_id);
    let limits = manifest(db, digest).await?.app.process.limits;
    Ok(Placement {
        allocation_id: id,
        deployment_id,
        artifact_digest: digest.to_owned(),
        environment_id: dep.environment_id,
        region_id,
        need: Need {
            memory_mb: i64::from(limits.memory_mb),
            cpu_millis: i64::from(limits.cpu_millis),
        },
        avoid: Vec::new(),
    })
}

/// What a placement with no room anywhere does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// Final for this attempt, so the workflow can stop `blocked` with the shortfall.
    Refuse,
    /// Retried like any transient failure (a runner may be registering again), then the
    /// operation needs attention with the shortfall as its error.
    Retry,
}

/// A placement error as the activity's, naming the shortfall when there was no room.
pub(crate) fn placement_err(e: SchemaError, no_room: NoRoom) -> ActivityError {
    match e {
        SchemaError::NoCapacity(shortfall) => {
            // The runners by name, for operators; the operation's error names none.
            tracing::warn!(detail = %shortfall.detail(), "no runner has room");
            let message = format!("{}{shortfall}", rhone_core::fleet::NO_CAPACITY);
            match no_room {
                NoRoom::Refuse => refuse(message),
                NoRoom::Retry => transient(message),
            }
        }
        other => db_err(other),
    }
}

/// Places a new allocation (see [`placement`]) and records its runner's network at the
/// first contact.
pub(crate) async fn place(
    db: &DatabaseConnection,
    runners: &RunnerClient,
    placement: &Placement,
    no_room: NoRoom,
) -> Result<(allocation::Model, runner::Model), ActivityError> {
    let (row, runner) = fleet::place_allocation(db, placement)
        .await
        .map_err(|e| placement_err(e, no_room))?;
    let runner = record_network(db, runners, runner).await?;
    Ok((row, runner))
}

/// The runner an allocation is placed on, if it has one that is still registered.
pub(crate) async fn runner_of(
    db: &DatabaseConnection,
    alloc: &allocation::Model,
) -> Result<Option<runner::Model>, ActivityError> {
    let Some(id) = alloc.runner_id else {
        return Ok(None);
    };
    runner::Entity::find_by_id(id).one(db).await.map_err(db_err)
}

fn url(runner: &runner::Model, allocation_id: Uuid) -> String {
    format!(
        "{}/v1/allocations/{allocation_id}",
        runner.address.trim_end_matches('/')
    )
}

/// Sends `spec` to the runner (`PUT /v1/allocations/{id}`): a new allocation starts, the
/// same generation again is a no-op, a newer one updates it.
pub(crate) async fn put_spec(
    http: &RunnerClient,
    runner: &runner::Model,
    spec: &AllocationSpec,
) -> Result<(), ActivityError> {
    let resp = http
        .call(
            reqwest::Method::PUT,
            runner,
            url(runner, spec.allocation_id),
        )
        .json(spec)
        .send()
        .await
        .map_err(|e| transient(format!("runner {} unreachable: {e}", runner.name)))?;
    let code = resp.status();
    if code.is_client_error() {
        let body = resp.text().await.unwrap_or_default();
        return Err(refuse(format!(
            "runner {} refused the allocation ({code}): {body}",
            runner.name
        )));
    }
    if !code.is_success() {
        return Err(transient(format!("runner {} answered {code}", runner.name)));
    }
    Ok(())
}

/// What a runner says about one allocation.
pub(crate) enum Observed {
    Status(Box<AllocationStatus>),
    /// 404: the runner does not know the allocation (never sent, or the runner restarted).
    Unknown,
}

/// `GET /v1/allocations/{id}`; an error is the reason the runner could not be asked.
pub(crate) async fn observe(
    http: &RunnerClient,
    runner: &runner::Model,
    allocation_id: Uuid,
) -> Result<Observed, String> {
    let resp = http
        .call(reqwest::Method::GET, runner, url(runner, allocation_id))
        .timeout(STATUS_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("runner {} unreachable: {e}", runner.name))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(Observed::Unknown);
    }
    let resp = resp
        .error_for_status()
        .map_err(|e| format!("runner {} status: {e}", runner.name))?;
    let status: AllocationStatus = resp
        .json()
        .await
        .map_err(|e| format!("runner {} status unreadable: {e}", runner.name))?;
    Ok(Observed::Status(Box::new(status)))
}

/// `DELETE /v1/allocations/{id}`: the runner drains the allocation (SIGTERM, then SIGKILL
/// at its drain deadline). An allocation the runner does not know is already gone.
pub(crate) async fn delete(
    http: &RunnerClient,
    runner: &runner::Model,
    allocation_id: Uuid,
) -> Result<(), ActivityError> {
    let resp = http
        .call(reqwest::Method::DELETE, runner, url(runner, allocation_id))
        .send()
        .await
        .map_err(|e| transient(format!("runner {} unreachable: {e}", runner.name)))?;
    let code = resp.status();
    if code.is_success() || code == reqwest::StatusCode::NOT_FOUND {
        Ok(())
    } else {
        Err(transient(format!(
            "runner {} answered {code} to the drain of {allocation_id}",
            runner.name
        )))
    }
}

/// Why an allocation is not running: its stage, the runner's reason, the exit status and
/// its last log lines.
pub(crate) fn failure(status: &AllocationStatus) -> String {
    let start = status.last_log_lines.len().saturating_sub(LOG_LINES);
    let lines = status.last_log_lines[start..].join("\n");
    format!(
        "{}: {}{}{}",
        status.stage,
        status.message.as_deref().unwrap_or("no reason given"),
        status
            .exit_status
            .as_deref()
            .filter(|s| !status.message.as_deref().is_some_and(|m| m.contains(s)))
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        if lines.is_empty() {
            String::new()
        } else {
            format!("; last log lines:\n{lines}")
        },
    )
}

/// Polls the runner until the allocation is ready (its status) or failed (a refusal naming
/// it as `the {what} allocation …`). Still starting after the readiness time and a pull
/// allowance is retried.
pub(crate) async fn await_ready(
    http: &RunnerClient,
    runner: &runner::Model,
    allocation_id: Uuid,
    readiness_secs: u64,
    what: &str,
    heartbeat: Heartbeat<'_>,
) -> Result<AllocationStatus, ActivityError> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(readiness_secs) + PULL_ALLOWANCE;
    loop {
        let status = match observe(http, runner, allocation_id)
            .await
            .map_err(transient)?
        {
            Observed::Status(status) => *status,
            Observed::Unknown => {
                return Err(transient(format!(
                    "allocation {allocation_id} is not known to runner {} (restarted?)",
                    runner.name
                )));
            }
        };
        heartbeat
            .beat(serde_json::json!({
                "allocation_id": allocation_id, "stage": status.stage.as_str(),
            }))
            .await;
        match status.stage {
            AllocationStage::Ready => return Ok(status),
            AllocationStage::Failed | AllocationStage::Stopped | AllocationStage::Draining => {
                return Err(refuse(format!(
                    "the {what} allocation {allocation_id} {}",
                    failure(&status)
                )));
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(transient(format!(
                    "allocation {allocation_id} is still {} on runner {}",
                    status.stage, runner.name
                )));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Brings the row to `ready` with the runner's address. The runner reports `pulling` and
/// `starting` to the API on its own, possibly after it answers ready here, or never (no
/// report URL): the steps it has evidently passed are recorded first, so the move to
/// `ready` is a legal one. A step a concurrent report already recorded is skipped; the
/// `ready` report decides.
pub(crate) async fn record_ready(
    db: &DatabaseConnection,
    runner: &runner::Model,
    allocation_id: Uuid,
    status: &AllocationStatus,
) -> Result<allocation::Model, ActivityError> {
    let source = ReportSource::of(runner);
    let address = status
        .address
        .clone()
        .ok_or_else(|| transient("the runner reported ready without an address"))?;
    let report = |stage, address| RunnerReport {
        allocation_id,
        generation: status.generation,
        stage,
        address,
        exit_status: None,
        message: None,
        last_log_lines: Vec::new(),
    };
    for step in [AllocationStage::Pulling, AllocationStage::Starting] {
        let row = allocation::Entity::find_by_id(allocation_id)
            .one(db)
            .await
            .map_err(db_err)?
            .ok_or_else(|| transient(format!("allocation {allocation_id} is gone")))?;
        let behind = row
            .stage
            .parse::<AllocationStage>()
            .is_ok_and(|current| current.can_transition_to(step));
        if !behind {
            continue;
        }
        if let Err(e) = allocations::apply_report(db, &source, &report(step, None)).await {
            tracing::debug!(error = %e, %step, "a concurrent report got there first");
        }
    }
    let outcome =
        allocations::apply_report(db, &source, &report(AllocationStage::Ready, Some(address)))
            .await
            .map_err(db_err)?;
    Ok(outcome.allocation().clone())
}

/// Sends the spec of `alloc` and waits until the runner reports it ready, then records
/// that: the whole start of one allocation.
pub(crate) async fn start(
    db: &DatabaseConnection,
    http: &RunnerClient,
    runner: &runner::Model,
    alloc: &allocation::Model,
    manifest: &ArtifactManifest,
    what: &str,
    heartbeat: Heartbeat<'_>,
) -> Result<allocation::Model, ActivityError> {
    put_spec(
        http,
        runner,
        &spec(db, http, alloc, manifest, Desired::Run).await?,
    )
    .await?;
    let readiness = manifest.app.process.readiness_timeout_secs;
    let status = await_ready(http, runner, alloc.id, readiness, what, heartbeat).await?;
    record_ready(db, runner, alloc.id, &status).await
}

/// The host of `env` ([`rhone_core::environment_route_key`]), the route key its RouteOwner
/// serves.
pub(crate) async fn environment_host(
    db: &DatabaseConnection,
    env: &environment::Model,
    domain: &str,
) -> Result<String, ActivityError> {
    let missing = |what: &str| refuse(format!("the {what} of environment {} is gone", env.name));
    let app = app::Entity::find_by_id(env.app_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| missing("app"))?;
    let project = project::Entity::find_by_id(app.project_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| missing("project"))?;
    let ws = workspace::Entity::find_by_id(env.workspace_id)
        .one(db)
        .await
        .map_err(db_err)?
        .ok_or_else(|| missing("workspace"))?;
    Ok(rhone_core::environment_route_key(
        &env.name,
        &env.kind,
        &app.name,
        &project.name,
        &ws.name,
        domain,
    ))
}

/// Tells the runner to drain `row`: the stop command at the row's generation (PUT), or a
/// plain drain request (DELETE) when the runner will not take it. Nothing to do when the
/// runner no longer knows the allocation or it has ended. The runner drains gracefully
/// (SIGTERM, requests finish, SIGKILL only at the drain deadline).
pub(crate) async fn stop_on_runner(
    db: &DatabaseConnection,
    http: &RunnerClient,
    row: &allocation::Model,
) -> Result<(), ActivityError> {
    let Some(runner) = runner_of(db, row).await? else {
        return Ok(());
    };
    match observe(http, &runner, row.id).await.map_err(transient)? {
        Observed::Unknown => return Ok(()),
        Observed::Status(s)
            if matches!(s.stage, AllocationStage::Stopped | AllocationStage::Failed) =>
        {
            return Ok(());
        }
        Observed::Status(_) => {}
    }
    let manifest = manifest(db, &row.artifact_digest).await?;
    let spec = spec(db, http, row, &manifest, Desired::Stop).await?;
    if let Err(e) = put_spec(http, &runner, &spec).await {
        tracing::info!(allocation_id = %row.id, error = ?e, "stop command not taken; asking the runner to drain");
        delete(http, &runner, row.id).await?;
    }
    Ok(())
}
