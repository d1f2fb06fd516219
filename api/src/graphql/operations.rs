//! Operations: reads and decisions.

use async_graphql::{Context, Object, connection::Connection};
use uuid::Uuid;

use crate::{
    cursor,
    graphql::{
        caller,
        enums::{Decision, OperationKind, OperationStatus},
        types::Operation,
    },
    service::{operations, validate},
};

#[derive(Default)]
pub struct OperationQuery;

#[Object]
impl OperationQuery {
    async fn operation(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Operation> {
        let (state, actor) = caller(ctx)?;
        Ok(Operation::try_from(
            operations::operation(&state.db, actor, id).await?,
        )?)
    }

    /// A workspace's operations, newest first.
    async fn operations(
        &self,
        ctx: &Context<'_>,
        workspace_id: Uuid,
        kind: Option<OperationKind>,
        status: Option<OperationStatus>,
        #[graphql(desc = "Page size, 1 to 100. Default: 20.")] first: Option<i32>,
        #[graphql(desc = "The `endCursor` of the previous page.")] after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Operation>> {
        let (state, actor) = caller(ctx)?;
        let page = validate::page(first, after.as_deref())?;
        let (rows, has_next) = operations::list(
            &state.db,
            actor,
            workspace_id,
            kind.map(Into::into),
            status.map(Into::into),
            page,
        )
        .await?;
        let mut connection = Connection::new(page.after.is_some(), has_next);
        for row in rows {
            let cursor = cursor::encode(row.id);
            connection.edges.push(async_graphql::connection::Edge::new(
                cursor,
                Operation::try_from(row)?,
            ));
        }
        Ok(connection)
    }
}

#[derive(Default)]
pub struct OperationMutation;

#[Object]
impl OperationMutation {
    /// Sends a decision (approve, retry, abort) to an operation that is still running or
    /// waiting; needs developer. The workflow records what it changes; poll
    /// `operation(id)` to see it.
    async fn decide_operation(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        decision: Decision,
        reason: Option<String>,
    ) -> async_graphql::Result<Operation> {
        let (state, actor) = caller(ctx)?;
        let op = operations::decide(state, actor, id, decision.into(), reason).await?;
        Ok(Operation::try_from(op)?)
    }
}
