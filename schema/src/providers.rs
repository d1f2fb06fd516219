//! Database providers and the bindings that provision on them. An environment owns the
//! database it writes: each read-write binding gets a database and a role of its own, named
//! after the environment ([`database_name`]); a binding may instead *read* another
//! environment's database with a role of its own that can only select. What may never
//! happen is the seed's trap, "giving preview and production the same mutable database by
//! accident": [`write_conflict`] says why a binding would.

use chrono::Utc;
use rhone_core::secret::Secret;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use crate::{
    SchemaError,
    entity::{
        database_provider,
        environment::{self, KIND_PRODUCTION},
        provider_binding::{self, ACCESS_READ_ONLY, ACCESS_READ_WRITE},
    },
    new_id,
    secrets::Keyring,
};

/// The database a read-write binding of `environment_id` provisions.
pub fn database_name(environment_id: Uuid) -> String {
    format!("env_{}", environment_id.simple())
}

/// The role a binding of `environment_id` with `access` connects as: the database's owner
/// for read-write, a role of its own for read-only.
pub fn role_name(environment_id: Uuid, access: &str) -> String {
    if access == ACCESS_READ_ONLY {
        format!("env_{}_ro", environment_id.simple())
    } else {
        database_name(environment_id)
    }
}

/// What is wrong with `name` as a database to bind (lowercase letters, digits and `_`,
/// starting with a letter or `_`, at most 63 bytes), if anything.
pub fn database_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => Some("is empty"),
        _ if name.len() > 63 => Some("is longer than 63 bytes"),
        Some(c) if !(c.is_ascii_lowercase() || c == '_') => {
            Some("must start with a lowercase letter or _")
        }
        _ if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') => {
            Some("may hold only lowercase letters, digits and _")
        }
        _ => None,
    }
}

/// Registers provider `name`, its admin URL sealed under `keys`.
pub async fn add<C: ConnectionTrait>(
    db: &C,
    keys: &Keyring,
    name: &str,
    host: &str,
    admin_url: &Secret,
    point_in_time_recovery: bool,
    created_by: &str,
) -> Result<database_provider::Model, SchemaError> {
    let id = new_id();
    let row = database_provider::ActiveModel {
        id: Set(id),
        name: Set(name.to_owned()),
        kind: Set(database_provider::KIND_POSTGRES.to_owned()),
        host: Set(host.to_owned()),
        sealed_admin_url: Set(keys.seal_provider(id, admin_url)),
        point_in_time_recovery: Set(point_in_time_recovery),
        created_by: Set(created_by.to_owned()),
        created_at: Set(Utc::now()),
    };
    database_provider::Entity::insert(row).exec(db).await?;
    database_provider::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "database provider",
            id: name.to_owned(),
        })
}

/// Every provider, by name.
pub async fn list<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<database_provider::Model>, SchemaError> {
    Ok(database_provider::Entity::find()
        .order_by_asc(database_provider::Column::Name)
        .all(db)
        .await?)
}

/// Provider `name`; NOT_FOUND names it.
pub async fn named<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<database_provider::Model, SchemaError> {
    database_provider::Entity::find()
        .filter(database_provider::Column::Name.eq(name))
        .one(db)
        .await?
        .ok_or_else(|| SchemaError::NotFound {
            what: "database provider",
            id: name.to_owned(),
        })
}

/// The database bindings of environment `environment_id`, oldest first.
pub async fn bindings_of<C: ConnectionTrait>(
    db: &C,
    environment_id: Uuid,
) -> Result<Vec<provider_binding::Model>, SchemaError> {
    Ok(provider_binding::Entity::find()
        .filter(provider_binding::Column::EnvironmentId.eq(environment_id))
        .order_by_asc(provider_binding::Column::CreatedAt)
        .all(db)
        .await?)
}

/// The database environment `environment_id` writes (its read-write binding), if any.
pub async fn owned_database<C: ConnectionTrait>(
    db: &C,
    environment_id: Uuid,
) -> Result<Option<provider_binding::Model>, SchemaError> {
    Ok(bindings_of(db, environment_id)
        .await?
        .into_iter()
        .find(|b| b.access == ACCESS_READ_WRITE))
}

/// Why binding `env` to `database` on `provider` with `access` would let a non-production
/// environment write a production database, or production share a database that a
/// non-production environment writes; `None` when it would not.
pub async fn write_conflict<C: ConnectionTrait>(
    db: &C,
    env: &environment::Model,
    provider: &str,
    database: &str,
    access: &str,
) -> Result<Option<String>, SchemaError> {
    let others = provider_binding::Entity::find()
        .filter(provider_binding::Column::Provider.eq(provider))
        .filter(provider_binding::Column::Resource.eq(database))
        .filter(provider_binding::Column::EnvironmentId.ne(env.id))
        .find_also_related(environment::Entity)
        .all(db)
        .await?;
    for (binding, other) in others {
        let Some(other) = other else { continue };
        let production_db = other.kind == KIND_PRODUCTION && binding.access == ACCESS_READ_WRITE;
        if env.kind != KIND_PRODUCTION && access == ACCESS_READ_WRITE && production_db {
            return Ok(Some(format!(
                "environment {:?} is a {} environment and database {database} on {provider} is production environment {:?}'s: \
                 a {} gets a database of its own, or reads this one with read-only access",
                env.name, env.kind, other.name, env.kind
            )));
        }
        if env.kind == KIND_PRODUCTION
            && other.kind != KIND_PRODUCTION
            && binding.access == ACCESS_READ_WRITE
        {
            return Ok(Some(format!(
                "database {database} on {provider} is written by {} environment {:?}: production binds a database no {} writes",
                other.kind, other.name, other.kind
            )));
        }
    }
    Ok(None)
}

/// A provider's admin URL, checked: `postgres://` or `postgresql://`, with a host and a
/// user. Returns its `host:port` (port 5432 when not given); the error never repeats the
/// URL, which may carry a password.
pub fn admin_url_host(admin_url: &Secret) -> Result<String, String> {
    let url = url::Url::parse(admin_url.expose()).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "has scheme {:?}; a PostgreSQL provider's URL starts postgres://",
            url.scheme()
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("names no host")?;
    if url.username().is_empty() {
        return Err("names no user (the provider's admin role)".to_owned());
    }
    Ok(format!("{host}:{}", url.port().unwrap_or(5432)))
}

/// `url` (a PostgreSQL URL) with its database replaced by `database`.
pub fn in_database(url: &Secret, database: &str) -> Result<Secret, String> {
    let mut parsed =
        url::Url::parse(url.expose()).map_err(|e| format!("a database URL is not a URL ({e})"))?;
    parsed.set_path(&format!("/{database}"));
    Ok(Secret::new(parsed.to_string()))
}

/// The URL of `database` on the provider of `admin_url`, as `role` with `password`: the
/// admin URL's host, port and parameters, its credentials and database replaced.
pub fn database_url(
    admin_url: &Secret,
    role: &str,
    password: &Secret,
    database: &str,
) -> Result<Secret, String> {
    let mut url = url::Url::parse(in_database(admin_url, database)?.expose())
        .map_err(|e| format!("the provider's admin URL is not a URL ({e})"))?;
    url.set_username(role)
        .and_then(|()| url.set_password(Some(password.expose())))
        .map_err(|()| "the provider's admin URL takes no credentials".to_owned())?;
    Ok(Secret::new(url.to_string()))
}

/// A new random password for a role: 32 hex digits (128 bits), safe inside SQL quotes.
pub fn new_password() -> Secret {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

/// A connection to a provider's `url` (one at a time, no statement logging) made within
/// `timeout`; the error names `who` and never the URL.
pub async fn connect(
    url: &Secret,
    who: &str,
    timeout: std::time::Duration,
) -> Result<sea_orm::DatabaseConnection, String> {
    let mut options = sea_orm::ConnectOptions::new(url.expose());
    options
        .max_connections(1)
        .min_connections(0)
        .connect_timeout(timeout)
        .acquire_timeout(timeout)
        .sqlx_logging(false);
    // The pool retries a refused connection until its timeout and then says only that it
    // timed out: a plain TCP connection first names what is wrong (refused, no route).
    if let Some((host, port)) = url::Url::parse(url.expose())
        .ok()
        .and_then(|u| Some((u.host_str()?.to_owned(), u.port().unwrap_or(5432))))
    {
        match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("cannot connect to {who}: {e}")),
            Err(_) => {
                return Err(format!(
                    "cannot connect to {who}: no answer within {} s",
                    timeout.as_secs()
                ));
            }
        }
    }
    sea_orm::Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to {who}: {}", scrub(&e.to_string(), &[url])))
}

/// `text` with every value of `secrets`, and the password of any that is a URL, replaced
/// by `***`.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        let value = secret.expose();
        let password = url::Url::parse(value)
            .ok()
            .and_then(|u| u.password().map(str::to_owned));
        for hidden in std::iter::once(value.to_owned()).chain(password) {
            if hidden.len() >= 4 {
                text = text.replace(&hidden, "***");
            }
        }
    }
    text
}
