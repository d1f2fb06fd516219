//! The in-memory route table: every route key's RouteOwner and the ready allocations inside
//! its authority, loaded from one verified snapshot and kept current by applying the route
//! change log in order (`follow.rs`). A request reads one map under a read lock and never
//! touches the DB; only the follower writes, and never while it waits on I/O.

mod db;
mod follow;
mod mirror;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    activity::Activity,
    error::EdgeError,
    route::{Route, RouteSource},
};

pub(crate) use follow::follow;
use mirror::Mirror;

/// How many held keys `/_rhone/status` lists.
const STATUS_CLOSED_KEYS: usize = 100;
/// How many disagreeing keys one snapshot logs one by one (the rest as a count).
const LOGGED_DISAGREEMENTS: usize = 20;

/// The edge's route authority in memory. Cheap to clone: clones share one table.
#[derive(Clone)]
pub struct RouteTable {
    shared: Arc<Shared>,
}

struct Shared {
    edge_id: String,
    hot: RwLock<Hot>,
    /// What only the follower reads: allocations by deployment, keys by deployment.
    mirror: Mutex<Mirror>,
    applied_seq: AtomicI64,
    gaps: AtomicU64,
    reloads: AtomicU64,
    allocations: AtomicUsize,
    last_reload_at: Mutex<Option<DateTime<Utc>>>,
    /// Bumped after every change to `hot`, so requests held for a route wake up.
    version: watch::Sender<u64>,
}

/// What a request reads.
#[derive(Default)]
struct Hot {
    /// False until the first snapshot is installed: nothing is served from an empty guess.
    loaded: bool,
    /// Every route key with a RouteOwner, held keys included (for on-call).
    routes: HashMap<Arc<str>, Arc<Route>>,
    /// Keys refused right now, and why. Usually empty, so a lookup costs one probe of it.
    held: HashMap<Arc<str>, Held>,
}

/// Why a route key is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held {
    /// A change to the key came after a missing sequence number.
    Gap { missing_seq: i64 },
    /// The snapshot's RouteOwner row and change log disagree about the key.
    Unverified {
        owner_epoch: i64,
        log_epoch: Option<i64>,
    },
}

impl Held {
    fn refusal(&self, route_key: &str) -> EdgeError {
        let route_key = route_key.to_owned();
        match *self {
            Held::Gap { missing_seq } => EdgeError::RouteTableGap {
                route_key,
                missing_seq,
            },
            Held::Unverified {
                owner_epoch,
                log_epoch,
            } => EdgeError::RouteUnverified {
                route_key,
                owner_epoch,
                log_epoch,
            },
        }
    }
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Held::Gap { missing_seq } => {
                write!(f, "route table gap: change {missing_seq} is missing")
            }
            Held::Unverified {
                owner_epoch,
                log_epoch: Some(log),
            } => write!(f, "owner at epoch {owner_epoch}, change log at epoch {log}"),
            Held::Unverified {
                owner_epoch,
                log_epoch: None,
            } => write!(f, "owner at epoch {owner_epoch}, no change in the log"),
        }
    }
}

/// The table has not installed its first snapshot yet.
#[derive(Debug, thiserror::Error)]
#[error("the route table has not loaded its first snapshot yet")]
struct NotLoaded;

/// Reading a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading a route table snapshot failed")]
    Snapshot(#[source] sea_orm::DbErr),
}

/// What one installed snapshot held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The change log's head when the snapshot was read.
    pub head: i64,
    pub route_keys: usize,
    /// Keys held closed because their owner and the change log disagree.
    pub unverified: usize,
    pub allocations: usize,
    /// The newest allocation update the snapshot saw, where following allocations starts.
    pub allocations_seen: Option<DateTime<Utc>>,
}

/// `GET /_rhone/status`: what an edge serves, for on-call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableStatus {
    pub edge_id: String,
    /// Whether the first snapshot is installed (before it, every route answers 503).
    pub loaded: bool,
    /// The highest route change applied with none missing before it (after a reload, the
    /// snapshot's head); what the edge acknowledges.
    pub applied_seq: i64,
    /// Route keys with a RouteOwner, held ones included.
    pub route_keys: usize,
    /// Keys refused right now, by key, at most 100.
    pub closed_keys: Vec<ClosedKey>,
    pub closed_total: usize,
    /// Ready allocations with an address, of every deployment.
    pub allocations: usize,
    /// Gaps seen in the change log since start.
    pub gaps: u64,
    /// Snapshots loaded again after the first (after a gap, or to re-verify held keys).
    pub reloads: u64,
    pub last_reload_at: Option<DateTime<Utc>>,
}

/// A route key refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedKey {
    pub route_key: String,
    pub reason: String,
}

impl RouteTable {
    /// An empty table, not loaded: every lookup is a 503 until [`RouteTable::reload`].
    pub fn new(edge_id: impl Into<String>) -> Self {
        Self {
            shared: Arc::new(Shared {
                edge_id: edge_id.into(),
                hot: RwLock::default(),
                mirror: Mutex::default(),
                applied_seq: AtomicI64::new(0),
                gaps: AtomicU64::new(0),
                reloads: AtomicU64::new(0),
                allocations: AtomicUsize::new(0),
                last_reload_at: Mutex::default(),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// The route of `route_key` as the table has it: no DB, no await.
    pub fn lookup(&self, route_key: &str) -> Result<Option<Arc<Route>>, EdgeError> {
        let hot = self.hot();
        if !hot.loaded {
            return Err(EdgeError::RouteTableUnavailable(Box::new(NotLoaded)));
        }
        if let Some(held) = hot.held.get(route_key) {
            return Err(held.refusal(route_key));
        }
        Ok(hot.routes.get(route_key).cloned())
    }

    /// Reads one verified snapshot (owners, allocations and the change log's head, in one
    /// read transaction) and replaces the whole table with it. Owners whose epoch is not
    /// their latest change's are held closed and logged.
    pub async fn reload(&self, db: &DatabaseConnection) -> Result<Loaded, TableError> {
        let mirror::Snapshot {
            head,
            allocations_seen,
            mirror,
            hot,
            disagreements,
        } = db::snapshot(db).await.map_err(TableError::Snapshot)?;
        for d in disagreements.iter().take(LOGGED_DISAGREEMENTS) {
            tracing::warn!(
                route_key = %d.route_key,
                owner_epoch = d.owner_epoch,
                log_epoch = ?d.log_epoch,
                "route owner disagrees with the change log; held closed until a snapshot agrees"
            );
        }
        if disagreements.len() > LOGGED_DISAGREEMENTS {
            tracing::warn!(
                held = disagreements.len(),
                "more route owners disagree with the change log than are logged"
            );
        }
        let loaded = Loaded {
            head,
            route_keys: hot.routes.len(),
            unverified: disagreements.len(),
            allocations: mirror.allocation_count(),
            allocations_seen,
        };
        let mut hot = hot;
        {
            // A key's activity (last request, open sockets) outlives a reload at its epoch:
            // a socket opened before it still keeps the app awake. Read under the read lock,
            // so requests are not held up.
            let current = self.hot();
            for (key, route) in hot.routes.iter_mut() {
                if let Some(old) = current.routes.get(key)
                    && old.owner.epoch == route.owner.epoch
                {
                    *route = Arc::new(route.with_activity(old.activity.clone()));
                }
            }
        }
        let (old_mirror, old_hot, was_loaded) = {
            let mut m = self.mirror();
            let mut h = self.hot_mut();
            let was_loaded = h.loaded;
            (
                std::mem::replace(&mut *m, mirror),
                std::mem::replace(&mut *h, hot),
                was_loaded,
            )
        };
        // The old table is freed outside the locks and off the async workers.
        tokio::task::spawn_blocking(move || drop((old_mirror, old_hot)));
        self.shared.applied_seq.store(head, Ordering::Release);
        self.shared
            .allocations
            .store(loaded.allocations, Ordering::Relaxed);
        if was_loaded {
            self.shared.reloads.fetch_add(1, Ordering::Relaxed);
            *self
                .shared
                .last_reload_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Utc::now());
        }
        tracing::info!(
            head,
            route_keys = loaded.route_keys,
            held = loaded.unverified,
            allocations = loaded.allocations,
            reload = was_loaded,
            "route table snapshot installed"
        );
        Ok(loaded)
    }

    /// What `GET /_rhone/status` reports.
    pub fn status(&self) -> TableStatus {
        let hot = self.hot();
        let mut closed: Vec<(&Arc<str>, &Held)> = hot.held.iter().collect();
        closed.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let closed_keys = closed
            .iter()
            .take(STATUS_CLOSED_KEYS)
            .map(|(k, h)| ClosedKey {
                route_key: k.to_string(),
                reason: h.to_string(),
            })
            .collect();
        TableStatus {
            edge_id: self.shared.edge_id.clone(),
            loaded: hot.loaded,
            applied_seq: self.shared.applied_seq.load(Ordering::Acquire),
            route_keys: hot.routes.len(),
            closed_keys,
            closed_total: hot.held.len(),
            allocations: self.shared.allocations.load(Ordering::Relaxed),
            gaps: self.shared.gaps.load(Ordering::Relaxed),
            reloads: self.shared.reloads.load(Ordering::Relaxed),
            last_reload_at: *self
                .shared
                .last_reload_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Whether the first snapshot is installed.
    pub fn is_loaded(&self) -> bool {
        self.hot().loaded
    }

    /// An estimate of the heap the table holds (maps, keys, routes, targets, the follower's
    /// allocation index), without the allocator's own overhead. Walks every key: for
    /// benchmarks and diagnostics, not for the status page.
    pub fn heap_estimate(&self) -> usize {
        let mirror = self.mirror();
        let hot = self.hot();
        mirror::heap_estimate(&mirror, &hot)
    }

    fn hot(&self) -> std::sync::RwLockReadGuard<'_, Hot> {
        self.shared
            .hot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The table for writing; readers held for a route are told when the guard drops.
    fn hot_mut(&self) -> HotMut<'_> {
        HotMut {
            guard: Some(
                self.shared
                    .hot
                    .write()
                    .unwrap_or_else(PoisonError::into_inner),
            ),
            version: &self.shared.version,
        }
    }

    /// A receiver that sees a new value after every change to the table: what a request
    /// held for a wake waits on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// The route keys whose activity `due` picks, with it, for the activity reporter: only
    /// those are cloned out of the table.
    pub(crate) fn activities<T>(
        &self,
        mut due: impl FnMut(&Activity) -> Option<T>,
    ) -> Vec<(Arc<str>, Arc<Activity>, T)> {
        self.hot()
            .routes
            .iter()
            .filter_map(|(k, r)| due(&r.activity).map(|t| (k.clone(), r.activity.clone(), t)))
            .collect()
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.shared
            .mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The write guard of the table: releases the lock, then bumps the version.
struct HotMut<'a> {
    guard: Option<std::sync::RwLockWriteGuard<'a, Hot>>,
    version: &'a watch::Sender<u64>,
}

impl std::ops::Deref for HotMut<'_> {
    type Target = Hot;
    fn deref(&self) -> &Hot {
        self.guard.as_deref().expect("held until drop")
    }
}

impl std::ops::DerefMut for HotMut<'_> {
    fn deref_mut(&mut self) -> &mut Hot {
        self.guard.as_deref_mut().expect("held until drop")
    }
}

impl Drop for HotMut<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl RouteSource for RouteTable {
    fn route(
        &self,
        route_key: &str,
    ) -> impl Future<Output = Result<Option<Arc<Route>>, EdgeError>> + Send {
        std::future::ready(self.lookup(route_key))
    }

    fn status(&self) -> Option<TableStatus> {
        Some(RouteTable::status(self))
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        Some(RouteTable::subscribe(self))
    }
}
