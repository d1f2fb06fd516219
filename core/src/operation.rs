//! Operation kinds and statuses, and the string-level stage checks the DB layer uses: each
//! kind runs one machine of [`crate::stage`], so a stage stored as text is checked against
//! that machine before it is written.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::stage::{
    DeployStage, HostDrainStage, IllegalTransition, MigrationStage, MutationStage, PromotionStage,
    RegionEnablementStage, RepairStage, StateMachine, UnknownStage, WakeStage,
};

macro_rules! text_enum {
    ($(#[$meta:meta])* $ty:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $name:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $ty { $($(#[$vmeta])* $variant),+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| UnknownValue {
                    what: $what,
                    value: s.to_owned(),
                    expected: $ty::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of {expected}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

text_enum! {
    /// What an operation does. Each kind runs the machine named by [`OperationKind::machine`].
    OperationKind, "operation kind" {
        Deploy = "deploy",
        Promotion = "promotion",
        Rollback = "rollback",
        Wake = "wake",
        /// A route owner's missing allocations replaced (a lost runner, a crash, a host
        /// restart), started by the fleet watch.
        Repair = "repair",
        Drain = "drain",
        RegionEnablement = "region_enablement",
        Migration = "migration",
        WorkspaceCreate = "workspace_create",
        ProjectCreate = "project_create",
        AppCreate = "app_create",
        EnvironmentCreate = "environment_create",
        /// A setting of an environment changed (scale to zero), applied at once.
        EnvironmentUpdate = "environment_update",
        GrantCreate = "grant_create",
        TokenCreate = "token_create",
        /// A token revoked by its owner (or a workspace admin, for an app's token).
        TokenRevoke = "token_revoke",
        /// An operator added a runner host (and issued its credential).
        RunnerAdd = "runner_add",
        /// An operator revoked a runner host's credential.
        RunnerRevoke = "runner_revoke",
        /// An operator registered a database provider server.
        ProviderAdd = "provider_add",
        /// An environment bound to a database of a provider: the database and its role
        /// provisioned, `DATABASE_URL` set.
        DatabaseBind = "database_bind",
    }
}

text_enum! {
    /// Where an operation stands, as users see it. The stage says where in its machine; the
    /// status says whether anyone needs to act.
    OperationStatus, "operation status" {
        /// The workflow is moving through its stages.
        Running = "running",
        /// Waiting for a decision: approve, retry or abort.
        Waiting = "waiting",
        /// An activity exhausted its retries; on-call can retry it.
        NeedsAttention = "needs_attention",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Ended by an explicit abort.
        Aborted = "aborted",
    }
}

impl OperationStatus {
    /// Whether the operation is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Aborted)
    }
}

/// A stage name that is unknown to the kind's machine, or a move its machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Unknown(#[from] UnknownStage),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// Applies `$body` with `$m` bound to the machine type of `$kind`.
macro_rules! with_machine {
    ($kind:expr, $m:ident => $body:expr) => {
        match $kind.machine_kind() {
            MachineKind::Deploy => {
                type $m = DeployStage;
                $body
            }
            MachineKind::Promotion => {
                type $m = PromotionStage;
                $body
            }
            MachineKind::Wake => {
                type $m = WakeStage;
                $body
            }
            MachineKind::Repair => {
                type $m = RepairStage;
                $body
            }
            MachineKind::HostDrain => {
                type $m = HostDrainStage;
                $body
            }
            MachineKind::RegionEnablement => {
                type $m = RegionEnablementStage;
                $body
            }
            MachineKind::Migration => {
                type $m = MigrationStage;
                $body
            }
            MachineKind::Mutation => {
                type $m = MutationStage;
                $body
            }
        }
    };
}

enum MachineKind {
    Deploy,
    Promotion,
    Wake,
    Repair,
    HostDrain,
    RegionEnablement,
    Migration,
    Mutation,
}

impl OperationKind {
    fn machine_kind(self) -> MachineKind {
        match self {
            Self::Deploy => MachineKind::Deploy,
            Self::Promotion | Self::Rollback => MachineKind::Promotion,
            Self::Wake => MachineKind::Wake,
            Self::Repair => MachineKind::Repair,
            Self::Drain => MachineKind::HostDrain,
            Self::RegionEnablement => MachineKind::RegionEnablement,
            Self::Migration => MachineKind::Migration,
            Self::WorkspaceCreate
            | Self::ProjectCreate
            | Self::AppCreate
            | Self::EnvironmentCreate
            | Self::EnvironmentUpdate
            | Self::GrantCreate
            | Self::TokenCreate
            | Self::TokenRevoke
            | Self::RunnerAdd
            | Self::RunnerRevoke
            | Self::ProviderAdd
            | Self::DatabaseBind => MachineKind::Mutation,
        }
    }

    /// The name of the machine this kind runs.
    pub fn machine(self) -> &'static str {
        with_machine!(self, M => M::MACHINE)
    }

    /// The stage every operation of this kind starts in.
    pub fn initial_stage(self) -> &'static str {
        with_machine!(self, M => M::INITIAL.as_str())
    }

    /// Every stage name of this kind's machine.
    pub fn stages(self) -> Vec<&'static str> {
        with_machine!(self, M => M::ALL.iter().map(|s| s.as_str()).collect())
    }

    /// Checks a move between stages given as text, as stored in the DB.
    pub fn validate_transition(self, from: &str, to: &str) -> Result<(), StageError> {
        with_machine!(self, M => {
            let from: M = from.parse()?;
            let to: M = to.parse()?;
            from.transition(to)?;
            Ok(())
        })
    }

    /// The status an operation has once it enters `stage`, unless the writer says otherwise
    /// (needs_attention and aborted are decided by the workflow, not by the stage).
    pub fn status_for_stage(self, stage: &str) -> Result<OperationStatus, StageError> {
        with_machine!(self, M => {
            let s: M = stage.parse()?;
            Ok(if s.is_failure() {
                OperationStatus::Failed
            } else if s.is_blocked() {
                OperationStatus::Waiting
            } else if s.is_success() {
                OperationStatus::Succeeded
            } else {
                OperationStatus::Running
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_dispatch_to_their_machine() {
        assert_eq!(OperationKind::Deploy.initial_stage(), "queued");
        assert_eq!(OperationKind::Rollback.machine(), "promotion");
        assert_eq!(OperationKind::AppCreate.initial_stage(), "requested");
        assert_eq!(OperationKind::Drain.stages().len(), 6);
        assert!(
            OperationKind::Deploy
                .validate_transition("queued", "cloning")
                .is_ok()
        );
        assert!(matches!(
            OperationKind::Deploy.validate_transition("queued", "healthy"),
            Err(StageError::Unknown(_))
        ));
        assert!(matches!(
            OperationKind::Promotion.validate_transition("requested", "healthy"),
            Err(StageError::Illegal(_))
        ));
    }

    #[test]
    fn status_follows_stage() {
        let check = |kind: OperationKind, stage: &str, status: OperationStatus| {
            assert_eq!(kind.status_for_stage(stage), Ok(status), "{kind} {stage}");
        };
        check(OperationKind::Deploy, "building", OperationStatus::Running);
        check(OperationKind::Deploy, "blocked", OperationStatus::Waiting);
        check(
            OperationKind::Deploy,
            "preview_ready",
            OperationStatus::Succeeded,
        );
        check(OperationKind::Deploy, "failed", OperationStatus::Failed);
        check(
            OperationKind::Promotion,
            "rolled_back",
            OperationStatus::Failed,
        );
        check(OperationKind::Wake, "hot", OperationStatus::Succeeded);
        check(
            OperationKind::ProjectCreate,
            "applied",
            OperationStatus::Succeeded,
        );
    }

    #[test]
    fn text_round_trip() {
        for k in OperationKind::ALL {
            assert_eq!(k.as_str().parse::<OperationKind>(), Ok(*k));
        }
        for s in OperationStatus::ALL {
            assert_eq!(s.as_str().parse::<OperationStatus>(), Ok(*s));
        }
        let err = "nope".parse::<OperationStatus>().expect_err("unknown");
        assert!(err.to_string().contains("needs_attention"), "{err}");
    }
}
