//! Repair end to end on a real Temporal dev server, a real worker (its fleet watch sweeping
//! every second), real builds of `examples/counter` and an in-test runner: an allocation of
//! a production route that dies after it was healthy is replaced by a Repair operation
//! (`detected → replacing → ready → repaired`, evidence naming what died and where the
//! replacement went) and the edge serves again from both instances; a replacement that
//! crashes at every start backs off and parks the repair `needs_attention` with the app's
//! last log lines, and a retry once the cause is gone repairs the route.

#[allow(dead_code)]
mod deploy_support;
#[allow(dead_code)]
#[path = "deploy_workflow/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "promotion_workflow/prod.rs"]
mod prod;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use deploy_support::{Repo, commit, replace_in};
use harness::stages;
use prod::Prod;
use rhone_core::{OperationKind, repair_workflow_id};
use rhone_schema::entity::{allocation, operation, route_owner, runtime_service_binding};
use rhone_workflows::{Decision, DecisionKind, DecisionUpdate};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

/// A version of the example app that exits (status 3) once marker `exit-<its allocation
/// id>` appears, and crashes at start while marker `crash-at-start` exists, saying so.
fn mortal(p: &Prod) -> Result<Repo> {
    let (_, dir) = p.h.marker("");
    let repo = p.h.repo("repo", |_| Ok(()))?;
    replace_in(
        &repo.path.join("server.py"),
        "import os\n",
        &format!(
            r#"import os
import sys
import threading
import time

_MARKERS = {dir:?}
if os.path.exists(os.path.join(_MARKERS, "crash-at-start")):
    sys.stderr.write("crashing at start on purpose: marker crash-at-start\n")
    sys.stderr.flush()
    os._exit(4)


def _watch_for_exit():
    mine = os.path.join(_MARKERS, "exit-" + os.environ.get("RHONE_ALLOCATION_ID", ""))
    while not os.path.exists(mine):
        time.sleep(0.05)
    sys.stderr.write("exiting on purpose: marker " + mine + "\n")
    sys.stderr.flush()
    os._exit(3)


threading.Thread(target=_watch_for_exit, daemon=True).start()
"#
        ),
    )?;
    commit(&repo.path, "exits on a marker")
}

/// Promotes `repo` with `instances` allocations; the route key and the serving allocations.
/// More than one instance needs a session store: production gets a ready one.
async fn promoted(p: &Prod, repo: &Repo, instances: u32) -> Result<(String, Vec<Uuid>)> {
    if instances > 1 {
        runtime_service_binding::ActiveModel {
            id: Set(Uuid::now_v7()),
            environment_id: Set(p.env.id),
            service: Set("session_store".into()),
            status: Set("ready".into()),
            config: Set(serde_json::json!({})),
            created_at: Set(chrono::Utc::now()),
            // Not probed: written as a provisioner would.
            ..Default::default()
        }
        .insert(&p.h.fx.db)
        .await?;
    }
    let (d, digest) = p.preview(repo).await?;
    let promoted = p.promote(d, instances).await?;
    let seen = p.ended(promoted).await?;
    assert_eq!(seen.op.status, "succeeded", "{:?}", seen.op.error);
    p.serves(0, &digest).await?;
    let owner = p.owner().await?.context("an owner")?;
    assert_eq!(owner.instances, instances as i32);
    let ids = serving(p, &owner).await?;
    assert_eq!(ids.len(), instances as usize);
    Ok((owner.route_key, ids))
}

/// The owner's allocations that are ready and meant to run.
async fn serving(p: &Prod, owner: &route_owner::Model) -> Result<Vec<Uuid>> {
    Ok(allocation::Entity::find()
        .filter(allocation::Column::DeploymentId.eq(owner.deployment_id))
        .filter(allocation::Column::Desired.eq("run"))
        .filter(allocation::Column::Stage.eq("ready"))
        .order_by_asc(allocation::Column::Id)
        .all(&p.h.fx.db)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect())
}

/// Waits for the `n`-th Repair operation of `key` (1-based) to be in status `status`.
async fn repair(p: &Prod, key: &str, n: usize, status: &str) -> Result<operation::Model> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let ops = operation::Entity::find()
            .filter(operation::Column::Kind.eq(OperationKind::Repair.as_str()))
            .filter(operation::Column::TargetId.eq(key))
            .order_by_asc(operation::Column::CreatedAt)
            .all(&p.h.fx.db)
            .await?;
        if let Some(op) = ops.get(n - 1) {
            if op.status == status {
                return Ok(op.clone());
            }
            if ["succeeded", "failed", "aborted"].contains(&op.status.as_str()) {
                bail!(
                    "repair {} ended {} at {} ({:?}), not {status}",
                    op.id,
                    op.status,
                    op.current_stage,
                    op.error
                );
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{} repair(s) of {key}: {ops:?}; expected #{n} {status}",
                ops.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn recorded(p: &Prod, id: Uuid) -> Result<Vec<rhone_schema::entity::operation_stage::Model>> {
    Ok(rhone_schema::ops::stages(&p.h.fx.db, id).await?)
}

/// An allocation that dies after it was healthy is replaced by a Repair: the operation
/// names what died and where the replacement went, and the edge serves from both again.
#[tokio::test]
async fn a_dead_allocation_is_replaced_by_a_repair_operation() -> Result<()> {
    let p = Prod::start_registered("repair_dead").await?;
    let repo = mortal(&p)?;
    let (key, before) = promoted(&p, &repo, 2).await?;
    let owner = p.owner().await?.context("an owner")?;
    assert!(
        operation::Entity::find()
            .filter(operation::Column::Kind.eq("repair"))
            .all(&p.h.fx.db)
            .await?
            .is_empty(),
        "a healthy route is not repaired"
    );

    let dead = before[0];
    std::fs::write(p.h.marker(&format!("exit-{dead}")).0, "")?;
    let op = repair(&p, &key, 1, "succeeded").await?;
    assert_eq!(op.actor, "worker:fleet");
    assert!(
        op.workflow_id
            .starts_with(&format!("{}/", repair_workflow_id(&key, owner.epoch))),
        "{}",
        op.workflow_id
    );
    let records = recorded(&p, op.id).await?;
    let names: Vec<String> = records.iter().map(|r| r.stage.clone()).collect();
    assert_eq!(
        names,
        stages(&["detected", "replacing", "ready", "repaired"])
    );
    let lost = &records[0].evidence["lost"];
    assert_eq!(lost[0]["allocation_id"], dead.to_string(), "{lost}");
    assert!(
        lost[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exit")),
        "{lost}"
    );
    assert_eq!(records[0].evidence["serving"], 1);
    let ready = &records[2].evidence;
    assert_eq!(ready["kept"], serde_json::json!([before[1]]), "{ready}");
    let replacement: Uuid =
        serde_json::from_value(ready["replacements"][0]["allocation_id"].clone())?;
    assert_eq!(ready["replacements"][0]["runner"], "runner-1", "{ready}");
    assert!(!before.contains(&replacement));

    let after = serving(&p, &owner).await?;
    assert_eq!(after.len(), 2);
    assert!(
        after.contains(&replacement) && after.contains(&before[1]),
        "{after:?}"
    );
    // The edge routes to both: each answers within a few requests.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let (status, stats) = p.stats(0).await?;
        assert_eq!(status, 200);
        if let Some(s) = stats {
            seen.insert(s.allocation_id);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        after.iter().copied().collect(),
        "the edge serves from both"
    );
    // Repaired is repaired: the next sweeps start nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let repairs = operation::Entity::find()
        .filter(operation::Column::Kind.eq("repair"))
        .all(&p.h.fx.db)
        .await?;
    assert_eq!(repairs.len(), 1);
    p.stop().await
}

/// A replacement that crashes at every start backs off, then parks the repair
/// `needs_attention` with the app's last log lines; a retry once the cause is gone repairs
/// the route.
#[tokio::test]
async fn a_crash_loop_needs_attention_with_the_last_log_lines() -> Result<()> {
    let p = Prod::start_registered("repair_crash_loop").await?;
    let repo = mortal(&p)?;
    let (key, before) = promoted(&p, &repo, 1).await?;
    let owner = p.owner().await?.context("an owner")?;

    std::fs::write(p.h.marker("crash-at-start").0, "")?;
    std::fs::write(p.h.marker(&format!("exit-{}", before[0])).0, "")?;
    let op = repair(&p, &key, 1, "needs_attention").await?;
    let error = op.error.clone().unwrap_or_default();
    assert!(
        error.contains("the replacement failed 3 times in a row")
            && error.contains("crashing at start on purpose"),
        "{error}"
    );
    let names: Vec<String> = recorded(&p, op.id)
        .await?
        .into_iter()
        .map(|r| r.stage)
        .collect();
    assert_eq!(
        names,
        stages(&["detected", "replacing", "replacing", "replacing"])
    );
    // Backed off: nothing else was started for the route while it waits for on-call.
    assert!(serving(&p, &owner).await?.is_empty());

    std::fs::remove_file(p.h.marker("crash-at-start").0)?;
    p.h.client
        .get_workflow_handle::<temporalio_common::UntypedWorkflow>(repair_workflow_id(
            &key,
            owner.epoch,
        ))
        .execute_update(
            DecisionUpdate(DecisionKind::Retry),
            Decision {
                actor: "oncall".into(),
                reason: Some("fixed the cause".into()),
                ..Decision::default()
            },
            Default::default(),
        )
        .await?;
    let op = repair(&p, &key, 1, "succeeded").await?;
    assert_eq!(op.current_stage, "repaired");
    assert_eq!(serving(&p, &owner).await?.len(), 1);
    assert_eq!(p.stats(0).await?.0, 200);
    p.stop().await
}
