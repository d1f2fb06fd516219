//! A wake run's operation and what it needs about its route; the requests it records as
//! evidence; the environment's `wake_state`.

use chrono::Utc;
use rhone_core::OperationKind;
use rhone_schema::{
    SchemaError,
    entity::{audit_log, environment, operation, route_owner},
    ops::{self, NewOperation},
};
use rhone_workflows::activities::{WakeEvidenceInput, WakeOpenInput, WakeOpened, WakeStateInput};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use temporalio_sdk::activities::ActivityError;

use super::{WakeActivities, route_locked};
use crate::allocate::millis;
use crate::allocate::{self, db_err};
use crate::promotion::derived_id;

impl WakeActivities {
    /// The `wake_open` activity: creates the run's operation in `cold` (a continued run finds
    /// it and points `workflow_id` at itself), then reads the route owner. An owner at another
    /// epoch (or none) comes back as `superseded_by`; the run ends failed.
    pub async fn open(&self, input: &WakeOpenInput) -> Result<WakeOpened, ActivityError> {
        let db = &self.db;
        let key = &input.route_key;
        let owner = route_owner::Entity::find_by_id(key.clone())
            .one(db)
            .await
            .map_err(db_err)?;
        let env = match &owner {
            Some(o) => environment::Entity::find_by_id(o.environment_id)
                .one(db)
                .await
                .map_err(db_err)?,
            None => None,
        };
        self.operation(input, env.as_ref()).await?;

        let mut opened = WakeOpened {
            superseded_by: None,
            environment_id: env.as_ref().map(|e| e.id),
            deployment_id: None,
            digest: None,
            scale_to_zero: env.as_ref().is_some_and(|e| e.scale_to_zero),
            sleep_after_ms: env
                .as_ref()
                .map_or(environment::DEFAULT_SLEEP_AFTER_MS, |e| e.sleep_after_ms)
                .max(0) as u64,
            readiness_timeout_secs: 0,
            idle_check_ms: millis(self.config.idle_check),
            ready_allocations: Vec::new(),
            owner_operation_id: None,
        };
        let Some(owner) = owner else {
            tracing::warn!(%key, "the route has no owner");
            opened.superseded_by = Some(0);
            return Ok(opened);
        };
        if owner.epoch != input.epoch {
            tracing::info!(%key, owner_epoch = owner.epoch, "route epoch superseded");
            opened.superseded_by = Some(owner.epoch);
            return Ok(opened);
        }
        let manifest = allocate::manifest(db, &owner.artifact_digest).await?;
        opened.readiness_timeout_secs = manifest.app.process.readiness_timeout_secs;
        opened.ready_allocations =
            allocate::ready_of(db, owner.deployment_id, &owner.artifact_digest)
                .await
                .map_err(db_err)?
                .into_iter()
                .map(|a| a.id)
                .collect();
        opened.deployment_id = Some(owner.deployment_id);
        opened.digest = Some(owner.artifact_digest);
        opened.owner_operation_id = owner.operation_id;
        Ok(opened)
    }

    /// Creates the operation (or finds it again: a retry, a continued run).
    async fn operation(
        &self,
        input: &WakeOpenInput,
        env: Option<&environment::Model>,
    ) -> Result<(), ActivityError> {
        let db = &self.db;
        let id = input.operation_id.0;
        let existing = operation::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(db_err)?;
        if let Some(row) = existing {
            if row.workflow_id != input.workflow_ref {
                // A continued run: signals must reach the run that is alive.
                let mut active: operation::ActiveModel = row.into();
                active.workflow_id = Set(input.workflow_ref.clone());
                active.updated_at = Set(Utc::now());
                active.update(db).await.map_err(db_err)?;
            }
            return Ok(());
        }
        let kind = OperationKind::Wake;
        let created = ops::create_operation(
            db,
            NewOperation {
                id,
                workspace_id: env.map(|e| e.workspace_id),
                kind: kind.as_str(),
                actor: &input.actor,
                target_type: "route",
                target_id: &input.route_key,
                initial_stage: kind.initial_stage(),
                status: "running",
                workflow_id: &input.workflow_ref,
            },
        )
        .await;
        match created {
            Ok(_) => {
                tracing::info!(operation_id = %id, "wake operation opened");
                Ok(())
            }
            // An earlier attempt committed after the lookup above.
            Err(SchemaError::Conflict { .. }) => Ok(()),
            Err(e) => Err(db_err(e)),
        }
    }

    /// The `record_wake_request` activity: one audit row per request (its id is derived from
    /// the operation and the request key), with the request as its detail.
    pub async fn evidence(&self, input: &WakeEvidenceInput) -> Result<(), ActivityError> {
        let db = &self.db;
        let op = input.operation_id.0;
        let workspace_id = operation::Entity::find_by_id(op)
            .one(db)
            .await
            .map_err(db_err)?
            .and_then(|o| o.workspace_id);
        let row = audit_log::ActiveModel {
            id: Set(derived_id(&[
                "audit",
                "wake.request",
                &op.to_string(),
                &input.request_key,
            ])),
            workspace_id: Set(workspace_id),
            actor: Set(format!("edge:{}", input.edge_id)),
            action: Set("wake.request".into()),
            target_type: Set("route".into()),
            target_id: Set(input.route_key.clone()),
            operation_id: Set(Some(op)),
            detail: Set(input.request.clone()),
            created_at: Set(Utc::now()),
        };
        match audit_log::Entity::insert(row)
            .exec(db)
            .await
            .map_err(SchemaError::from)
        {
            // A retry finds the row its earlier attempt wrote.
            Ok(_) | Err(SchemaError::Conflict { .. }) => Ok(()),
            Err(e) => Err(db_err(e)),
        }
    }

    /// The `set_wake_state` activity: the environment's `wake_state`, written under the
    /// route lock and only while `epoch` is the route's (a superseded run never overwrites
    /// the state of the epoch after it). Whether it was written.
    pub async fn wake_state(&self, input: &WakeStateInput) -> Result<bool, ActivityError> {
        let txn = route_locked(&self.db).await?;
        let owner = route_owner::Entity::find_by_id(input.route_key.clone())
            .one(&txn)
            .await
            .map_err(db_err)?;
        let Some(owner) = owner.filter(|o| o.epoch == input.epoch) else {
            txn.rollback().await.map_err(db_err)?;
            return Ok(false);
        };
        set_state(&txn, owner.environment_id, &input.state).await?;
        txn.commit().await.map_err(db_err)?;
        Ok(true)
    }
}

/// Sets `environments.wake_state` of `environment_id`.
pub(crate) async fn set_state<C: sea_orm::ConnectionTrait>(
    db: &C,
    environment_id: uuid::Uuid,
    state: &str,
) -> Result<(), ActivityError> {
    environment::Entity::update_many()
        .col_expr(
            environment::Column::WakeState,
            sea_orm::sea_query::Expr::value(state),
        )
        .filter(environment::Column::Id.eq(environment_id))
        .exec(db)
        .await
        .map_err(db_err)?;
    Ok(())
}
