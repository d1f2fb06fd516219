//! Databases of environments on the operator's PostgreSQL providers: provisioning a
//! binding's database and role ([`provision`]). Every connection to a provider is made here
//! with a URL opened from its sealed form; no URL, password or `DATABASE_URL` leaves this
//! module except sealed as the environment's secret, and error messages have every such
//! value scrubbed ([`providers::scrub`]).

pub mod migrate;
mod provision;

pub use migrate::MigrationConfig;

use std::sync::Arc;

use rhone_core::secret::Secret;
use rhone_schema::providers::{self, scrub};
use rhone_schema::{SchemaError, secrets::Keyring};
use rhone_workflows::activities::{
    ApplyReport, DatabaseProvisioned, DryRunReport, MigrationPlan, MigrationStepInput,
    OpenMigrationInput, ProvisionDatabaseInput, VerifyReport, defs,
};

use crate::Heartbeat;
use sea_orm::{DatabaseConnection, DbErr};
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

pub struct DatabaseActivities {
    pub db: DatabaseConnection,
    pub secrets: Option<Arc<Keyring>>,
    /// Where the artifacts (and so their migration files) are.
    pub store: rhone_store::ArtifactStore,
    pub migration: MigrationConfig,
}

/// Why a database activity failed.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// Final: the provider refused a statement, or what was asked cannot be done.
    #[error("{0}")]
    Refused(String),
    /// Retried: the provider did not answer.
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl DatabaseError {
    fn into_activity(self) -> ActivityError {
        let final_ = match &self {
            Self::Refused(_) => true,
            Self::Unreachable(_) => false,
            Self::Schema(e) => matches!(
                e,
                SchemaError::NotFound { .. } | SchemaError::Conflict { .. }
            ),
        };
        let message = self.to_string();
        tracing::warn!(error = %message, retryable = !final_, "database activity failed");
        ActivityError::application(if final_ {
            ApplicationFailure::non_retryable(message)
        } else {
            ApplicationFailure::new(message)
        })
    }
}

#[activities]
impl DatabaseActivities {
    #[activity(definition = defs::ProvisionDatabase)]
    pub async fn provision_database(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ProvisionDatabaseInput,
    ) -> Result<DatabaseProvisioned, ActivityError> {
        let work = provision::run(&self.db, self.secrets.as_deref(), &input);
        Heartbeat::of(&ctx)
            .during(work)
            .await
            .map_err(DatabaseError::into_activity)
    }

    #[activity(definition = defs::OpenMigration)]
    pub async fn open_migration(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: OpenMigrationInput,
    ) -> Result<(), ActivityError> {
        migrate::open(&self.db, &input)
            .await
            .map_err(DatabaseError::into_activity)
    }

    #[activity(definition = defs::PlanMigration)]
    pub async fn plan_migration(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: MigrationStepInput,
    ) -> Result<MigrationPlan, ActivityError> {
        let work = migrate::plan(&self.db, self.secrets.as_deref(), &self.store, &input);
        Heartbeat::of(&ctx)
            .during(work)
            .await
            .map_err(DatabaseError::into_activity)
    }

    #[activity(definition = defs::DryRunMigration)]
    pub async fn dry_run_migration(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: MigrationStepInput,
    ) -> Result<DryRunReport, ActivityError> {
        let work = migrate::dry_run(
            &self.db,
            self.secrets.as_deref(),
            &self.store,
            &self.migration,
            &input,
        );
        Heartbeat::of(&ctx)
            .during(work)
            .await
            .map_err(DatabaseError::into_activity)
    }

    #[activity(definition = defs::ApplyMigration)]
    pub async fn apply_migration(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: MigrationStepInput,
    ) -> Result<ApplyReport, ActivityError> {
        let work = migrate::apply(
            &self.db,
            self.secrets.as_deref(),
            &self.store,
            &self.migration,
            &input,
        );
        Heartbeat::of(&ctx)
            .during(work)
            .await
            .map_err(DatabaseError::into_activity)
    }

    #[activity(definition = defs::VerifyMigration)]
    pub async fn verify_migration(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: MigrationStepInput,
    ) -> Result<VerifyReport, ActivityError> {
        let work = migrate::verify(&self.db, self.secrets.as_deref(), &self.store, &input);
        Heartbeat::of(&ctx)
            .during(work)
            .await
            .map_err(DatabaseError::into_activity)
    }
}

/// The keyring, or the refusal naming the setting.
fn keys(keys: Option<&Keyring>) -> Result<&Keyring, DatabaseError> {
    keys.ok_or_else(|| {
        DatabaseError::Refused(format!(
            "the worker has no secrets key, so it cannot open a provider's admin URL nor store DATABASE_URL: \
             its operator sets {} (or {})",
            rhone_schema::secrets::KEY_VAR,
            rhone_schema::secrets::KEY_FILE_VAR
        ))
    })
}

/// How long a provider has to accept a connection (the activity is retried after).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection to a provider's `url`, as `who` in errors (retried).
async fn connect(url: &Secret, who: &str) -> Result<DatabaseConnection, DatabaseError> {
    providers::connect(url, who, CONNECT_TIMEOUT)
        .await
        .map_err(DatabaseError::Unreachable)
}

/// A failed statement: the provider is gone (retried) or refused it (final).
fn statement_error(e: DbErr, doing: &str, secrets: &[&Secret]) -> DatabaseError {
    let message = format!("{doing}: {}", scrub(&e.to_string(), secrets));
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => DatabaseError::Unreachable(message),
        _ => DatabaseError::Refused(message),
    }
}
