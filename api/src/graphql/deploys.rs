//! Deploys.

use async_graphql::{Context, Object};
use uuid::Uuid;

use crate::{
    graphql::{caller, types::Operation},
    service::deploys,
};

#[derive(Default)]
pub struct DeployMutation;

#[Object]
impl DeployMutation {
    /// Deploys a repository at a ref to an environment: clone, build one immutable artifact,
    /// validate it, and serve it at a preview URL. Needs developer. Returns the running
    /// operation; its stages show the progress, and a `blocked` deploy waits for
    /// `decideOperation` (approve, retry, abort).
    async fn deploy(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        #[graphql(
            desc = "A git URL (https://, ssh://, git@host:) or an absolute path on the builder."
        )]
        repository: String,
        #[graphql(name = "ref", desc = "Branch, tag or commit. Default: HEAD.")] git_ref: Option<
            String,
        >,
    ) -> async_graphql::Result<Operation> {
        let (state, actor) = caller(ctx)?;
        let op = deploys::deploy(
            state,
            actor,
            environment_id,
            &repository,
            git_ref.as_deref(),
        )
        .await?;
        Ok(Operation::try_from(op)?)
    }
}
