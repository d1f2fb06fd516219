//! Runtime service bindings: `bindRuntimeService`, `unbindRuntimeService` and
//! `Environment.runtimeServices`. A binding declares that one runtime service (a session
//! store, an idempotency record store …) is available to an environment; the edge
//! (`edge/src/policy.rs`), deploy validation and promotion's `runtime_services_ready` gate
//! read the `ready` ones.
//!
//! One binding per (environment, service): binding a bound service replaces its config (an
//! upsert; the row keeps its id and `created_at`, the audit row keeps the config before).
//! `idempotency` is provided by Rhone itself (the edge's records in the control DB), so it
//! binds with no config, or `{"provider": "rhone"}`. Every other service names its provider
//! and where it is ([`PROVIDERS`]); a config missing a required field is refused, naming the
//! field.
//!
//! A binding is `ready` only once Rhone has reached the service ([`probe`]): before it
//! answers, `bindRuntimeService` probes what the config names, within 3 s, with the
//! environment's secret it names: `redis` is AUTHed with the `password_secret` (when named)
//! and PINGed; `sql` connects to the PostgreSQL URL of its `dsn_secret` and runs `SELECT 1`;
//! `nats` must greet with its `INFO` line (its `credentials_secret` must be set but is not
//! tried). A probe that fails, or a named secret that is not set, stores the binding as
//! [`UNREACHABLE`] with the reason (`error`, scrubbed of secret values) and `probed_at`: the
//! mutation succeeds, the binding exists, and the edge and the gates keep refusing it until
//! a later bind probes it ready. Binding again probes again. Not probed: `idempotency`
//! (it is the control DB) and `s3` (not probed yet), ready on their config as before, with
//! no `probed_at`. Only a developer of the environment gets as far as a probe, so only they
//! can make the API reach out to a host.
//!
//! No secret is stored or shown: a URL carrying credentials (`user:pass@`, or a query
//! parameter named like a password, token or key) is refused, without echoing it; passwords
//! go in a secret of the environment whose NAME the config carries (`password_secret`,
//! `dsn_secret`, `credentials_secret`). Configs read back are passed through [`redact`]
//! whatever wrote them.

mod probe;

use chrono::Utc;
use rhone_core::OperationKind;
use rhone_schema::{
    begin_write,
    entity::{artifact, environment, operation, runtime_service_binding},
    new_id,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, ModelTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{
    ApiState,
    auth::Actor,
    error::ApiError,
    record::{self, Mutation},
    service::promotions,
};

/// The status of a binding the service can be used through (what the edge and the gates
/// look for).
pub const READY: &str = "ready";

/// The status of a binding whose service Rhone could not reach (or whose named secret is not
/// set) when it was bound; `error` says why.
pub const UNREACHABLE: &str = "unreachable";

/// A runtime service an app can require (`[services] required` of `rhone.toml`); the names
/// are the manifest's.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuntimeService {
    /// Durable Vango sessions, so a live session can resume on another allocation.
    SessionStore,
    /// Fan-out of messages between allocations.
    Broadcast,
    /// Records of `Idempotency-Key`s, so the edge forwards an unsafe request once (also to a
    /// sleeping app). Provided by Rhone.
    Idempotency,
    Cache,
    Queue,
    ObjectStorage,
}

impl RuntimeService {
    pub const ALL: [RuntimeService; 6] = [
        Self::SessionStore,
        Self::Broadcast,
        Self::Idempotency,
        Self::Cache,
        Self::Queue,
        Self::ObjectStorage,
    ];

    /// The text stored in `runtime_service_bindings.service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionStore => "session_store",
            Self::Broadcast => "broadcast",
            Self::Idempotency => "idempotency",
            Self::Cache => "cache",
            Self::Queue => "queue",
            Self::ObjectStorage => "object_storage",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What a config field holds, and so how it is checked.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A URL with one of these schemes and no credentials.
    Url(&'static [&'static str]),
    /// The name of a secret of the environment (never its value).
    SecretName,
    /// An S3 bucket name.
    Bucket,
    /// A region name such as `eu-west-1`.
    Region,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// One way to provide a service: its `provider` name and its config fields.
#[derive(Debug)]
struct Provider {
    name: &'static str,
    fields: &'static [Field],
}

const REDIS: Kind = Kind::Url(&["redis", "rediss"]);
const REDIS_FIELDS: &[Field] = &[req("url", REDIS), opt("password_secret", Kind::SecretName)];
const SQL_FIELDS: &[Field] = &[req("dsn_secret", Kind::SecretName)];

/// The providers each service accepts. `idempotency`'s only provider is Rhone.
const PROVIDERS: &[(RuntimeService, &[Provider])] = &[
    (
        RuntimeService::Idempotency,
        &[Provider {
            name: "rhone",
            fields: &[],
        }],
    ),
    (
        RuntimeService::SessionStore,
        &[
            Provider {
                name: "redis",
                fields: REDIS_FIELDS,
            },
            Provider {
                name: "sql",
                fields: SQL_FIELDS,
            },
        ],
    ),
    (
        RuntimeService::Broadcast,
        &[
            Provider {
                name: "redis",
                fields: REDIS_FIELDS,
            },
            Provider {
                name: "nats",
                fields: &[
                    req("url", Kind::Url(&["nats", "tls"])),
                    opt("credentials_secret", Kind::SecretName),
                ],
            },
        ],
    ),
    (
        RuntimeService::Cache,
        &[Provider {
            name: "redis",
            fields: REDIS_FIELDS,
        }],
    ),
    (
        RuntimeService::Queue,
        &[
            Provider {
                name: "redis",
                fields: REDIS_FIELDS,
            },
            Provider {
                name: "sql",
                fields: SQL_FIELDS,
            },
        ],
    ),
    (
        RuntimeService::ObjectStorage,
        &[Provider {
            name: "s3",
            fields: &[
                req("bucket", Kind::Bucket),
                opt("endpoint", Kind::Url(&["https", "http"])),
                opt("region", Kind::Region),
                opt("credentials_secret", Kind::SecretName),
            ],
        }],
    ),
];

fn providers_of(service: RuntimeService) -> &'static [Provider] {
    PROVIDERS
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, p)| *p)
        .unwrap_or(&[])
}

/// `"redis" (url; optional password_secret), "sql" (dsn_secret)`, for error messages.
fn describe(providers: &[Provider]) -> String {
    providers
        .iter()
        .map(|p| {
            let need: Vec<&str> = p
                .fields
                .iter()
                .filter(|f| f.required)
                .map(|f| f.name)
                .collect();
            let may: Vec<&str> = p
                .fields
                .iter()
                .filter(|f| !f.required)
                .map(|f| f.name)
                .collect();
            let mut parts = Vec::new();
            if !need.is_empty() {
                parts.push(need.join(", "));
            }
            if !may.is_empty() {
                parts.push(format!("optional {}", may.join(", ")));
            }
            if parts.is_empty() {
                format!("{:?}", p.name)
            } else {
                format!("{:?} ({})", p.name, parts.join("; "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A key as it may appear in an error: config keys are the caller's own text, so only a
/// plain identifier is repeated.
fn shown_key(key: &str) -> Option<&str> {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain.then_some(key)
}

/// Checks a binding's config and returns it as stored (the provider named, the fields it
/// gave). A refusal names the field (`config.url`) and the rule, never the value.
pub(crate) fn check_config(
    service: RuntimeService,
    config: Option<&Value>,
) -> Result<Value, ApiError> {
    let providers = providers_of(service);
    let empty = Map::new();
    let map = match config {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid(
                "config",
                format!(
                    "must be a JSON object naming the provider of {}: {}",
                    service.as_str(),
                    describe(providers)
                ),
            ));
        }
    };
    let provider = match map.get("provider") {
        // Idempotency has one provider, so it need not be named.
        None if service == RuntimeService::Idempotency => &providers[0],
        None => {
            return Err(ApiError::invalid(
                "config.provider",
                format!(
                    "is required for {}: one of {}",
                    service.as_str(),
                    describe(providers)
                ),
            ));
        }
        Some(Value::String(name)) => providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                let why = if service == RuntimeService::Idempotency {
                    "idempotency is provided by Rhone (the edge keeps its records in the control database): must be \"rhone\", or leave the config out".to_owned()
                } else {
                    format!(
                        "is not a provider of {}: one of {}",
                        service.as_str(),
                        describe(providers)
                    )
                };
                ApiError::invalid("config.provider", why)
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "config.provider",
                format!("must be a string: one of {}", describe(providers)),
            ));
        }
    };
    let mut stored = Map::new();
    stored.insert("provider".into(), Value::String(provider.name.to_owned()));
    for key in map.keys().filter(|k| *k != "provider") {
        if !provider.fields.iter().any(|f| f.name == key) {
            let expected: Vec<&str> = provider.fields.iter().map(|f| f.name).collect();
            let expected = if expected.is_empty() {
                "it takes no other field".to_owned()
            } else {
                format!("expected {}", expected.join(", "))
            };
            let (field, what) = match shown_key(key) {
                Some(k) => (format!("config.{k}"), "is not a field"),
                None => ("config".to_owned(), "has a field that is not one"),
            };
            return Err(ApiError::invalid(
                field,
                format!(
                    "{what} of the {:?} provider of {}; {expected}",
                    provider.name,
                    service.as_str()
                ),
            ));
        }
    }
    for f in provider.fields {
        let field = format!("config.{}", f.name);
        match map.get(f.name) {
            None | Some(Value::Null) if f.required => {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "is required by the {:?} provider of {}: {}",
                        provider.name,
                        service.as_str(),
                        expectation(f.kind)
                    ),
                ));
            }
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                check_value(f.kind, text).map_err(|why| ApiError::invalid(field, why))?;
                stored.insert(f.name.to_owned(), Value::String(text.clone()));
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    field,
                    format!("must be a string: {}", expectation(f.kind)),
                ));
            }
        }
    }
    Ok(Value::Object(stored))
}

/// What a field of `kind` must be, for messages.
fn expectation(kind: Kind) -> String {
    match kind {
        Kind::Url(schemes) => {
            let schemes: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            format!("a {} URL without credentials", schemes.join(" or "))
        }
        Kind::SecretName => "the name of a secret of the environment (uppercase letters, digits and _, like \"SESSION_DSN\")".to_owned(),
        Kind::Bucket => "an S3 bucket name (3 to 63 lowercase letters, digits, '.' and '-')".to_owned(),
        Kind::Region => "a region name like \"eu-west-1\"".to_owned(),
    }
}

/// Checks one string field; `Err` says why, without repeating the value.
fn check_value(kind: Kind, text: &str) -> Result<(), String> {
    match kind {
        Kind::Url(schemes) => check_url(schemes, text),
        Kind::SecretName => {
            let mut chars = text.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && text.len() <= 128;
            if ok {
                Ok(())
            } else {
                Err(format!("must be {}", expectation(kind)))
            }
        }
        Kind::Bucket => {
            let ok = (3..=63).contains(&text.len())
                && text
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
                && !text.starts_with(['.', '-'])
                && !text.ends_with(['.', '-']);
            if ok {
                Ok(())
            } else {
                Err(format!("must be {}", expectation(kind)))
            }
        }
        Kind::Region => {
            let ok = (1..=32).contains(&text.len())
                && text
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if ok {
                Ok(())
            } else {
                Err(format!("must be {}", expectation(kind)))
            }
        }
    }
}

/// Query parameter names that carry a credential.
fn secret_looking(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "pass",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "sig",
    ]
    .iter()
    .any(|s| name.contains(s))
}

fn check_url(schemes: &'static [&'static str], text: &str) -> Result<(), String> {
    let kind = Kind::Url(schemes);
    if text.len() > 2048 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must be {} (at most 2048 characters, no spaces)",
            expectation(kind)
        ));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("must be {}", expectation(kind)));
    };
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(format!("must be {}", expectation(kind)));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Err(
            "must not carry credentials (the user:password@ part): store the password as a secret of the environment and name it in config.password_secret (config.credentials_secret for nats)"
                .to_owned(),
        );
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("must name a host: {}", expectation(kind)));
    }
    let query = rest[end..]
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    let secret_param = query
        .split('&')
        .filter_map(|pair| pair.split('=').next())
        .any(secret_looking);
    if secret_param {
        return Err(
            "must not carry credentials in its query string: store them as a secret of the environment and name it in the config's *_secret field"
                .to_owned(),
        );
    }
    Ok(())
}

/// A config as it may be shown (responses, audit rows): the userinfo of any URL and the
/// value of any key named like a credential (other than a `*_secret` secret NAME) replaced
/// by `***`. Bindings this API writes hold neither; rows written by other means may.
pub fn redact(config: &Value) -> Value {
    match config {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let names_a_secret = k.ends_with("_secret") && v.is_string();
                    let value = if secret_looking(k) && !names_a_secret {
                        Value::String("***".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_url(s)),
        other => other.clone(),
    }
}

/// `scheme://***@host…` for a URL with userinfo, and `***` for the values of its
/// credential-looking query parameters; any other text unchanged.
fn redact_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if secret_looking(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            let mut out = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
            out
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The bindings of an environment the caller has already been allowed to read, by service.
pub(crate) async fn bindings_of(
    db: &DatabaseConnection,
    environment_id: Uuid,
) -> Result<Vec<runtime_service_binding::Model>, ApiError> {
    Ok(runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(runtime_service_binding::Column::Service)
        .order_by_asc(runtime_service_binding::Column::CreatedAt)
        .all(db)
        .await?)
}

/// The environment, locked for update on PostgreSQL (SQLite writers are serialized
/// already), if the actor may change it: two binds of one service cannot both insert.
async fn environment_locked<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    id: Uuid,
) -> Result<environment::Model, ApiError> {
    let env = promotions::environment_for(db, actor, id).await?;
    environment::Entity::find_by_id(env.id)
        .lock_exclusive()
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("environment", id))
}

/// What `bindRuntimeService` did.
pub(crate) struct Bound {
    pub binding: runtime_service_binding::Model,
    pub environment: environment::Model,
    pub operation: operation::Model,
    /// The service was bound before, and its config was replaced.
    pub replaced: bool,
}

/// Binds `service` to an environment with `config` (see the module's rules), or replaces
/// the config of its binding; needs developer. The service is probed first, outside any
/// transaction (a probe may take [`probe::PROBE_TIMEOUT`]); then the binding (`ready` or
/// `unreachable`), its `environment_update` operation (`applied`) and the audit row are
/// written in one transaction.
pub(crate) async fn bind(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    service: RuntimeService,
    config: Option<Value>,
) -> Result<Bound, ApiError> {
    let db = &state.db;
    let config = check_config(service, config.as_ref())?;
    // Allowed before probing: nobody else makes the API reach out to a host.
    let env = promotions::environment_for(db, actor, environment_id).await?;
    let (status, error, probed_at) = match probe::probe(state, env.id, &config).await? {
        probe::Outcome::Reached => (READY, None, Some(Utc::now())),
        probe::Outcome::NotProbed => (READY, None, None),
        probe::Outcome::Unreachable(why) => (UNREACHABLE, Some(why), Some(Utc::now())),
    };
    let txn = begin_write(db).await?;
    let env = environment_locked(&txn, actor, env.id).await?;
    let existing = runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(env.id))
        .filter(runtime_service_binding::Column::Service.eq(service.as_str()))
        .order_by_asc(runtime_service_binding::Column::CreatedAt)
        .all(&txn)
        .await?;
    let before = existing
        .first()
        .map(|b| json!({ "status": b.status, "config": redact(&b.config), "error": b.error }));
    let mut rows = existing.into_iter();
    let binding = match rows.next() {
        Some(row) => {
            // Rows written before this API kept one binding per service may repeat one.
            for extra in rows {
                extra.delete(&txn).await?;
            }
            let mut row: runtime_service_binding::ActiveModel = row.into();
            row.status = Set(status.to_owned());
            row.config = Set(config);
            row.error = Set(error);
            row.probed_at = Set(probed_at);
            row.update(&txn).await?
        }
        None => {
            runtime_service_binding::ActiveModel {
                id: Set(new_id()),
                environment_id: Set(env.id),
                service: Set(service.as_str().to_owned()),
                status: Set(status.to_owned()),
                config: Set(config),
                created_at: Set(Utc::now()),
                error: Set(error),
                probed_at: Set(probed_at),
            }
            .insert(&txn)
            .await?
        }
    };
    let replaced = before.is_some();
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::EnvironmentUpdate,
        action: "environment.bind_runtime_service",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "environment",
        target_id: env.id.to_string(),
        detail: json!({
            "service": service.as_str(),
            "status": binding.status,
            "error": binding.error,
            "config": redact(&binding.config),
            "before": before,
        }),
    };
    let op = record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(
        environment_id = %env.id,
        service = service.as_str(),
        operation_id = %op.id,
        replaced,
        status = %binding.status,
        error = binding.error.as_deref(),
        "runtime service bound"
    );
    Ok(Bound {
        binding,
        environment: env,
        operation: op,
        replaced,
    })
}

/// What `unbindRuntimeService` did.
pub(crate) struct Unbound {
    pub environment: environment::Model,
    pub operation: operation::Model,
}

/// Removes the binding of `service` from an environment; needs developer. Refused
/// (CONFLICT) while the artifact serving the environment requires the service: the edge and
/// the app depend on it there; deploy and promote an artifact that does not require it
/// first. NOT_FOUND when the service is not bound.
pub(crate) async fn unbind(
    state: &ApiState,
    actor: &Actor,
    environment_id: Uuid,
    service: RuntimeService,
) -> Result<Unbound, ApiError> {
    let db = &state.db;
    let txn = begin_write(db).await?;
    let env = environment_locked(&txn, actor, environment_id).await?;
    let rows = runtime_service_binding::Entity::find()
        .filter(runtime_service_binding::Column::EnvironmentId.eq(env.id))
        .filter(runtime_service_binding::Column::Service.eq(service.as_str()))
        .all(&txn)
        .await?;
    let Some(first) = rows.first().cloned() else {
        return Err(ApiError::NotFound {
            what: "runtime service binding",
            id: format!("{} of environment {:?}", service.as_str(), env.name),
        });
    };
    if let Some(owner) = promotions::owner_of(&txn, env.id).await? {
        let required = artifact::Entity::find_by_id(owner.artifact_digest.clone())
            .one(&txn)
            .await?
            .is_some_and(|a| requires(&a.manifest, service));
        if required {
            return Err(ApiError::Conflict(format!(
                "environment {:?} serves artifact {} (deployment {}), which requires {}: deploy and promote an artifact that does not, then unbind it",
                env.name,
                owner.artifact_digest,
                owner.deployment_id,
                service.as_str()
            )));
        }
    }
    for row in rows {
        row.delete(&txn).await?;
    }
    let m = Mutation {
        operation_id: new_id(),
        kind: OperationKind::EnvironmentUpdate,
        action: "environment.unbind_runtime_service",
        actor: actor.subject(),
        workspace_id: Some(env.workspace_id),
        target_type: "environment",
        target_id: env.id.to_string(),
        detail: json!({
            "service": service.as_str(),
            "before": { "status": first.status, "config": redact(&first.config) },
        }),
    };
    let op = record::applied(&txn, &m).await?;
    txn.commit().await?;
    tracing::info!(
        environment_id = %env.id,
        service = service.as_str(),
        operation_id = %op.id,
        "runtime service unbound"
    );
    Ok(Unbound {
        environment: env,
        operation: op,
    })
}

/// Whether an artifact manifest (`app.required_services`) requires `service`.
fn requires(manifest: &Value, service: RuntimeService) -> bool {
    manifest["app"]["required_services"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s.as_str() == Some(service.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(service: RuntimeService, config: Option<&Value>) -> Value {
        match check_config(service, config) {
            Ok(v) => v,
            Err(e) => panic!("{config:?} refused: {e}"),
        }
    }

    fn refused(service: RuntimeService, config: Value) -> String {
        match check_config(service, Some(&config)) {
            Ok(v) => panic!("{config} accepted as {v}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn idempotency_needs_no_config() {
        let rhone = json!({ "provider": "rhone" });
        assert_eq!(accepted(RuntimeService::Idempotency, None), rhone);
        assert_eq!(
            accepted(RuntimeService::Idempotency, Some(&json!({}))),
            rhone
        );
        assert_eq!(accepted(RuntimeService::Idempotency, Some(&rhone)), rhone);
        let e = refused(RuntimeService::Idempotency, json!({ "provider": "redis" }));
        assert!(
            e.starts_with("invalid config.provider: idempotency is provided by Rhone"),
            "{e}"
        );
        let e = refused(RuntimeService::Idempotency, json!({ "url": "redis://h" }));
        assert!(e.starts_with("invalid config.url: is not a field"), "{e}");
    }

    #[test]
    fn providers_need_their_fields() {
        let s = RuntimeService::SessionStore;
        let ok = json!({ "provider": "redis", "url": "rediss://cache.internal:6380/0" });
        assert_eq!(accepted(s, Some(&ok)), ok);
        let sql = json!({ "provider": "sql", "dsn_secret": "SESSION_DSN" });
        assert_eq!(accepted(s, Some(&sql)), sql);
        for (config, expected) in [
            (
                json!(null),
                "invalid config.provider: is required for session_store",
            ),
            (json!("redis"), "invalid config: must be a JSON object"),
            (
                json!({ "provider": "redis" }),
                "invalid config.url: is required by the \"redis\" provider of session_store",
            ),
            (
                json!({ "provider": "memcached" }),
                "invalid config.provider: is not a provider of session_store: one of \"redis\" (url; optional password_secret), \"sql\" (dsn_secret)",
            ),
            (
                json!({ "provider": "sql", "dsn_secret": "lower" }),
                "invalid config.dsn_secret: must be the name of a secret",
            ),
            (
                json!({ "provider": "redis", "url": "http://h" }),
                "invalid config.url: must be a redis:// or rediss:// URL",
            ),
            (
                json!({ "provider": "redis", "url": 5 }),
                "invalid config.url: must be a string",
            ),
            (
                json!({ "provider": "redis", "url": "redis://h", "dsn": "x" }),
                "invalid config.dsn: is not a field of the \"redis\" provider",
            ),
            (
                json!({ "provider": "redis", "url": "redis:///0" }),
                "invalid config.url: must name a host",
            ),
        ] {
            let e = refused(s, config.clone());
            assert!(e.starts_with(expected), "{config}: {e}");
        }
        let e = refused(
            RuntimeService::ObjectStorage,
            json!({ "provider": "s3", "bucket": "Bad_Bucket" }),
        );
        assert!(e.starts_with("invalid config.bucket"), "{e}");
        let s3 = json!({ "provider": "s3", "bucket": "assets.acme", "endpoint": "https://s3.example.com", "region": "eu-west-1", "credentials_secret": "S3_KEYS" });
        assert_eq!(accepted(RuntimeService::ObjectStorage, Some(&s3)), s3);
    }

    #[test]
    fn credentials_are_refused_without_being_repeated() {
        for url in [
            "redis://default:hunter2-pw@cache:6379",
            "redis://hunter2-pw@cache:6379",
            "redis://cache:6379/0?password=hunter2-pw",
            "redis://cache:6379/0?x=1&auth_token=hunter2-pw#f",
        ] {
            let e = refused(
                RuntimeService::Cache,
                json!({ "provider": "redis", "url": url }),
            );
            assert!(
                e.starts_with("invalid config.url: must not carry credentials"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = refused(
            RuntimeService::Cache,
            json!({ "provider": "redis", "url": "redis://a b@c" }),
        );
        assert!(!e.contains("a b"), "{e}");
    }

    #[test]
    fn redaction() {
        let config = json!({
            "provider": "redis",
            "url": "redis://default:hunter2@cache:6379/0?db=1&password=hunter2#x",
            "password": "hunter2",
            "password_secret": "REDIS_PASSWORD",
            "nested": ["nats://u:hunter2@n:4222"],
        });
        let shown = redact(&config);
        assert!(!shown.to_string().contains("hunter2"), "{shown}");
        assert_eq!(shown["url"], "redis://***@cache:6379/0?db=1&password=***#x");
        assert_eq!(shown["password"], "***");
        assert_eq!(shown["password_secret"], "REDIS_PASSWORD");
        assert_eq!(shown["nested"][0], "nats://***@n:4222");
        assert_eq!(redact(&json!("plain text")), json!("plain text"));
    }

    #[test]
    fn every_service_has_a_provider() {
        for s in RuntimeService::ALL {
            assert!(!providers_of(s).is_empty(), "{s:?}");
            assert_eq!(RuntimeService::parse(s.as_str()), Some(s));
        }
        assert!(requires(
            &json!({ "app": { "required_services": ["idempotency"] } }),
            RuntimeService::Idempotency
        ));
        assert!(!requires(&json!({}), RuntimeService::Idempotency));
    }
}
