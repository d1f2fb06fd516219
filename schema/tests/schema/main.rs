//! Integration tests of rhone-schema: every case runs on SQLite and on a real PostgreSQL.

mod support;

mod fixtures;
mod migrations;
mod ops;
