//! Route resolution: a request's route key, the RouteOwner's authority for it, and the choice
//! of one ready allocation inside that authority (session affinity, else round robin).

use std::{
    borrow::Cow,
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use hyper::http::{HeaderMap, Uri, header, uri};
use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_schema::{
    allocations::Desired,
    entity::{allocation, route_owner},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use crate::{activity::Activity, error::EdgeError, table::TableStatus};

/// The cookie Vango keeps its session id in.
const SESSION_COOKIE: &str = "vango_session";
/// Paths of Vango's live transport, where the session id may come as `?session=`.
const LIVE_PATHS: [&str; 2] = ["/_vango/live", "/_vango/ws"];

/// Who serves a route key: the RouteOwner's deployment, artifact and epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub route_key: String,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub epoch: i64,
}

/// A ready allocation of the owner's deployment and artifact, reachable at `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub allocation_id: Uuid,
    base: uri::Authority,
}

impl Target {
    /// A target for `address` (`http://host:port`), or `None` if it is not one.
    pub fn new(allocation_id: Uuid, address: &str) -> Option<Self> {
        let uri: Uri = address.parse().ok()?;
        let plain_http = uri.scheme() == Some(&uri::Scheme::HTTP);
        let no_path = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
        let base = uri.authority()?.clone();
        (plain_http && no_path).then_some(Self {
            allocation_id,
            base,
        })
    }

    /// `http://host:port` of the allocation.
    pub fn address(&self) -> String {
        format!("http://{}", self.base)
    }

    /// `host:port` of the allocation: what the edge connects to, and its pool's key.
    pub(crate) fn authority(&self) -> &uri::Authority {
        &self.base
    }
}

/// The authority for one route key: its owner and the targets allowed to serve it, sorted by
/// allocation id so every edge sees them in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub owner: Owner,
    pub targets: Vec<Target>,
    /// The next round-robin position; per route, so no lock is shared between routes.
    turns: Turns,
    /// When the key last had a request and how many live sockets it holds, for idle
    /// detection; shared by every version of the route at one epoch.
    pub(crate) activity: Arc<Activity>,
}

impl Route {
    pub fn new(owner: Owner, targets: Vec<Target>) -> Self {
        Self {
            owner,
            targets,
            turns: Turns::default(),
            activity: Arc::default(),
        }
    }

    /// This route with `targets` instead, continuing the round robin where it was.
    pub(crate) fn with_targets(&self, targets: Vec<Target>) -> Self {
        Self {
            owner: self.owner.clone(),
            targets,
            turns: self.turns.clone(),
            activity: self.activity.clone(),
        }
    }

    /// This route counting its activity in `activity` (a reload keeps a key's activity).
    pub(crate) fn with_activity(&self, activity: Arc<Activity>) -> Self {
        Self {
            activity,
            ..self.clone()
        }
    }

    /// The target for a request: with a session, the target of highest rendezvous score for
    /// it, so the same session lands on the same allocation on every edge and only sessions
    /// of a removed allocation move; without one, the targets in turn.
    pub fn pick(&self, session: Option<&str>) -> Option<&Target> {
        match (self.targets.as_slice(), session) {
            ([], _) => None,
            ([only], _) => Some(only),
            (targets, Some(session)) => targets
                .iter()
                .max_by_key(|t| rendezvous(session, t.allocation_id)),
            (targets, None) => {
                let n = self.turns.0.fetch_add(1, Ordering::Relaxed);
                targets.get(n % targets.len())
            }
        }
    }
}

/// A round-robin counter that does not take part in a route's equality.
#[derive(Debug, Default)]
struct Turns(AtomicUsize);

impl Clone for Turns {
    fn clone(&self) -> Self {
        Self(AtomicUsize::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for Turns {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Turns {}

/// Where the edge reads route authority from: the in-memory [`crate::RouteTable`] fed by the
/// route change log (what [`crate::serve`] uses), or [`DbRoutes`], a DB read per request.
pub trait RouteSource: Send + Sync + 'static {
    /// The route of `route_key`, or `None` when no RouteOwner claims it.
    fn route(
        &self,
        route_key: &str,
    ) -> impl Future<Output = Result<Option<Arc<Route>>, EdgeError>> + Send;

    /// What `GET /_rhone/status` reports, for a source that keeps state worth reporting.
    fn status(&self) -> Option<TableStatus> {
        None
    }

    /// A receiver told of every change, for a source that can say; a request held for a
    /// wake polls a source that cannot.
    fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Route authority read from the control DB: two indexed reads per request (the owner by
/// primary key, then the owner's deployment's allocations). Simple, and a peer to measure
/// the route table against; [`crate::serve`] does not use it.
#[derive(Clone)]
pub struct DbRoutes {
    db: DatabaseConnection,
    /// The round-robin position of each key, since every request builds a fresh route.
    turns: Arc<Mutex<HashMap<String, usize>>>,
}

impl DbRoutes {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            turns: Arc::default(),
        }
    }

    fn next_turn(&self, route_key: &str) -> usize {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        let n = turns.entry(route_key.to_owned()).or_insert(0);
        let turn = *n;
        *n = n.wrapping_add(1);
        turn
    }
}

impl RouteSource for DbRoutes {
    async fn route(&self, route_key: &str) -> Result<Option<Arc<Route>>, EdgeError> {
        let unavailable = |e: sea_orm::DbErr| EdgeError::RouteTableUnavailable(Box::new(e));
        let Some(owner) = route_owner::Entity::find_by_id(route_key.to_owned())
            .one(&self.db)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        // Only inside the owner's authority: its deployment AND its artifact digest, ready,
        // meant to run, with an address. Another deployment's healthy allocation never serves.
        let rows = allocation::Entity::find()
            .filter(allocation::Column::DeploymentId.eq(owner.deployment_id))
            .filter(allocation::Column::ArtifactDigest.eq(owner.artifact_digest.as_str()))
            .filter(allocation::Column::Stage.eq(AllocationStage::Ready.as_str()))
            .filter(allocation::Column::Desired.eq(Desired::Run.as_str()))
            .filter(allocation::Column::Address.is_not_null())
            .order_by_asc(allocation::Column::Id)
            .all(&self.db)
            .await
            .map_err(unavailable)?;
        let targets = rows
            .iter()
            .filter_map(|a| {
                let address = a.address.as_deref()?;
                let target = Target::new(a.id, address);
                if target.is_none() {
                    tracing::warn!(allocation = %a.id, address, "ready allocation has an unusable address");
                }
                target
            })
            .collect();
        let owner = Owner {
            route_key: owner.route_key,
            deployment_id: owner.deployment_id,
            artifact_digest: owner.artifact_digest,
            epoch: owner.epoch,
        };
        let route = Route::new(owner, targets);
        route
            .turns
            .0
            .store(self.next_turn(route_key), Ordering::Relaxed);
        Ok(Some(Arc::new(route)))
    }
}

/// The route key of a request: its host, lowercased, without port.
pub fn route_key(headers: &HeaderMap) -> Option<String> {
    request_key(headers).map(Cow::into_owned)
}

/// [`route_key`], borrowed from the request when the host is already lowercase.
pub(crate) fn request_key(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

/// The session a request belongs to, if it says: `?session=` on Vango's live transport (the
/// socket being resumed), else the `vango_session` cookie.
pub fn affinity_key(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let from_query = || {
        if !LIVE_PATHS.contains(&uri.path()) {
            return None;
        }
        uri.query()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, v)| *k == "session" && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    };
    let from_cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, v)| *k == SESSION_COOKIE && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    };
    from_query().or_else(from_cookie)
}

/// A stable 64-bit score of (session, allocation): FNV-1a, then a splitmix64 finalizer to
/// spread its bits. The same on every edge and across restarts, unlike `DefaultHasher`.
fn rendezvous(session: &str, allocation: Uuid) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session.bytes().chain([0xff]).chain(allocation.into_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use hyper::http::HeaderValue;

    use super::*;

    fn check_key(host: Option<&str>, expected: Option<&str>) {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(
                header::HOST,
                HeaderValue::from_str(v).expect("valid header"),
            );
        }
        assert_eq!(route_key(&h).as_deref(), expected, "{host:?}");
    }

    #[test]
    fn route_keys() {
        check_key(Some("Shop.Example.COM"), Some("shop.example.com"));
        check_key(Some("shop.localhost:8081"), Some("shop.localhost"));
        check_key(Some(""), None);
        check_key(None, None);
    }

    fn check_affinity(uri: &str, cookie: Option<&str>, expected: Option<&str>) {
        let mut h = HeaderMap::new();
        if let Some(c) = cookie {
            h.insert(
                header::COOKIE,
                HeaderValue::from_str(c).expect("valid header"),
            );
        }
        let uri: Uri = uri.parse().expect("valid uri");
        assert_eq!(
            affinity_key(&h, &uri).as_deref(),
            expected,
            "{uri} {cookie:?}"
        );
    }

    #[test]
    fn affinity_keys() {
        check_affinity("/_vango/live?path=/&session=abc", None, Some("abc"));
        check_affinity(
            "/_vango/ws?session=abc",
            Some("vango_session=xyz"),
            Some("abc"),
        );
        check_affinity("/dashboard?session=abc", None, None);
        check_affinity(
            "/dashboard",
            Some("a=1; vango_session=xyz; b=2"),
            Some("xyz"),
        );
        check_affinity("/_vango/live?session=", Some("vango_session="), None);
        check_affinity("/", Some("other=1"), None);
    }

    #[test]
    fn targets_need_a_plain_http_address() {
        let id = Uuid::nil();
        assert!(Target::new(id, "http://127.0.0.1:8080").is_some());
        assert!(Target::new(id, "http://127.0.0.1:8080/").is_some());
        assert!(Target::new(id, "https://127.0.0.1:8080").is_none());
        assert!(Target::new(id, "http://127.0.0.1:8080/app").is_none());
        assert!(Target::new(id, "127.0.0.1:8080").is_none());
        let t = Target::new(id, "http://127.0.0.1:8080").expect("target");
        assert_eq!(t.authority().as_str(), "127.0.0.1:8080");
        assert_eq!(t.address(), "http://127.0.0.1:8080");
    }

    fn route(n: u128) -> Route {
        let targets = (1..=n)
            .map(|i| {
                Target::new(
                    Uuid::from_u128(i),
                    &format!("http://127.0.0.1:{}", 9000 + i),
                )
            })
            .collect::<Option<Vec<_>>>()
            .expect("targets");
        let owner = Owner {
            route_key: "shop.localhost".into(),
            deployment_id: Uuid::nil(),
            artifact_digest: "sha256:00".into(),
            epoch: 1,
        };
        Route::new(owner, targets)
    }

    #[test]
    fn round_robin_visits_every_target() {
        let r = route(3);
        let picks: Vec<u128> = (0..6)
            .filter_map(|_| r.pick(None))
            .map(|t| t.allocation_id.as_u128())
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert_eq!(route(0).pick(None), None);
        // A route rebuilt with new targets goes on from where the old one was.
        let next = r.with_targets(r.targets.clone());
        assert_eq!(next.pick(None).map(|t| t.allocation_id.as_u128()), Some(1));
    }

    #[test]
    fn a_session_sticks_and_sessions_spread() {
        let r = route(3);
        let mut seen = std::collections::HashSet::new();
        for s in 0..64 {
            let session = format!("session-{s}");
            let first = r.pick(Some(&session)).expect("a target");
            for _ in 0..3 {
                assert_eq!(r.pick(Some(&session)), Some(first));
            }
            seen.insert(first.allocation_id);
        }
        assert_eq!(seen.len(), 3, "64 sessions should use all 3 allocations");
    }

    #[test]
    fn removing_an_allocation_moves_only_its_sessions() {
        let full = route(3);
        for s in 0..64 {
            let session = format!("session-{s}");
            let before = full.pick(Some(&session)).expect("a target");
            let mut smaller = full.clone();
            smaller.targets.retain(|t| t.allocation_id.as_u128() != 3);
            let after = smaller.pick(Some(&session)).expect("a target");
            if before.allocation_id.as_u128() != 3 {
                assert_eq!(after, before, "{session} moved");
            }
        }
    }
}
