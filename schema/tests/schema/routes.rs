//! Route authority writes: epochs advance by one per change, the change log follows in
//! order, a retried write is a no-op, and a stale compare-and-swap loses.

use anyhow::Result;
use rhone_schema::{
    SchemaError,
    entity::route_change,
    fixtures,
    routes::{OwnerWrite, write_owner},
};
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};
use uuid::Uuid;

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
    let t = fixtures::tenancy(db, "routes", "preview").await?;
    let mut deployments = [Uuid::nil(); 2];
    for (i, d) in deployments.iter_mut().enumerate() {
        let digest = fixtures::digest(i as u64 + 1);
        fixtures::artifact(db, &digest).await?;
        *d = fixtures::deployment(db, &t, &digest, "preview_ready")
            .await?
            .id;
    }
    let (cell, _) = fixtures::local_cell(db).await?;
    Ok(Chain {
        env: t.environment.id,
        deployments,
        region: cell.region_id,
        cell: cell.id,
    })
}

fn write(c: &Chain, i: usize, expected_epoch: Option<i64>) -> OwnerWrite {
    OwnerWrite {
        instances: 1,
        route_key: "preview.web.shop.routes.rhone.localhost".into(),
        environment_id: c.env,
        deployment_id: c.deployments[i],
        artifact_digest: fixtures::digest(i as u64 + 1),
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
