//! Test databases: a migrated SQLite (in memory or in a temp file) and a fresh, migrated
//! PostgreSQL database per test on the server named by `RHONE_TEST_POSTGRES_URL`.

use anyhow::Result;
use rhone_schema::{connect, migrate};
use sea_orm::DatabaseConnection;

/// Runs each listed case (an `async fn(DatabaseConnection) -> Result<()>` of the calling
/// module) on both backends, as the tests `<module>::sqlite::<case>` and
/// `<module>::postgres::<case>`.
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case(crate::support::sqlite().await?).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let name = concat!(module_path!(), "::", stringify!($case));
                    super::$case(crate::support::postgres(name).await?).await
                }
            )+
        }
    };
}
pub(crate) use on_both_backends;

/// A migrated in-memory SQLite database.
pub async fn sqlite() -> Result<DatabaseConnection> {
    let db = connect("sqlite::memory:").await?;
    migrate(&db).await?;
    Ok(db)
}

/// A migrated SQLite file database in `dir`.
pub async fn sqlite_file(dir: &tempfile::TempDir) -> Result<DatabaseConnection> {
    let path = dir.path().join("rhone.db");
    let db = connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    migrate(&db).await?;
    Ok(db)
}

/// A fresh migrated PostgreSQL database named after `test`, dropped first if a previous run
/// left it behind.
pub async fn postgres(test: &str) -> Result<DatabaseConnection> {
    let url = database(test).await?;
    let db = connect(&url).await?;
    migrate(&db).await?;
    Ok(db)
}

/// Creates an empty database named after `test` and returns its URL, on the server the
/// test script started (or one rhone-testkit starts for this process).
async fn database(test: &str) -> Result<String> {
    rhone_testkit::postgres::database(test).await
}
