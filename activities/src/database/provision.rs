//! `provision_database`: a binding's role and database made (or found) on its provider, and
//! `DATABASE_URL` set for its environment.
//!
//! - read-write: the role owns a database of its own; nobody else may connect to it
//!   (`REVOKE ALL … FROM PUBLIC`).
//! - read-only: the database exists (another environment's); the role may connect, use
//!   schema `public` and select from its tables, now and later (default privileges of the
//!   database's owner), and its sessions are read-only by default.
//!
//! Idempotent: each attempt sets a new password on the role and seals the URL with it, so
//! the last attempt's password is the one that works.

use rhone_core::secret::Secret;
use rhone_schema::{
    entity::{
        environment,
        provider_binding::{self, ACCESS_READ_ONLY, STATUS_FAILED, STATUS_READY},
    },
    providers, secrets,
};
use rhone_workflows::activities::{DatabaseProvisioned, ProvisionDatabaseInput};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, Statement,
};

use super::{DatabaseError, connect, keys, statement_error};

pub(super) async fn run(
    db: &DatabaseConnection,
    keyring: Option<&secrets::Keyring>,
    input: &ProvisionDatabaseInput,
) -> Result<DatabaseProvisioned, DatabaseError> {
    let binding = provider_binding::Entity::find_by_id(input.binding_id)
        .one(db)
        .await
        .map_err(rhone_schema::SchemaError::from)?
        .ok_or_else(|| DatabaseError::Refused(format!("binding {} is gone", input.binding_id)))?;
    match provision(db, keyring, &binding).await {
        Ok(done) => {
            let mut row: provider_binding::ActiveModel = binding.into();
            row.status = Set(STATUS_READY.to_owned());
            row.error = Set(None);
            row.update(db)
                .await
                .map_err(rhone_schema::SchemaError::from)?;
            Ok(done)
        }
        Err(DatabaseError::Refused(message)) => {
            let mut row: provider_binding::ActiveModel = binding.into();
            row.status = Set(STATUS_FAILED.to_owned());
            row.error = Set(Some(message.clone()));
            row.update(db)
                .await
                .map_err(rhone_schema::SchemaError::from)?;
            Err(DatabaseError::Refused(message))
        }
        Err(e) => Err(e),
    }
}

async fn provision(
    db: &DatabaseConnection,
    keyring: Option<&secrets::Keyring>,
    binding: &provider_binding::Model,
) -> Result<DatabaseProvisioned, DatabaseError> {
    let keys = keys(keyring)?;
    let env = environment::Entity::find_by_id(binding.environment_id)
        .one(db)
        .await
        .map_err(rhone_schema::SchemaError::from)?
        .ok_or_else(|| DatabaseError::Refused("the binding's environment is gone".to_owned()))?;
    let provider = providers::named(db, &binding.provider).await?;
    let admin = keys
        .open_provider(&provider)
        .map_err(|e| DatabaseError::Refused(e.to_string()))?;
    let password = providers::new_password();
    let hidden = [&admin, &password];
    let (role, database) = (binding.role.as_str(), binding.resource.as_str());
    let who = format!("provider {} ({})", provider.name, provider.host);
    let server = connect(&admin, &who).await?;

    let exec = |sql: String, doing: String| {
        let server = &server;
        async move {
            server
                .execute_unprepared(&sql)
                .await
                .map(|_| ())
                .map_err(|e| statement_error(e, &doing, &hidden))
        }
    };
    let role_exists = exists(
        &server,
        "SELECT 1 FROM pg_roles WHERE rolname = $1",
        role,
        &hidden,
    )
    .await?;
    let verb = if role_exists { "ALTER" } else { "CREATE" };
    // Names are checked to be [a-z0-9_] (ours, or `database_name_problem`), the password is
    // hex: neither needs escaping inside its quotes.
    exec(
        format!(
            r#"{verb} ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{}'"#,
            password.expose()
        ),
        format!("{} role {role} on {who}", verb.to_lowercase()),
    )
    .await?;
    let db_exists = exists(
        &server,
        "SELECT 1 FROM pg_database WHERE datname = $1",
        database,
        &hidden,
    )
    .await?;
    let created = if binding.access == ACCESS_READ_ONLY {
        if !db_exists {
            return Err(DatabaseError::Refused(format!(
                "database {database} does not exist on {who}: a read-only binding reads a database that another environment owns"
            )));
        }
        let owner = database_owner(&server, database, &hidden).await?;
        exec(
            format!(r#"GRANT CONNECT ON DATABASE "{database}" TO "{role}""#),
            format!("granting {role} connect on {database}"),
        )
        .await?;
        exec(
            format!(r#"ALTER ROLE "{role}" SET default_transaction_read_only = on"#),
            format!("making {role} read-only"),
        )
        .await?;
        server.close().await.ok();
        let inside = connect(
            &providers::in_database(&admin, database).map_err(DatabaseError::Refused)?,
            &format!("{database} on {who}"),
        )
        .await?;
        for sql in [
            format!(r#"GRANT USAGE ON SCHEMA public TO "{role}""#),
            format!(r#"GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}""#),
            format!(
                r#"ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" IN SCHEMA public GRANT SELECT ON TABLES TO "{role}""#
            ),
        ] {
            inside.execute_unprepared(&sql).await.map_err(|e| {
                statement_error(e, &format!("granting {role} reads of {database}"), &hidden)
            })?;
        }
        inside.close().await.ok();
        false
    } else {
        if !db_exists {
            exec(
                format!(r#"CREATE DATABASE "{database}" OWNER "{role}""#),
                format!("creating database {database} on {who}"),
            )
            .await?;
        }
        exec(
            format!(r#"REVOKE ALL ON DATABASE "{database}" FROM PUBLIC"#),
            format!("closing database {database} to other roles"),
        )
        .await?;
        server.close().await.ok();
        !db_exists
    };

    let url = providers::database_url(&admin, role, &password, database)
        .map_err(DatabaseError::Refused)?;
    let row = secrets::set(
        db,
        keys,
        env.id,
        "DATABASE_URL",
        &url,
        &format!("binding:{}", binding.id),
    )
    .await
    .map_err(|e| match e {
        secrets::SecretsError::Schema(e) => DatabaseError::Schema(e),
        other => DatabaseError::Refused(other.to_string()),
    })?;
    tracing::info!(
        environment = %env.id, provider = %provider.name, database, role, access = %binding.access,
        created, url_version = row.version, "database provisioned"
    );
    Ok(DatabaseProvisioned {
        provider: provider.name,
        database: database.to_owned(),
        role: role.to_owned(),
        access: binding.access.clone(),
        created,
        url_version: row.version,
    })
}

async fn exists(
    server: &DatabaseConnection,
    sql: &str,
    name: &str,
    hidden: &[&Secret],
) -> Result<bool, DatabaseError> {
    server
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [name.into()],
        ))
        .await
        .map(|row| row.is_some())
        .map_err(|e| statement_error(e, &format!("looking up {name}"), hidden))
}

async fn database_owner(
    server: &DatabaseConnection,
    database: &str,
    hidden: &[&Secret],
) -> Result<String, DatabaseError> {
    let row = server
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1",
            [database.into()],
        ))
        .await
        .map_err(|e| statement_error(e, &format!("looking up the owner of {database}"), hidden))?
        .ok_or_else(|| DatabaseError::Refused(format!("database {database} is gone")))?;
    row.try_get("", "owner")
        .map_err(|e| statement_error(e, &format!("reading the owner of {database}"), hidden))
}
