//! GraphQL enums mirroring the vocabulary of `rhone-core` and `rhone-workflows`, converted
//! both ways by exhaustive matches, so a new core variant fails to compile here until the
//! API decides how to show it.

use rhone_core::{
    OperationKind as CoreOperationKind, OperationStatus as CoreOperationStatus, Role as CoreRole,
};
use rhone_workflows::DecisionKind as CoreDecision;

macro_rules! mirror {
    ($(#[$meta:meta])* $gql:ident <=> $core:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $gql { $($(#[$vmeta])* $variant),+ }

        impl From<$gql> for $core {
            fn from(v: $gql) -> Self {
                match v { $($gql::$variant => $core::$variant),+ }
            }
        }

        impl From<$core> for $gql {
            fn from(v: $core) -> Self {
                match v { $($core::$variant => $gql::$variant),+ }
            }
        }
    };
}

mirror! {
    /// A workspace role; each may do everything the ones before it may.
    Role <=> CoreRole {
        /// Reads everything in the workspace.
        Viewer,
        /// Creates apps and environments; approves, retries and aborts operations.
        Developer,
        /// Also creates projects and grants roles below owner.
        Admin,
        /// Also grants and changes the owner role.
        Owner,
    }
}

mirror! {
    /// What an operation does.
    OperationKind <=> CoreOperationKind {
        Deploy,
        Promotion,
        Rollback,
        Wake,
        Repair,
        Drain,
        RegionEnablement,
        Migration,
        WorkspaceCreate,
        ProjectCreate,
        AppCreate,
        EnvironmentCreate,
        EnvironmentUpdate,
        GrantCreate,
        TokenCreate,
        TokenRevoke,
        RunnerAdd,
        RunnerRevoke,
        ProviderAdd,
        DatabaseBind,
    }
}

mirror! {
    /// Where an operation stands.
    OperationStatus <=> CoreOperationStatus {
        /// Moving through its stages.
        Running,
        /// Waiting for a decision: approve, retry or abort.
        Waiting,
        /// A step exhausted its retries; retry or abort it.
        NeedsAttention,
        Succeeded,
        Failed,
        /// Ended by an explicit abort.
        Aborted,
    }
}

mirror! {
    /// A decision sent to a waiting operation.
    Decision <=> CoreDecision {
        Approve,
        Retry,
        Abort,
    }
}

/// Whether the caller is a person or an app's runtime identity.
#[derive(async_graphql::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    User,
    Runtime,
}
