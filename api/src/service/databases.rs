//! Databases: PostgreSQL provider servers an operator registers (`addDatabaseProvider`,
//! `databaseProviders`) and environments bound to a database on one (`bindDatabase`,
//! `Environment.databases`). A binding is a `database_bind` operation: the API checks it
//! and records the binding `provisioning`; its workflow provisions the database and role
//! and sets `DATABASE_URL`, so no password passes through here or a workflow's history.
//!
//! The admin URL of a provider is a secret: it comes in once, is sealed under the
//! operator's key before it is written, and is never shown or logged.

use rhone_core::{OperationId, OperationKind, secret::Secret};
use rhone_schema::{
    begin_write,
    entity::{
        database_provider, operation,
        provider_binding::{self, ACCESS_READ_ONLY, ACCESS_READ_WRITE, STATUS_PROVISIONING},
    },
    new_id, providers,
    secrets::{self, Keyring},
};
use rhone_workflows::{DatabaseBindInput, DatabaseBindWorkflow};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use temporalio_client::WorkflowStartOptions;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    record::{self, Mutation},
    service::{environments::start_failed, fleet::require_operator, promotions, validate},
};

fn keys(state: &ApiState) -> Result<&Keyring, ApiError> {
    state.secrets.as_deref().ok_or_else(|| {
        ApiError::Conflict(format!(
            "this API has no secrets key, so it cannot keep a provider's URL nor a DATABASE_URL: its operator sets {} (or {}); `rhone dev` makes one",
            secrets::KEY_VAR,
            secrets::KEY_FILE_VAR
        ))
    })
}

/// A provider just registered.
pub(crate) struct AddedProvider {
    pub provider: database_provider::Model,
    pub operation: operation::Model,
}

/// Registers a PostgreSQL server as provider `name` (platform operators only). The admin
/// URL is checked by connecting with it: its role must be able to create databases and
/// roles. Errors never repeat the URL.
pub(crate) async fn add_provider(
    state: &ApiState,
    actor: &Actor,
    name: &str,
    admin_url: Secret,
    point_in_time_recovery: bool,
) -> Result<AddedProvider, ApiError> {
    require_operator(&state.db, actor, "database providers").await?;
    let name = validate::name("name", name)?;
    let keys = keys(state)?;
    let host =
        providers::admin_url_host(&admin_url).map_err(|p| ApiError::invalid("adminUrl", p))?;
    probe(&admin_url, &host).await?;
    let txn = begin_write(&state.db).await?;
    let provider = providers::add(
        &txn,
        keys,
        name.as_str(),
        &host,
        &admin_url,
        point_in_time_recovery,
        &actor.subject(),
    )
    .await
    .map_err(|e| match e {
        rhone_schema::SchemaError::Conflict { .. } => {
            ApiError::Conflict(format!("database provider {name} exists"))
        }
        other => other.into(),
    })?;
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::ProviderAdd,
        action: "database_provider.add",
        actor: actor.subject(),
        workspace_id: None,
        target_type: "database_provider",
        target_id: provider.name.clone(),
        detail: json!({ "host": host, "point_in_time_recovery": point_in_time_recovery }),
    };
    let operation = record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(provider = %provider.name, %host, "database provider added");
    Ok(AddedProvider {
        provider,
        operation,
    })
}

/// How long a provider being added has to answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects with `admin_url` and checks that its role may create databases and roles.
async fn probe(admin_url: &Secret, host: &str) -> Result<(), ApiError> {
    let who = format!("the server at {host}");
    let server = providers::connect(admin_url, &who, PROBE_TIMEOUT)
        .await
        .map_err(|e| ApiError::invalid("adminUrl", e))?;
    let row = server
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_user AS who, rolsuper OR (rolcreatedb AND rolcreaterole) AS able \
             FROM pg_roles WHERE rolname = current_user",
        ))
        .await;
    server.close().await.ok();
    let row = row
        .map_err(|e| ApiError::invalid("adminUrl", providers::scrub(&e.to_string(), &[admin_url])))?
        .ok_or_else(|| ApiError::invalid("adminUrl", "its role is not in pg_roles"))?;
    let able: bool = row.try_get("", "able").unwrap_or(false);
    if !able {
        let who: String = row.try_get("", "who").unwrap_or_default();
        return Err(ApiError::invalid(
            "adminUrl",
            format!(
                "role {who} can not create both databases and roles (CREATEDB and CREATEROLE); a provider's admin role needs them"
            ),
        ));
    }
    Ok(())
}

/// Every provider, by name (anyone signed in: names and hosts, never URLs).
pub(crate) async fn list_providers(
    state: &ApiState,
) -> Result<Vec<database_provider::Model>, ApiError> {
    Ok(providers::list(&state.db).await?)
}

/// A binding being provisioned, and its operation.
pub(crate) struct Bound {
    pub binding: provider_binding::Model,
    pub operation: operation::Model,
}

/// Binds an environment to a database on `provider`; needs developer. Read-write (the
/// default) provisions the environment's own database; `read_only` reads `database`,
/// another environment's. Refused, before anything is written: a non-production
/// environment writing production's database (or production sharing one a preview
/// writes), a second database for one environment.
pub(crate) async fn bind(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    provider: &str,
    database: Option<&str>,
    read_only: bool,
) -> Result<Bound, ApiError> {
    let db = &state.db;
    keys(state)?;
    let txn = begin_write(db).await?;
    let env = promotions::environment_for(&txn, actor, environment_id).await?;
    let provider = providers::named(&txn, provider).await?;
    let access = if read_only {
        ACCESS_READ_ONLY
    } else {
        ACCESS_READ_WRITE
    };
    let own = providers::database_name(env.id);
    let database = match (database, read_only) {
        (Some(name), _) => {
            if let Some(problem) = providers::database_name_problem(name) {
                return Err(ApiError::invalid("database", format!("{name:?} {problem}")));
            }
            name.to_owned()
        }
        (None, true) => {
            return Err(ApiError::invalid(
                "database",
                "a read-only binding names the database it reads (another environment's)",
            ));
        }
        (None, false) => own.clone(),
    };
    if let Some(why) =
        providers::write_conflict(&txn, &env, &provider.name, &database, access).await?
    {
        return Err(ApiError::Conflict(format!("binding refused: {why}")));
    }
    if !read_only && database != own {
        return Err(ApiError::invalid(
            "database",
            format!(
                "a read-write binding provisions the environment's own database ({own}); name another environment's database to read it (readOnly: true)"
            ),
        ));
    }
    let existing = providers::bindings_of(&txn, env.id).await?;
    if let Some(other) = existing.iter().find(|b| {
        (&b.provider, &b.resource, &b.access) != (&provider.name, &database, &access.to_owned())
    }) {
        return Err(ApiError::Conflict(format!(
            "environment {:?} is bound to database {} on {} ({}): an environment has one DATABASE_URL",
            env.name, other.resource, other.provider, other.access
        )));
    }
    let role = providers::role_name(env.id, access);
    let binding = match existing.into_iter().next() {
        // Bound the same way before (a failed binding, or provisioning again): again.
        Some(b) => {
            let mut row: provider_binding::ActiveModel = b.into();
            row.status = Set(STATUS_PROVISIONING.to_owned());
            row.error = Set(None);
            row.update(&txn).await?
        }
        None => {
            provider_binding::ActiveModel {
                id: Set(new_id()),
                environment_id: Set(env.id),
                provider: Set(provider.name.clone()),
                resource: Set(database.clone()),
                status: Set(STATUS_PROVISIONING.to_owned()),
                created_at: Set(chrono::Utc::now()),
                role: Set(role.clone()),
                access: Set(access.to_owned()),
                error: Set(None),
            }
            .insert(&txn)
            .await?
        }
    };
    let operation_id = new_id();
    let m = Mutation {
        operation_id,
        kind: OperationKind::DatabaseBind,
        action: "environment.bind_database",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "environment",
        target_id: env.id.to_string(),
        detail: json!({
            "binding_id": binding.id,
            "provider": provider.name,
            "database": database,
            "role": role,
            "access": access,
        }),
    };
    let op = record::requested(&txn, &m).await?;
    txn.commit().await?;
    let input = DatabaseBindInput {
        operation_id: OperationId(operation_id),
        binding_id: binding.id,
    };
    let options = WorkflowStartOptions::new(state.task_queue.clone(), m.workflow_id()).build();
    match state
        .temporal
        .start_workflow(DatabaseBindWorkflow::run, input, options)
        .await
    {
        Ok(_) => {
            tracing::info!(workflow_id = %op.workflow_id, binding = %binding.id, "database binding started");
            Ok(Bound {
                binding,
                operation: op,
            })
        }
        Err(err) => Err(start_failed(db, &m, err).await),
    }
}

/// The database bindings of an environment the caller may see.
pub(crate) async fn of_environment<C: ConnectionTrait>(
    db: &C,
    environment_id: Uuid,
) -> Result<Vec<provider_binding::Model>, ApiError> {
    Ok(providers::bindings_of(db, environment_id).await?)
}
