//! Replays recorded workflow histories against today's workflow code, so a change that breaks
//! determinism fails here before it reaches a running operation. The histories are recorded
//! by the activities tests: `RHONE_RECORD_HISTORIES=$PWD/workflows/tests/histories
//! cargo test -p rhone-activities --test environment_create --test deploy_workflow
//! --test promotion_workflow --test wake_workflow`.

use std::path::Path;

use rhone_workflows::{DeployWorkflow, EnvironmentCreateWorkflow, PromotionWorkflow, WakeWorkflow};
use temporalio_client::WorkflowHistory;
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

#[tokio::test]
async fn recorded_histories_replay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("histories directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected recorded histories in {}",
        dir.display()
    );

    let options = WorkflowReplayerOptions::new()
        .register_workflow::<EnvironmentCreateWorkflow>()
        .expect("registers")
        .register_workflow::<DeployWorkflow>()
        .expect("registers")
        .register_workflow::<PromotionWorkflow>()
        .expect("registers")
        .register_workflow::<WakeWorkflow>()
        .expect("registers")
        .build();
    let replayer = WorkflowReplayer::new(options).expect("replayer");
    for file in files {
        let bytes = std::fs::read(&file).expect("readable history");
        let history = WorkflowHistory::from_json(&bytes).expect("history JSON");
        replayer
            .replay_workflow(history)
            .await
            .unwrap_or_else(|e| panic!("{} no longer replays: {e}", file.display()));
    }
}
