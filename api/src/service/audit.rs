//! The audit log, newest first: a workspace's entries for its viewers, and the caller's own
//! entries that belong to no workspace (token creations).

use rhone_core::Role;
use rhone_schema::entity::audit_log;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::{
    auth::Actor,
    error::ApiError,
    rbac::{self, Target},
    service::validate::PageArgs,
};

/// One page of audit entries and whether more follow.
pub(crate) async fn list(
    db: &DatabaseConnection,
    actor: &Actor,
    workspace_id: Option<Uuid>,
    page: PageArgs,
) -> Result<(Vec<audit_log::Model>, bool), ApiError> {
    use audit_log::Column;

    let scope = match workspace_id {
        Some(id) => {
            let target = Target {
                what: "workspace",
                id,
            };
            rbac::require(db, actor, id, Role::Viewer, target).await?;
            Condition::all().add(Column::WorkspaceId.eq(id))
        }
        None => Condition::all()
            .add(Column::WorkspaceId.is_null())
            .add(Column::Actor.eq(actor.subject())),
    };
    // Audit ids are UUIDv7, so the id orders entries by time and serves as the cursor.
    let mut rows = audit_log::Entity::find()
        .filter(scope.add_option(page.after.map(|after| Column::Id.lt(after))))
        .order_by_desc(Column::Id)
        .limit(page.first + 1)
        .all(db)
        .await?;
    let has_next = rows.len() as u64 > page.first;
    rows.truncate(page.first as usize);
    Ok((rows, has_next))
}
