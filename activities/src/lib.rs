//! Every side effect a workflow needs, as Temporal activities, and the worker that runs them
//! with the workflows. Activities are idempotent: a retried activity finds its earlier write
//! and does not repeat it. They decide retryability explicitly: refusals (validation,
//! conflict, illegal transition) are non-retryable; transient I/O is retried.

mod allocate;
pub use allocate::RunnerClient;
pub mod database;
pub mod deploy;
pub mod error;
pub mod fleet;
pub mod operation;
mod orphans;
pub mod preview;
pub mod promotion;
pub mod repair;
pub mod temporal;
pub mod tenancy;
pub mod wake;
pub mod worker;

pub use allocate::Heartbeat;
pub use promotion::{PromotionActivities, PromotionConfig};
pub use wake::{WakeActivities, WakeConfig};
pub use worker::{Worker, WorkerConfig, WorkerHandle};
