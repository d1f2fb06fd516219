//! Route owners.

use async_graphql::{Context, Object};

use crate::{
    graphql::{caller, types::RouteOwner},
    service::routes,
};

#[derive(Default)]
pub struct RouteQuery;

#[Object]
impl RouteQuery {
    /// Who serves `host` now: its RouteOwner, with the deployment, the exact artifact and the
    /// epoch. Null when nothing owns the host or it belongs to a workspace you are not a
    /// member of.
    async fn route_owner(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A host, e.g. web.shop.acme.rhone.localhost; a port is ignored.")]
        host: String,
    ) -> async_graphql::Result<Option<RouteOwner>> {
        let (state, actor) = caller(ctx)?;
        let view = routes::owner_of_host(&state.db, actor, &host).await?;
        Ok(view.map(RouteOwner::try_from).transpose()?)
    }
}
