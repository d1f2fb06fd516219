//! Fleet: the durable watch over the runner hosts. One run per task queue (workflow id
//! [`fleet_workflow_id`]), started by the worker and kept going with continue-as-new: every
//! tick it declares lost the runners unseen for longer than the lost-after time (each a
//! recorded `runner.lost` transition, its allocations fenced), then starts a Repair
//! ([`crate::repair`]) for each route owner that lost allocations and is due one. The timings are the sweeping
//! worker's own (its activity answers when to sweep next), so a worker restarted with new
//! settings applies them to the run it finds.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{ContinueAsNewOptions, WorkflowContext, WorkflowResult};

use crate::{
    activities::{FleetActivities, SweepInput},
    repair::start_repair,
    stages::step_options,
};

/// Ticks per run before it continues as new, keeping its history short.
const SWEEPS_PER_RUN: u32 = 500;
/// Every how many sweeps the watch ends the operations of closed workflows.
const ORPHAN_SWEEP_EVERY: u32 = 5;
/// Marks the runs that end orphaned operations (runs from before replay without it).
const END_ORPHANS_PATCH: &str = "end-orphaned-operations";

/// The workflow id of the fleet watch of `task_queue`.
pub fn fleet_workflow_id(task_queue: &str) -> String {
    format!("fleet:{task_queue}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetInput {
    /// A runner unseen this long is lost.
    pub lost_after_ms: u64,
    /// How often runners are checked.
    pub sweep_every_ms: u64,
}

#[workflow]
#[derive(Default)]
pub struct FleetWorkflow;

#[workflow_methods]
impl FleetWorkflow {
    #[run(name = "fleet")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: FleetInput) -> WorkflowResult<()> {
        // A sweep is a few quick queries: one a killed worker had in flight is retried
        // within seconds, so a restarted platform heals without waiting out a long timeout.
        let options = step_options(Duration::from_secs(4), 3);
        let mut sweeps = 0u32;
        loop {
            // A sweep that failed all its attempts (the control DB away) decides nothing:
            // the next tick sweeps again.
            let swept = ctx
                .execute_activity(
                    FleetActivities::sweep_runners,
                    SweepInput {
                        lost_after_ms: input.lost_after_ms,
                    },
                    options.clone(),
                )
                .await
                .ok();
            for need in swept.iter().flat_map(|s| &s.repairs) {
                start_repair(ctx, need).await?;
            }
            let next = swept
                .and_then(|swept| swept.next_sweep_ms)
                .unwrap_or(input.sweep_every_ms);
            // Operations whose workflow was cancelled or terminated from outside end too,
            // checked every few sweeps (one list of closed workflows each time).
            if sweeps.is_multiple_of(ORPHAN_SWEEP_EVERY) && ctx.patched(END_ORPHANS_PATCH) {
                let _ = ctx
                    .execute_activity(
                        FleetActivities::end_orphaned_operations,
                        (),
                        options.clone(),
                    )
                    .await;
            }
            sweeps += 1;
            if sweeps >= SWEEPS_PER_RUN || ctx.continue_as_new_suggested() {
                match ctx.continue_as_new(input.clone(), ContinueAsNewOptions::default()) {
                    Err(termination) => return Err(termination),
                    Ok(never) => match never {},
                }
            }
            ctx.timer(Duration::from_millis(next.max(100))).await;
        }
    }
}
