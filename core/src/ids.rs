//! Identifiers shared by the API, the workflows and the Temporal UI.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::operation::OperationKind;

/// The id of an Operation row. The Temporal workflow id is derived from it, so the API and
/// the Temporal UI name the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(pub Uuid);

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OperationId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(OperationId)
    }
}

/// The Temporal workflow id of an operation: `<kind>-<operation id>`, e.g.
/// `deploy-0193c1e2-…`. Readable in the Temporal UI and reversible with
/// [`operation_id_of_workflow`].
pub fn workflow_id(kind: OperationKind, id: OperationId) -> String {
    format!("{}-{}", kind.as_str(), id)
}

/// The operation id a workflow id was derived from, if it was derived by [`workflow_id`].
pub fn operation_id_of_workflow(workflow_id: &str) -> Option<OperationId> {
    // A UUID in hyphenated form is 36 characters; the kind before it may contain `_`.
    let split = workflow_id.len().checked_sub(36)?;
    let (kind, id) = workflow_id.split_at(split);
    let kind = kind.strip_suffix('-')?;
    kind.parse::<OperationKind>().ok()?;
    id.parse().ok()
}

/// The Temporal workflow id of the Wake of `route_key` at route epoch `epoch`:
/// `wake-<route key>-e<epoch>`. Every edge that finds the route asleep names the same
/// workflow, so concurrent requests coalesce into one run; each awake period is one run of
/// that id (one Operation, whose id is the run's id, see `rhone_workflows::wake`).
pub fn wake_workflow_id(route_key: &str, epoch: i64) -> String {
    format!("wake-{route_key}-e{epoch}")
}

/// The Temporal workflow id of the Repair of `route_key` at route epoch `epoch`:
/// `repair-<route key>-e<epoch>`. One runs at a time per route epoch (the fleet watch's
/// start of a second is refused while the first runs); each run is one Operation whose id
/// is the run's id, as for the Wake.
pub fn repair_workflow_id(route_key: &str, epoch: i64) -> String {
    format!("repair-{route_key}-e{epoch}")
}

/// The workflow id and, when given, the run id that `operations.workflow_id` names: a plain
/// workflow id (an operation whose workflow id is derived from it), or `<workflow id>/<run
/// id>` (an operation that is one run of a reused workflow id, a Wake: the Temporal UI's path
/// of the run). Split at the first `/`.
pub fn workflow_run_of(stored: &str) -> (&str, Option<&str>) {
    match stored.split_once('/') {
        Some((workflow_id, run_id)) => (workflow_id, Some(run_id)),
        None => (stored, None),
    }
}

/// The route key (host) of an environment: `<app>.<project>.<workspace>.<domain>` for the
/// `production` kind, `<env>.<app>.<project>.<workspace>.<domain>` for every other. Names
/// are DNS labels already ([`crate::Name`]), so the key is a valid host.
pub fn environment_route_key(
    env_name: &str,
    env_kind: &str,
    app: &str,
    project: &str,
    workspace: &str,
    domain: &str,
) -> String {
    if env_kind == "production" {
        format!("{app}.{project}.{workspace}.{domain}")
    } else {
        format!("{env_name}.{app}.{project}.{workspace}.{domain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_id_round_trips() {
        let id = OperationId(Uuid::from_u128(0x0193_c1e2_0000_7000_8000_0000_0000_0001));
        for kind in OperationKind::ALL {
            let wf = workflow_id(*kind, id);
            assert!(wf.starts_with(kind.as_str()));
            assert_eq!(operation_id_of_workflow(&wf), Some(id), "{wf}");
        }
        assert_eq!(operation_id_of_workflow("not-a-workflow"), None);
        assert_eq!(operation_id_of_workflow(&format!("bogus-{id}")), None);
    }

    #[test]
    fn wake_workflow_id_names_key_and_epoch() {
        assert_eq!(
            wake_workflow_id("web.shop.acme.rhone.localhost", 3),
            "wake-web.shop.acme.rhone.localhost-e3"
        );
        // Not an operation-derived id: the operation is the run, not the id.
        assert_eq!(operation_id_of_workflow(&wake_workflow_id("a", 1)), None);
    }

    #[test]
    fn stored_workflow_ids_name_a_run_when_they_have_one() {
        assert_eq!(workflow_run_of("deploy-x"), ("deploy-x", None));
        assert_eq!(
            workflow_run_of("wake-a.b-e3/0193c1e2-0000-7000-8000-000000000001"),
            ("wake-a.b-e3", Some("0193c1e2-0000-7000-8000-000000000001"))
        );
    }

    #[test]
    fn production_gets_the_short_host() {
        let key = |name, kind| {
            environment_route_key(name, kind, "web", "shop", "acme", "rhone.localhost")
        };
        assert_eq!(key("prod", "production"), "web.shop.acme.rhone.localhost");
        assert_eq!(
            key("preview", "preview"),
            "preview.web.shop.acme.rhone.localhost"
        );
        assert_eq!(key("qa", "staging"), "qa.web.shop.acme.rhone.localhost");
    }
}
