//! sea-orm entities of the control DB, one module per table (dense 2.x format: relations are
//! fields of the model). Enum-like columns are text holding the snake_case names of
//! `rhone-core`; ids are app-generated UUIDv7 (see [`crate::new_id`]).

pub mod allocation;
pub mod api_token;
pub mod app;
pub mod applied_migration;
pub mod artifact;
pub mod audit_log;
pub mod build_log;
pub mod cell;
pub mod database_provider;
pub mod deployment;
pub mod edge_ack;
pub mod environment;
pub mod grant;
pub mod idempotency_record;
pub mod operation;
pub mod operation_stage;
pub mod project;
pub mod provider_binding;
pub mod region;
pub mod route_activity;
pub mod route_change;
pub mod route_owner;
pub mod runner;
pub mod runtime_service_binding;
pub mod secret;
pub mod user;
pub mod workspace;
