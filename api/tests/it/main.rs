//! The API over real HTTP, against a real SQLite control DB, a real Temporal dev server and
//! a real worker. One test binary, so one Temporal server serves every test; each test has
//! its own database and task queue, so they run in parallel.

mod access;
mod bindings;
mod databases;
mod deploys;
mod fleet;
mod harness;
mod http;
mod isolation;
mod migrations;
mod mutations;
mod promotions;
mod scale_to_zero;
mod secrets;
mod subscriptions;
mod workflows;
