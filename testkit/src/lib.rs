//! Test harness: real servers for tests, never fakes.
//!
//! - [`temporal::server`] gives a Temporal dev server (frontend address and namespace).
//! - [`postgres::database`] gives a URL to a fresh PostgreSQL database.
//! - [`s3::server`] gives an S3 API server (`s3s-fs`): endpoint and credentials.
//! - [`registry::server`] gives an OCI registry (`docker-registry`) address.
//! - [`redis::server`] gives a Redis (`redis-server`) URL and its password.
//! - [`netns::Namespace`] is a host of its own (a network namespace), where
//!   [`postgres::start_on`] starts a database server as another machine would hold it.
//! - [`unique_name`] derives task queue, workflow id and database names from a test's name.
//!
//! `scripts/test.sh` starts one Temporal server and one PostgreSQL for the whole run and
//! exports their addresses (`RHONE_TEST_TEMPORAL_ADDRESS`, `RHONE_TEST_POSTGRES_URL`);
//! every test process then shares them. Without those variables (a plain `cargo test`),
//! each test process starts its own servers on the first call and stops them when it exits.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let temporal = rhone_testkit::temporal::server().await?;
//! let queue = rhone_testkit::unique_name("deploys_a_preview");
//! let db_url = rhone_testkit::postgres::database(&queue).await?;
//! # let _ = (temporal.target, db_url);
//! # Ok(())
//! # }
//! ```

mod names;
pub mod netns;
pub mod postgres;
mod process;
pub mod redis;
pub mod registry;
pub mod s3;
pub mod temporal;

pub use names::{sanitize, unique_name};

/// The operator runner key of tests: the API, the worker and the runners of one test derive
/// their per-runner tokens from it (`rhone_runner_protocol::credentials`).
pub fn runner_key() -> rhone_runner_protocol::RunnerKey {
    match rhone_runner_protocol::RunnerKey::new("rhone-test-runner-key-0123456789abcdef") {
        Ok(key) => key,
        Err(e) => unreachable!("the test key is long enough: {e}"),
    }
}

/// The SHA-256 of the call token runner `name` takes under [`runner_key`] (a standalone
/// runner's `call_token_sha256`; a registered one learns it from the API).
pub fn runner_call_token_sha256(name: &str) -> String {
    rhone_runner_protocol::credentials::token_hash(runner_key().call_token(name).expose())
}
