//! Integration tests of rhone-schema: every case runs on SQLite and on a real PostgreSQL.

mod support;

mod allocations;
mod fixtures;
mod fleet;
mod logs;
mod migrations;
mod ops;
mod repair;
mod routes;
mod secrets;
