//! The audit log.

use async_graphql::{
    Context, Object,
    connection::{Connection, Edge},
};
use uuid::Uuid;

use crate::{
    cursor,
    graphql::{caller, types::AuditEntry},
    service::{audit, validate},
};

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Audit entries, newest first: a workspace's, or without `workspaceId` the caller's
    /// own entries that belong to no workspace (token creations).
    #[graphql(complexity = "(first.unwrap_or(20).clamp(1, 100) as usize) * child_complexity")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        workspace_id: Option<Uuid>,
        #[graphql(desc = "Page size, 1 to 100. Default: 20.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> async_graphql::Result<Connection<String, AuditEntry>> {
        let (state, actor) = caller(ctx)?;
        let page = validate::page(first, after.as_deref())?;
        let (rows, has_next) = audit::list(&state.db, actor, workspace_id, page).await?;
        let mut connection = Connection::new(page.after.is_some(), has_next);
        connection.edges.extend(
            rows.into_iter()
                .map(|row| Edge::new(cursor::encode(row.id), AuditEntry::from(row))),
        );
        Ok(connection)
    }
}
