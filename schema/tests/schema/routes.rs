//! Route authority writes: epochs advance by one per change, the change log follows in
//! order, a retried write is a no-op, and a stale compare-and-swap loses.

use anyhow::Result;
use chrono::Utc;
use rhone_schema::{
    SchemaError,
    entity::{app, artifact, deployment, environment, project, route_change},
    new_id,
    routes::{OwnerWrite, write_owner},
    topology::ensure_runner,
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection, EntityTrait, QueryOrder};
use serde_json::json;
use uuid::Uuid;

use crate::fixtures::workspace;
use crate::support::on_both_backends;

on_both_backends!(
    epochs_advance_and_the_log_follows,
    stale_compare_and_swap_loses
);

struct Chain {
    env: Uuid,
    deployments: [Uuid; 2],
    region: Uuid,
    cell: Uuid,
}

async fn chain(db: &DatabaseConnection) -> Result<Chain> {
    let now = Utc::now();
    let ws = workspace(db, "routes").await?;
    let p = project::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(ws.id),
        name: Set("shop".into()),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    let a = app::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(ws.id),
        project_id: Set(p.id),
        name: Set("web".into()),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    let env = environment::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(ws.id),
        app_id: Set(a.id),
        name: Set("preview".into()),
        kind: Set("preview".into()),
        requires_approval: Set(false),
        scale_to_zero: Set(true),
        wake_budget_ms: Set(10_000),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    let mut deployments = [Uuid::nil(); 2];
    for (i, d) in deployments.iter_mut().enumerate() {
        let digest = format!("sha256:{:064x}", i + 1);
        artifact::ActiveModel {
            digest: Set(digest.clone()),
            size_bytes: Set(1),
            manifest: Set(json!({})),
            store_uri: Set("local".into()),
            created_at: Set(now),
        }
        .insert(db)
        .await?;
        *d = deployment::ActiveModel {
            id: Set(new_id()),
            workspace_id: Set(ws.id),
            app_id: Set(a.id),
            environment_id: Set(env.id),
            artifact_digest: Set(Some(digest)),
            source: Set(json!({})),
            stage: Set("preview_ready".into()),
            operation_id: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(db)
        .await?
        .id;
    }
    let runner = ensure_runner(db, "local", "local-a", "r1", "http://127.0.0.1:1").await?;
    let cell = rhone_schema::entity::cell::Entity::find_by_id(runner.cell_id)
        .one(db)
        .await?
        .expect("cell");
    Ok(Chain {
        env: env.id,
        deployments,
        region: cell.region_id,
        cell: cell.id,
    })
}

fn write(c: &Chain, i: usize, expected_epoch: Option<i64>) -> OwnerWrite {
    OwnerWrite {
        route_key: "preview.web.shop.routes.rhone.localhost".into(),
        environment_id: c.env,
        deployment_id: c.deployments[i],
        artifact_digest: format!("sha256:{:064x}", i + 1),
        region_id: c.region,
        cell_id: c.cell,
        operation_id: None,
        expected_epoch,
    }
}

async fn epochs_advance_and_the_log_follows(db: DatabaseConnection) -> Result<()> {
    let c = chain(&db).await?;
    assert_eq!(write_owner(&db, write(&c, 0, None)).await?.epoch, 1);
    assert_eq!(
        write_owner(&db, write(&c, 0, None)).await?.epoch,
        1,
        "a retried write is a no-op"
    );
    let second = write_owner(&db, write(&c, 1, Some(1))).await?;
    assert_eq!((second.epoch, second.deployment_id), (2, c.deployments[1]));
    assert_eq!(
        write_owner(&db, write(&c, 1, Some(1))).await?.epoch,
        2,
        "the same CAS retried is a no-op"
    );
    let log: Vec<(i64, Uuid)> = route_change::Entity::find()
        .order_by_asc(route_change::Column::Seq)
        .all(&db)
        .await?
        .into_iter()
        .map(|r| (r.epoch, r.deployment_id))
        .collect();
    assert_eq!(log, vec![(1, c.deployments[0]), (2, c.deployments[1])]);
    Ok(())
}

async fn stale_compare_and_swap_loses(db: DatabaseConnection) -> Result<()> {
    let c = chain(&db).await?;
    write_owner(&db, write(&c, 0, None)).await?;
    write_owner(&db, write(&c, 1, Some(1))).await?;
    let lost = write_owner(&db, write(&c, 0, Some(1))).await;
    match lost {
        Err(SchemaError::Conflict { what }) => {
            assert!(
                what.contains("started from epoch 1") && what.contains("at epoch 2"),
                "{what}"
            )
        }
        other => panic!("expected a route epoch conflict, got {other:?}"),
    }
    assert_eq!(
        route_change::Entity::find().all(&db).await?.len(),
        2,
        "the loser wrote nothing"
    );
    Ok(())
}
