//! Promotion and rollback.

use async_graphql::{Context, Object};
use uuid::Uuid;

use crate::{
    graphql::{caller, types::Operation},
    service::promotions,
};

#[derive(Default)]
pub struct PromotionMutation;

#[Object]
impl PromotionMutation {
    /// Promotes a validated preview deployment (its deploy reached `preview_ready`) to a
    /// staging or production environment of the same app: records a new deployment there
    /// with the preview's exact artifact (`promotedFrom` names the preview) and starts the
    /// promotion, which checks the gates, waits for an approval where the environment
    /// requires one, starts the allocations and moves the environment's RouteOwner from the
    /// epoch it has now to the next by compare-and-swap. Needs developer. Returns the
    /// running operation (kind PROMOTION, target the new deployment).
    async fn promote(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The preview deployment whose artifact is promoted.")] deployment_id: Uuid,
        #[graphql(desc = "The environment to promote to.")] environment_id: Uuid,
        #[graphql(desc = "Allocations to run, 1 to 20. Default: 1.")] instances: Option<i32>,
    ) -> async_graphql::Result<Operation> {
        let (state, actor) = caller(ctx)?;
        let instances = instances.unwrap_or(1);
        let op =
            promotions::promote(state, actor, deployment_id, environment_id, instances).await?;
        Ok(Operation::try_from(op)?)
    }

    /// Points an environment's route back at a deployment that served it before: `to`, or
    /// by default the last one before the current owner. Runs the promotion machine (kind
    /// ROLLBACK, target that deployment), whose policy check refuses an unsafe target (an
    /// incompatible state schema, migrations since). Needs developer.
    async fn rollback(
        &self,
        ctx: &Context<'_>,
        environment_id: Uuid,
        #[graphql(
            desc = "A deployment of the environment that owned its route before. Default: the owner before the current one."
        )]
        to: Option<Uuid>,
    ) -> async_graphql::Result<Operation> {
        let (state, actor) = caller(ctx)?;
        let op = promotions::rollback(state, actor, environment_id, to).await?;
        Ok(Operation::try_from(op)?)
    }
}
