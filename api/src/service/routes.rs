//! Route owners as their workspace's members see them: which deployment and artifact a host
//! serves, at which epoch, moved by which operation.

use rhone_schema::entity::{deployment, environment, route_owner};
use sea_orm::{DatabaseConnection, EntityTrait};

use crate::{auth::Actor, error::ApiError, rbac, service::promotions};

/// The longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;

/// A RouteOwner with the deployment and environment it names.
pub(crate) struct OwnerView {
    pub owner: route_owner::Model,
    pub deployment: deployment::Model,
    pub environment: environment::Model,
}

/// A host as the edge keys it: lower case, without a port or a trailing dot.
pub(crate) fn route_key(host: &str) -> Result<String, ApiError> {
    let mut key = host.trim().to_ascii_lowercase();
    if let Some((name, port)) = key.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        key.truncate(name.len());
    }
    let key = key.trim_end_matches('.');
    let valid = !key.is_empty()
        && key.len() <= MAX_HOST_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(ApiError::invalid(
            "host",
            format!("{host:?} is not a host name like web.shop.acme.rhone.localhost"),
        ));
    }
    Ok(key.to_owned())
}

fn gone(owner: &route_owner::Model, what: &str, id: uuid::Uuid) -> ApiError {
    ApiError::internal(
        "reading a route owner",
        format!("the {what} {id} of route {} is gone", owner.route_key),
    )
}

async fn environment_of(
    db: &DatabaseConnection,
    owner: &route_owner::Model,
) -> Result<environment::Model, ApiError> {
    environment::Entity::find_by_id(owner.environment_id)
        .one(db)
        .await?
        .ok_or_else(|| gone(owner, "environment", owner.environment_id))
}

async fn view(
    db: &DatabaseConnection,
    owner: route_owner::Model,
    environment: environment::Model,
) -> Result<OwnerView, ApiError> {
    let deployment = deployment::Entity::find_by_id(owner.deployment_id)
        .one(db)
        .await?
        .ok_or_else(|| gone(&owner, "deployment", owner.deployment_id))?;
    Ok(OwnerView {
        owner,
        deployment,
        environment,
    })
}

/// The owner of `host`, or `None` when the host has none or its workspace is not the
/// caller's: the two answers look alike, so a host's existence is not leaked.
pub(crate) async fn owner_of_host(
    db: &DatabaseConnection,
    actor: &Actor,
    host: &str,
) -> Result<Option<OwnerView>, ApiError> {
    let key = route_key(host)?;
    let Some(owner) = route_owner::Entity::find_by_id(key).one(db).await? else {
        return Ok(None);
    };
    let environment = environment_of(db, &owner).await?;
    if rbac::role_in(db, actor, environment.workspace_id)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    Ok(Some(view(db, owner, environment).await?))
}

/// The owner of the route of an environment the caller has already been allowed to read.
pub(crate) async fn owner_of_environment(
    db: &DatabaseConnection,
    environment_id: uuid::Uuid,
) -> Result<Option<OwnerView>, ApiError> {
    match promotions::owner_of(db, environment_id).await? {
        Some(owner) => {
            let environment = environment_of(db, &owner).await?;
            Ok(Some(view(db, owner, environment).await?))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let check = |host: &str, expected: Option<&str>| {
            assert_eq!(route_key(host).ok().as_deref(), expected, "{host:?}");
        };
        check(
            "web.shop.acme.rhone.localhost",
            Some("web.shop.acme.rhone.localhost"),
        );
        check(
            " Web.Shop.ACME.rhone.localhost.:8081 ",
            Some("web.shop.acme.rhone.localhost"),
        );
        check(
            "preview.web.example.com:443",
            Some("preview.web.example.com"),
        );
        check("", None);
        check(":8081", None);
        check("web/shop", None);
        check("http://web.example.com", None);
        check(&"a".repeat(254), None);
    }
}
