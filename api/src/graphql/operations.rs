//! Operations: reads, decisions, and the stream of an operation's stages.

use async_graphql::{Context, Object, Subscription, connection::Connection};
use futures::{StreamExt, stream::BoxStream};
use uuid::Uuid;

use crate::{
    cursor,
    graphql::{
        caller,
        enums::{Decision, OperationKind, OperationStatus},
        types::{Operation, OperationStage},
    },
    service::{operations, validate},
};

/// A piece of a build's output, as the build wrote it (stdout and stderr interleaved).
#[derive(async_graphql::SimpleObject)]
pub struct BuildLogChunk {
    /// Orders the chunks of one operation, from 1, across attempts.
    pub seq: i32,
    /// The build attempt the chunk belongs to, from 1.
    pub attempt: i32,
    pub text: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

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

    /// The build log of a deploy operation, in chunks after `afterSeq` (0 for the start);
    /// poll with the last chunk's `seq` to follow a running build. Costs `first` times its
    /// selection toward the query's complexity limit (up to 64 KiB a chunk).
    #[graphql(complexity = "(first.clamp(1, 500) as usize) * child_complexity")]
    async fn build_log(
        &self,
        ctx: &Context<'_>,
        operation_id: Uuid,
        #[graphql(default = 0)] after_seq: i32,
        #[graphql(desc = "Chunks to return, 1 to 500. Default: 200.", default = 200)] first: i32,
    ) -> async_graphql::Result<Vec<BuildLogChunk>> {
        let (state, actor) = caller(ctx)?;
        if !(1..=500).contains(&first) || after_seq < 0 {
            return Err(crate::error::ApiError::invalid(
                "first",
                "must be from 1 to 500, with afterSeq at least 0",
            )
            .into());
        }
        operations::operation(&state.db, actor, operation_id).await?;
        let rows = rhone_schema::logs::read(&state.db, operation_id, after_seq, first as u64)
            .await
            .map_err(crate::error::ApiError::from)?;
        Ok(rows
            .into_iter()
            .map(|r| BuildLogChunk {
                seq: r.seq,
                attempt: r.attempt,
                text: r.chunk,
                created_at: r.created_at,
            })
            .collect())
    }

    /// A workspace's operations, newest first.
    #[graphql(complexity = "(first.unwrap_or(20).clamp(1, 100) as usize) * child_complexity")]
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

#[derive(Default)]
pub struct OperationSubscription;

#[Subscription]
impl OperationSubscription {
    /// Every stage record of an operation, in `seq` order and each once: those recorded so
    /// far, then new ones as they are written. Completes after the last record once the
    /// operation is final (succeeded, failed or aborted), and after one hour in any case.
    /// Served over WebSocket at `/graphql/ws`.
    async fn operation_stages(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<BoxStream<'static, async_graphql::Result<OperationStage>>> {
        let (state, actor) = caller(ctx)?;
        operations::operation(&state.db, actor, id).await?;
        Ok(
            operations::follow_stages(state.db.clone(), id, actor.token_id())
                .map(|record| {
                    record
                        .map(OperationStage::from)
                        .map_err(async_graphql::Error::from)
                })
                .boxed(),
        )
    }
}
