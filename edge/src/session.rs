//! Session routing records for Vango's live transport: which allocation a session's socket
//! was accepted on, so a reconnect goes back there while it runs, and moves elsewhere only
//! as the route's bindings allow. A session whose allocation is gone resumes on another
//! one with its state hydrated only where a durable `session_store` is bound; otherwise the
//! new allocation is told to start it fresh. Either way the allocation learns which, by the
//! `x-rhone-session-resume` header (`pinned`, `new`, `hydrate` or `fresh`).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::route::Route;

/// The header that tells an allocation how a live session reaches it.
pub(crate) const RESUME_HEADER: &str = "x-rhone-session-resume";
/// The header naming the allocation a moved session was on.
pub(crate) const FROM_HEADER: &str = "x-rhone-session-from";
/// Removes the session headers a client sent: only the edge sets them.
pub(crate) fn strip(headers: &mut hyper::HeaderMap) {
    if headers.contains_key(RESUME_HEADER) || headers.contains_key(FROM_HEADER) {
        headers.remove(RESUME_HEADER);
        headers.remove(FROM_HEADER);
    }
}

/// How long a session's record is kept after its last socket was routed: beyond Vango's
/// resume window (30 s by default) with room to spare.
const KEEP: Duration = Duration::from_secs(600);
/// Records kept at most; the oldest go first.
const MAX_RECORDS: usize = 100_000;

/// How a live socket of a session reaches its allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Back to the allocation the session was on.
    Pinned(Uuid),
    /// The session's first socket through this edge.
    New,
    /// Its allocation is gone; a durable session store is bound, so state is hydrated.
    Hydrate { from: Uuid },
    /// Its allocation is gone and no session store is bound: the session starts fresh.
    Fresh { from: Uuid },
}

impl Resume {
    pub(crate) fn header(self) -> &'static str {
        match self {
            Resume::Pinned(_) => "pinned",
            Resume::New => "new",
            Resume::Hydrate { .. } => "hydrate",
            Resume::Fresh { .. } => "fresh",
        }
    }

    pub(crate) fn from(self) -> Option<Uuid> {
        match self {
            Resume::Hydrate { from } | Resume::Fresh { from } => Some(from),
            Resume::Pinned(_) | Resume::New => None,
        }
    }
}

/// Decides how a session whose socket was last on `pinned` reaches `route`.
pub(crate) fn resume(pinned: Option<Uuid>, route: &Route, store_bound: bool) -> Resume {
    match pinned {
        None => Resume::New,
        Some(id) if route.targets.iter().any(|t| t.allocation_id == id) => Resume::Pinned(id),
        Some(from) if store_bound => Resume::Hydrate { from },
        Some(from) => Resume::Fresh { from },
    }
}

/// Session → allocation records of one edge.
#[derive(Default)]
pub(crate) struct Sessions {
    records: Mutex<HashMap<String, (Uuid, Instant)>>,
}

impl Sessions {
    pub(crate) fn get(&self, session: &str) -> Option<Uuid> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records
            .get(session)
            .filter(|(_, at)| at.elapsed() < KEEP)
            .map(|(id, _)| *id)
    }

    pub(crate) fn pin(&self, session: &str, allocation: Uuid) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if records.len() >= MAX_RECORDS {
            records.retain(|_, (_, at)| at.elapsed() < KEEP);
            if records.len() >= MAX_RECORDS
                && let Some(oldest) = records
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
            {
                records.remove(&oldest);
            }
        }
        records.insert(session.to_owned(), (allocation, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Owner, Target};

    fn route(ids: &[u128]) -> Route {
        let targets = ids
            .iter()
            .map(|i| Target::new(Uuid::from_u128(*i), "http://127.0.0.1:9000").expect("target"))
            .collect();
        Route::new(
            Owner {
                route_key: "shop.localhost".into(),
                deployment_id: Uuid::nil(),
                artifact_digest: "sha256:00".into(),
                epoch: 1,
            },
            targets,
        )
    }

    #[test]
    fn a_session_goes_back_to_its_allocation_and_moves_only_as_bindings_allow() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(resume(None, &route(&[1, 2]), false), Resume::New);
        assert_eq!(resume(Some(a), &route(&[1, 2]), false), Resume::Pinned(a));
        assert_eq!(
            resume(Some(b), &route(&[1]), true),
            Resume::Hydrate { from: b }
        );
        assert_eq!(
            resume(Some(b), &route(&[1]), false),
            Resume::Fresh { from: b }
        );
        assert_eq!(Resume::Fresh { from: b }.header(), "fresh");
    }

    #[test]
    fn records_are_kept_per_session() {
        let s = Sessions::default();
        assert_eq!(s.get("x"), None);
        s.pin("x", Uuid::from_u128(7));
        assert_eq!(s.get("x"), Some(Uuid::from_u128(7)));
        s.pin("x", Uuid::from_u128(8));
        assert_eq!(s.get("x"), Some(Uuid::from_u128(8)));
    }
}
