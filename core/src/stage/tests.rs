//! Tests of every machine: the seeds' paths are legal, everything else is refused.

use super::*;

/// Walks `path` from the machine's initial stage; every step must be legal.
fn legal<M: StateMachine>(path: &[&str]) {
    let mut at = M::INITIAL;
    assert_eq!(at.as_str(), path[0], "{} starts at {}", M::MACHINE, at);
    for name in &path[1..] {
        let next: M = name.parse().expect("stage names in tests are known");
        at = at
            .transition(next)
            .unwrap_or_else(|e| panic!("expected legal: {e}"));
    }
}

/// `from → to` must be refused with an error naming both.
fn illegal<M: StateMachine>(from: &str, to: &str) {
    let from_stage: M = from.parse().expect("known stage");
    let to_stage: M = to.parse().expect("known stage");
    let err = from_stage
        .transition(to_stage)
        .expect_err("expected illegal");
    assert_eq!(err.machine, M::MACHINE);
    assert_eq!((err.from.as_str(), err.to.as_str()), (from, to));
}

/// Properties every machine has: names round-trip and are unique, every stage is reachable
/// from the initial one, every stage can reach a success or failure outcome, terminal stages
/// are outcomes.
fn well_formed<M: StateMachine>() {
    let mut names: Vec<_> = M::ALL.iter().map(|s| s.as_str()).collect();
    for s in M::ALL {
        assert_eq!(s.as_str().parse::<M>(), Ok(*s));
        if s.is_terminal() {
            assert!(
                s.is_success() || s.is_failure(),
                "{s} is terminal but no outcome"
            );
            assert!(!s.can_transition_to(*s), "terminal {s} re-entered");
        } else {
            assert!(s.can_transition_to(*s), "{s} may be re-attempted");
        }
    }
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        M::ALL.len(),
        "{} stage names are unique",
        M::MACHINE
    );

    let reach = |from: M| {
        let mut seen = vec![from];
        let mut i = 0;
        while i < seen.len() {
            for n in seen[i].successors() {
                if !seen.contains(n) {
                    seen.push(*n);
                }
            }
            i += 1;
        }
        seen
    };
    let from_initial = reach(M::INITIAL);
    for s in M::ALL {
        assert!(
            from_initial.contains(s),
            "{s} unreachable in {}",
            M::MACHINE
        );
        assert!(
            reach(*s).iter().any(|r| r.is_success() || r.is_failure()),
            "{s} can reach no outcome"
        );
    }
    assert!(
        "no_such_stage"
            .parse::<M>()
            .is_err_and(|e| e.machine == M::MACHINE)
    );
}

#[test]
fn deploy() {
    well_formed::<DeployStage>();
    legal::<DeployStage>(&[
        "queued",
        "cloning",
        "building",
        "validating",
        "preview_ready",
    ]);
    // Cold deploy needs approval, then proceeds.
    legal::<DeployStage>(&[
        "queued",
        "cloning",
        "building",
        "validating",
        "blocked",
        "preview_ready",
    ]);
    // Missing secret fixed, validation retried; or aborted.
    legal::<DeployStage>(&[
        "queued",
        "cloning",
        "building",
        "validating",
        "blocked",
        "validating",
    ]);
    legal::<DeployStage>(&[
        "queued",
        "cloning",
        "building",
        "validating",
        "blocked",
        "failed",
    ]);
    // Stale artifacts / build digest mismatch fail the build or validation.
    legal::<DeployStage>(&["queued", "cloning", "building", "failed"]);
    legal::<DeployStage>(&[
        "queued",
        "cloning",
        "building",
        "building",
        "validating",
        "failed",
    ]);
    illegal::<DeployStage>("queued", "preview_ready");
    illegal::<DeployStage>("building", "blocked");
    illegal::<DeployStage>("preview_ready", "building");
    illegal::<DeployStage>("failed", "cloning");
    illegal::<DeployStage>("preview_ready", "preview_ready");
    assert!(DeployStage::Blocked.is_blocked());
}

#[test]
fn promotion() {
    well_formed::<PromotionStage>();
    let happy = [
        "requested",
        "policy_check",
        "route_cas",
        "edge_propagating",
        "healthy",
    ];
    legal::<PromotionStage>(&happy);
    legal::<PromotionStage>(&[&happy[..], &["rolled_back"]].concat());
    // Edge replay gap: propagation fails on its deadline.
    legal::<PromotionStage>(&[
        "requested",
        "policy_check",
        "route_cas",
        "edge_propagating",
        "failed",
    ]);
    // Route epoch conflict and late worker report fail the CAS.
    legal::<PromotionStage>(&["requested", "policy_check", "route_cas", "failed"]);
    illegal::<PromotionStage>("requested", "route_cas");
    illegal::<PromotionStage>("policy_check", "healthy");
    illegal::<PromotionStage>("rolled_back", "healthy");
    illegal::<PromotionStage>("healthy", "route_cas");
    assert!(PromotionStage::Healthy.is_success() && !PromotionStage::Healthy.is_terminal());
}

#[test]
fn wake() {
    well_formed::<WakeStage>();
    legal::<WakeStage>(&[
        "cold",
        "wake_requested",
        "starting",
        "readiness_wait",
        "hot",
        "sleeping",
        "wake_requested",
    ]);
    // Readiness timeout; old route epoch aborts before starting.
    legal::<WakeStage>(&[
        "cold",
        "wake_requested",
        "starting",
        "readiness_wait",
        "failed",
    ]);
    legal::<WakeStage>(&["cold", "wake_requested", "failed"]);
    // A watch that finds the route hot already.
    legal::<WakeStage>(&["cold", "hot", "sleeping"]);
    illegal::<WakeStage>("cold", "starting");
    illegal::<WakeStage>("sleeping", "hot");
    illegal::<WakeStage>("failed", "wake_requested");
}

#[test]
fn repair() {
    well_formed::<RepairStage>();
    legal::<RepairStage>(&["detected", "replacing", "ready", "repaired"]);
    // No room, then room; a crash in the health window, then a healthy replacement.
    legal::<RepairStage>(&[
        "detected",
        "replacing",
        "blocked",
        "replacing",
        "ready",
        "replacing",
        "ready",
        "repaired",
    ]);
    legal::<RepairStage>(&["detected", "replacing", "replacing", "failed"]);
    legal::<RepairStage>(&["detected", "failed"]);
    illegal::<RepairStage>("detected", "ready");
    illegal::<RepairStage>("blocked", "ready");
    illegal::<RepairStage>("repaired", "replacing");
    assert!(RepairStage::Blocked.is_blocked() && RepairStage::Repaired.is_success());
}

#[test]
fn allocation() {
    well_formed::<AllocationStage>();
    legal::<AllocationStage>(&[
        "planned", "pulling", "starting", "ready", "draining", "stopped",
    ]);
    legal::<AllocationStage>(&["planned", "pulling", "failed"]);
    legal::<AllocationStage>(&["planned", "pulling", "starting", "ready", "failed"]);
    illegal::<AllocationStage>("planned", "ready");
    illegal::<AllocationStage>("ready", "stopped");
    illegal::<AllocationStage>("stopped", "starting");
}

#[test]
fn host_drain() {
    well_formed::<HostDrainStage>();
    legal::<HostDrainStage>(&[
        "cordoned",
        "evacuating",
        "replacement_ready",
        "upgrading",
        "postcheck",
        "uncordoned",
    ]);
    illegal::<HostDrainStage>("cordoned", "upgrading");
    illegal::<HostDrainStage>("uncordoned", "cordoned");
}

#[test]
fn region_enablement() {
    well_formed::<RegionEnablementStage>();
    legal::<RegionEnablementStage>(&[
        "requested",
        "provisioning",
        "binding_services",
        "replicating_artifacts",
        "eligible",
        "disabled",
    ]);
    legal::<RegionEnablementStage>(&["requested", "provisioning", "binding_services", "disabled"]);
    illegal::<RegionEnablementStage>("requested", "eligible");
    illegal::<RegionEnablementStage>("disabled", "requested");
}

#[test]
fn migration() {
    well_formed::<MigrationStage>();
    legal::<MigrationStage>(&["classified", "dry_run", "locked", "applying", "verified"]);
    legal::<MigrationStage>(&[
        "classified",
        "blocked",
        "classified",
        "dry_run",
        "locked",
        "applying",
        "failed",
    ]);
    legal::<MigrationStage>(&["classified", "blocked", "failed"]);
    illegal::<MigrationStage>("blocked", "dry_run");
    illegal::<MigrationStage>("classified", "applying");
    illegal::<MigrationStage>("verified", "applying");
    illegal::<MigrationStage>("locked", "blocked");
}

#[test]
fn mutation() {
    well_formed::<MutationStage>();
    legal::<MutationStage>(&["requested", "applied"]);
    legal::<MutationStage>(&["requested", "failed"]);
    illegal::<MutationStage>("applied", "failed");
}
