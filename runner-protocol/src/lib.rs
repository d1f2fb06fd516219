//! The wire protocol between the control plane and runners, shared by the runner and its
//! callers so its types live once: what a runner is sent ([`AllocationSpec`], `PUT
//! /v1/allocations/{id}`, with its [`Desired`] state and the checks that name a bad field),
//! what it answers ([`AllocationStatus`], `GET /v1/allocations/{id}`), and what it reports
//! ([`StageReport`], posted to the API's `/internal/runner/reports` on every stage change),
//! and how it joins the fleet (`fleet`: registration and heartbeats). Types and validation
//! only: no I/O.

pub mod credentials;
pub mod fleet;
mod report;
mod spec;
mod status;

pub use credentials::{RUNNER_HEADER, RunnerKey};
pub use report::StageReport;
pub use spec::{
    AllocationSpec, DEFAULT_READINESS_TIMEOUT_MS, Desired, INJECTED_ENV, MAX_TIMEOUT_MS,
    ProcessSpec, SpecError, variable_name_problem,
};
pub use status::AllocationStatus;
