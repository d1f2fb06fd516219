//! The state machines of `seeds/state-machine-gallery.txt`, one enum each, with their legal
//! transitions in one table per machine. Anything that writes a stage goes through
//! [`StateMachine::transition`]; an illegal transition is an [`IllegalTransition`] error.
//!
//! Two properties per stage matter beyond the edges:
//! - *terminal*: nothing follows (`failed`, `stopped` …).
//! - *success*: an operation may end successfully there (`preview_ready`, `healthy`, `hot` …),
//!   even where the machine goes on later (`healthy → rolled_back` when the health window
//!   fails, `hot → sleeping`).
//!
//! Re-entering the stage one is in is legal for a non-terminal stage: it is a new attempt
//! of that stage (retry), recorded with a higher attempt number.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A stage enum of one machine.
pub trait StateMachine:
    Copy + Eq + fmt::Debug + fmt::Display + FromStr<Err = UnknownStage> + 'static
{
    /// The machine's name, as in the seeds (`deploy`, `promotion` …).
    const MACHINE: &'static str;
    /// Every stage, in the order of the seeds.
    const ALL: &'static [Self];
    /// Where every run of the machine starts.
    const INITIAL: Self;

    fn as_str(self) -> &'static str;
    /// The stages legal right after this one (a re-attempt of the same stage aside).
    fn successors(self) -> &'static [Self];
    /// Whether an operation may end successfully in this stage.
    fn is_success(self) -> bool;
    /// Whether this stage is a failed outcome.
    fn is_failure(self) -> bool;
    /// Whether an operation in this stage waits for a decision (approve, retry, abort).
    fn is_blocked(self) -> bool {
        false
    }

    fn is_terminal(self) -> bool {
        self.successors().is_empty()
    }

    fn can_transition_to(self, next: Self) -> bool {
        (self == next && !self.is_terminal()) || self.successors().contains(&next)
    }

    /// `next` if the move from `self` is legal, otherwise the error naming both.
    fn transition(self, next: Self) -> Result<Self, IllegalTransition> {
        if self.can_transition_to(next) {
            Ok(next)
        } else {
            Err(IllegalTransition {
                machine: Self::MACHINE,
                from: self.as_str().to_owned(),
                to: next.as_str().to_owned(),
            })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("illegal {machine} transition from {from} to {to}")]
pub struct IllegalTransition {
    pub machine: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {machine} stage {stage:?}")]
pub struct UnknownStage {
    pub machine: &'static str,
    pub stage: String,
}

/// Defines one machine: its enum, names, successors, success and failure stages.
macro_rules! machine {
    (
        $(#[$meta:meta])*
        $ty:ident, $machine:literal, initial $initial:ident,
        success [$($ok:ident),*], failure [$($bad:ident),*], blocked [$($blk:ident),*],
        { $($variant:ident = $name:literal => [$($next:ident),*]),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $ty { $($variant),+ }

        impl StateMachine for $ty {
            const MACHINE: &'static str = $machine;
            const ALL: &'static [Self] = &[$($ty::$variant),+];
            const INITIAL: Self = $ty::$initial;

            fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            fn successors(self) -> &'static [Self] {
                match self { $($ty::$variant => &[$($ty::$next),*]),+ }
            }

            fn is_success(self) -> bool {
                matches!(self, $($ty::$ok)|*)
            }

            fn is_failure(self) -> bool {
                #[allow(unreachable_patterns)]
                match self { $($ty::$bad => true,)* _ => false }
            }

            fn is_blocked(self) -> bool {
                #[allow(unreachable_patterns)]
                match self { $($ty::$blk => true,)* _ => false }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownStage;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty as StateMachine>::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownStage { machine: $machine, stage: s.to_owned() })
            }
        }
    };
}

machine! {
    /// Deploy Pipeline. `blocked` waits for approve (→ preview_ready), retry (→ validating)
    /// or abort (→ failed).
    DeployStage, "deploy", initial Queued,
    success [PreviewReady], failure [Failed], blocked [Blocked],
    {
        Queued = "queued" => [Cloning, Failed],
        Cloning = "cloning" => [Building, Failed],
        Building = "building" => [Validating, Failed],
        Validating = "validating" => [PreviewReady, Blocked, Failed],
        PreviewReady = "preview_ready" => [],
        Blocked = "blocked" => [Validating, PreviewReady, Failed],
        Failed = "failed" => [],
    }
}

machine! {
    /// Production Promotion (and rollback, which is a promotion to an earlier deployment).
    /// `healthy` holds the health window; its failure rolls the route back (or fails, when
    /// there is no earlier owner to return to). `blocked` (beyond the seed's machine): no
    /// runner has room for the new allocations; it waits for retry (→ route_cas) or abort
    /// (→ failed).
    PromotionStage, "promotion", initial Requested,
    success [Healthy], failure [RolledBack, Failed], blocked [Blocked],
    {
        Requested = "requested" => [PolicyCheck, Failed],
        PolicyCheck = "policy_check" => [RouteCas, Failed],
        RouteCas = "route_cas" => [EdgePropagating, Blocked, Failed],
        Blocked = "blocked" => [RouteCas, Failed],
        EdgePropagating = "edge_propagating" => [Healthy, RolledBack, Failed],
        Healthy = "healthy" => [RolledBack, Failed],
        RolledBack = "rolled_back" => [],
        Failed = "failed" => [],
    }
}

machine! {
    /// Repair of a route owner (not a seed machine: the seeds name the need, "runner crash",
    /// and `DESIGN.md` the reconciler that records each repair). `detected` names what is
    /// missing and why (its runner lost, a crash after it was ready, a host restart);
    /// each `replacing` attempt where the replacements go; `blocked` is no room anywhere
    /// (tried again as capacity returns, or on retry); `ready` is the replacements serving,
    /// which the edge routes to; `repaired` once they stayed healthy through the health
    /// window. A replacement that crashes goes back to `replacing` after a backoff; a crash
    /// loop parks the operation `needs_attention` with the app's last log lines.
    RepairStage, "repair", initial Detected,
    success [Repaired], failure [Failed], blocked [Blocked],
    {
        Detected = "detected" => [Replacing, Failed],
        Replacing = "replacing" => [Ready, Blocked, Failed],
        Blocked = "blocked" => [Replacing, Failed],
        Ready = "ready" => [Replacing, Repaired, Failed],
        Repaired = "repaired" => [],
        Failed = "failed" => [],
    }
}

machine! {
    /// Wake of a route key at one epoch; `hot → sleeping` after the idle period, and a
    /// sleeping route wakes again. `cold → hot` is a run that finds the route hot already
    /// (a promotion, deploy or setting started it to watch the route, or two edges raced);
    /// its evidence names what made it hot.
    WakeStage, "wake", initial Cold,
    success [Hot, Sleeping], failure [Failed], blocked [],
    {
        Cold = "cold" => [WakeRequested, Hot, Failed],
        WakeRequested = "wake_requested" => [Starting, Failed],
        Starting = "starting" => [ReadinessWait, Failed],
        ReadinessWait = "readiness_wait" => [Hot, Failed],
        Hot = "hot" => [Sleeping],
        Failed = "failed" => [],
        Sleeping = "sleeping" => [WakeRequested],
    }
}

machine! {
    /// Allocation Lifecycle, as reported by the runner. A start that is cancelled before
    /// `ready` goes straight to `stopped`.
    AllocationStage, "allocation", initial Planned,
    success [Ready, Stopped], failure [Failed], blocked [],
    {
        Planned = "planned" => [Pulling, Stopped, Failed],
        Pulling = "pulling" => [Starting, Stopped, Failed],
        Starting = "starting" => [Ready, Stopped, Failed],
        Ready = "ready" => [Draining, Failed],
        Draining = "draining" => [Stopped, Failed],
        Stopped = "stopped" => [],
        Failed = "failed" => [],
    }
}

machine! {
    /// Host Drain / OS Upgrade. The seeds give no failure stage: a failed gate parks the
    /// operation (status needs_attention) in the stage where it failed.
    HostDrainStage, "host_drain", initial Cordoned,
    success [Uncordoned], failure [], blocked [],
    {
        Cordoned = "cordoned" => [Evacuating],
        Evacuating = "evacuating" => [ReplacementReady],
        ReplacementReady = "replacement_ready" => [Upgrading],
        Upgrading = "upgrading" => [Postcheck],
        Postcheck = "postcheck" => [Uncordoned],
        Uncordoned = "uncordoned" => [],
    }
}

machine! {
    /// Region Enablement. Any stage may end `disabled` when a gate fails.
    RegionEnablementStage, "region_enablement", initial Requested,
    success [Eligible], failure [Disabled], blocked [],
    {
        Requested = "requested" => [Provisioning, Disabled],
        Provisioning = "provisioning" => [BindingServices, Disabled],
        BindingServices = "binding_services" => [ReplicatingArtifacts, Disabled],
        ReplicatingArtifacts = "replicating_artifacts" => [Eligible, Disabled],
        Eligible = "eligible" => [Disabled],
        Disabled = "disabled" => [],
    }
}

machine! {
    /// Database Migration. `blocked` waits for an explicit decision: approve (a contract
    /// change, named statement by statement) or retry (once no route serves an artifact
    /// that needs the old shape), after which the files are classified again; or abort.
    MigrationStage, "migration", initial Classified,
    success [Verified], failure [Failed], blocked [Blocked],
    {
        Classified = "classified" => [DryRun, Blocked, Failed],
        DryRun = "dry_run" => [Locked, Blocked, Failed],
        Locked = "locked" => [Applying, Failed],
        Applying = "applying" => [Verified, Failed],
        Verified = "verified" => [],
        Blocked = "blocked" => [Classified, Failed],
        Failed = "failed" => [],
    }
}

machine! {
    /// Tenancy mutations (create a workspace, project, app, environment, grant, token):
    /// applied at once in one transaction, recorded as an operation all the same.
    MutationStage, "mutation", initial Requested,
    success [Applied], failure [Failed], blocked [],
    {
        Requested = "requested" => [Applied, Failed],
        Applied = "applied" => [],
        Failed = "failed" => [],
    }
}

#[cfg(test)]
mod tests;
