//! Tenancy rows that a workflow creates (environments), idempotent on the id the API chose.

use std::sync::Arc;

use chrono::Utc;
use rhone_schema::{SchemaError, entity::environment};
use rhone_workflows::activities::{CreateEnvironmentInput, EnvironmentCreated, defs};
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::error::activity_error;

pub struct TenancyActivities {
    pub db: DatabaseConnection,
}

#[activities]
impl TenancyActivities {
    #[activity(definition = defs::CreateEnvironment)]
    pub async fn create_environment(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: CreateEnvironmentInput,
    ) -> Result<EnvironmentCreated, ActivityError> {
        let db = &self.db;
        let find = || environment::Entity::find_by_id(input.environment_id).one(db);
        if find()
            .await
            .map_err(|e| activity_error(e.into()))?
            .is_some()
        {
            return Ok(EnvironmentCreated {
                environment_id: input.environment_id,
                created: false,
            });
        }
        let row = environment::ActiveModel {
            id: Set(input.environment_id),
            workspace_id: Set(input.workspace_id),
            app_id: Set(input.app_id),
            name: Set(input.name.clone()),
            kind: Set(input.kind.clone()),
            requires_approval: Set(input.requires_approval),
            // Not given (an input from before the setting): the kind's default.
            self_approval: Set(input
                .self_approval
                .unwrap_or(input.kind != environment::KIND_PRODUCTION)),
            scale_to_zero: Set(input.scale_to_zero),
            wake_budget_ms: Set(input.wake_budget_ms),
            sleep_after_ms: Set(environment::DEFAULT_SLEEP_AFTER_MS),
            wake_state: Set(environment::WAKE_STATE_HOT.into()),
            created_at: Set(Utc::now()),
        };
        match environment::Entity::insert(row)
            .exec(db)
            .await
            .map_err(SchemaError::from)
        {
            Ok(_) => Ok(EnvironmentCreated {
                environment_id: input.environment_id,
                created: true,
            }),
            // A retry whose first attempt committed after the lookup above finds its own row.
            Err(_)
                if find()
                    .await
                    .map_err(|e| activity_error(e.into()))?
                    .is_some() =>
            {
                Ok(EnvironmentCreated {
                    environment_id: input.environment_id,
                    created: false,
                })
            }
            Err(SchemaError::Conflict { .. }) => Err(activity_error(SchemaError::Conflict {
                what: format!(
                    "an environment named {:?} already exists in this app",
                    input.name
                ),
            })),
            Err(e) => Err(activity_error(e)),
        }
    }
}
