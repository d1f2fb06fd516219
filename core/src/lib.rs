//! Rhone's shared vocabulary: ids, names, the stage machines of the seeds, operation kinds,
//! statuses and roles, artifact digests and the redacting `Secret`. Nothing here does I/O,
//! reads a clock or draws randomness, so workflows can use all of it.

pub mod digest;
pub mod endpoint;
pub mod fleet;
pub mod ids;
pub mod limits;
pub mod name;
pub mod operation;
pub mod repository;
pub mod role;
pub mod secret;
pub mod stage;

pub use digest::{Digest, InvalidDigest};
pub use endpoint::Endpoint;
pub use fleet::RunnerStatus;
pub use ids::{
    OperationId, environment_route_key, repair_workflow_id, wake_workflow_id, workflow_id,
    workflow_run_of,
};
pub use limits::Limits;
pub use name::{Name, NameError};
pub use operation::{OperationKind, OperationStatus, StageError};
pub use role::Role;
pub use secret::{REDACTED, Secret};
pub use stage::{IllegalTransition, StateMachine};
