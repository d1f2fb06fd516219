//! Rows the tests build on.

use anyhow::Result;
use chrono::Utc;
use rhone_schema::entity::{project, workspace};
use rhone_schema::{SchemaError, new_id};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait};
use uuid::Uuid;

pub async fn workspace<C: ConnectionTrait>(db: &C, name: &str) -> Result<workspace::Model> {
    Ok(try_workspace(db, name).await?)
}

pub async fn try_workspace<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<workspace::Model, SchemaError> {
    Ok(workspace::ActiveModel {
        id: Set(new_id()),
        name: Set(name.to_owned()),
        display_name: Set(name.to_uppercase()),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await?)
}

pub async fn try_project<C: ConnectionTrait>(
    db: &C,
    workspace_id: Uuid,
    name: &str,
) -> Result<project::Model, SchemaError> {
    Ok(project::ActiveModel {
        id: Set(new_id()),
        workspace_id: Set(workspace_id),
        name: Set(name.to_owned()),
        created_at: Set(Utc::now()),
    }
    .insert(db)
    .await?)
}
