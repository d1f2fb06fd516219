//! The route table's state changes, with no I/O: building the table from a snapshot,
//! applying route changes (a change whose epoch is not newer than the table's is ignored),
//! applying allocation rows idempotently, and holding keys closed across a gap.

use std::{
    collections::{HashMap, HashSet},
    mem::size_of,
    sync::Arc,
};

use chrono::{DateTime, Utc};
use rhone_core::{StateMachine, stage::AllocationStage};
use rhone_schema::allocations::Desired;
use sea_orm::FromQueryResult;
use uuid::Uuid;

use super::{Held, Hot};
use crate::route::{Owner, Route, Target};

/// The table one read transaction saw, built as its rows streamed in.
pub(crate) struct Snapshot {
    /// `max(route_changes.seq)`, 0 for an empty log.
    pub head: i64,
    /// The newest `allocations.updated_at` of any row, where following allocations starts.
    pub allocations_seen: Option<DateTime<Utc>>,
    pub mirror: Mirror,
    pub hot: Hot,
    /// Owners held closed because the change log disagrees with them.
    pub disagreements: Vec<Disagreement>,
}

/// A RouteOwner row and the epoch of its key's latest change at or before the head.
#[derive(Debug, Clone, FromQueryResult)]
pub(crate) struct OwnerRow {
    pub route_key: String,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub epoch: i64,
    pub log_epoch: Option<i64>,
}

/// The columns of an allocation row the table reads.
#[derive(Debug, Clone, FromQueryResult)]
pub(crate) struct AllocationRow {
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
    pub desired: String,
    pub stage: String,
    pub address: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// One row of the route change log.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub(crate) struct Change {
    pub seq: i64,
    pub route_key: String,
    pub epoch: i64,
    pub deployment_id: Uuid,
    pub artifact_digest: String,
}

/// A snapshot owner whose epoch is not its latest change's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Disagreement {
    pub route_key: String,
    pub owner_epoch: i64,
    pub log_epoch: Option<i64>,
}

/// What a batch of changes did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub moved: usize,
    pub ignored: usize,
    /// A change named a key held closed as unverified: a snapshot may agree now.
    pub touched_unverified: bool,
}

/// An allocation allowed to serve its deployment's routes of the same artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alloc {
    id: Uuid,
    digest: Box<str>,
    target: Target,
}

/// What the follower knows of one deployment: its routable allocations (sorted by id) and
/// the route keys it owns. One map entry for both keeps the index small.
#[derive(Default)]
struct Deployment {
    allocations: Vec<Alloc>,
    keys: Vec<Arc<str>>,
}

impl Deployment {
    fn is_empty(&self) -> bool {
        self.allocations.is_empty() && self.keys.is_empty()
    }
}

/// The follower's own index, by deployment.
#[derive(Default)]
pub(crate) struct Mirror {
    deployments: HashMap<Uuid, Deployment>,
    count: usize,
    /// Allocations already reported with an unusable address, so each is logged once.
    unusable: HashSet<Uuid>,
}

/// A table being built from a snapshot's rows, each applied as it is read (so the rows are
/// never all in memory at once): every allocation first, then the owners.
pub(crate) struct Builder {
    mirror: Mirror,
    hot: Hot,
    disagreements: Vec<Disagreement>,
}

impl Builder {
    /// A builder for about `owners` route keys.
    pub(crate) fn new(owners: usize) -> Self {
        Self {
            mirror: Mirror::default(),
            hot: Hot {
                loaded: true,
                routes: HashMap::with_capacity(owners),
                held: HashMap::new(),
            },
            disagreements: Vec::new(),
        }
    }

    /// A ready, desired-run allocation with an address.
    pub(crate) fn allocation(&mut self, row: &AllocationRow) {
        self.mirror.apply_allocation(row);
    }

    /// An owner, held closed when its epoch is not its latest change's.
    pub(crate) fn owner(&mut self, row: OwnerRow) {
        let key: Arc<str> = Arc::from(row.route_key.as_str());
        if row.log_epoch != Some(row.epoch) {
            self.hot.held.insert(
                key.clone(),
                Held::Unverified {
                    owner_epoch: row.epoch,
                    log_epoch: row.log_epoch,
                },
            );
            self.disagreements.push(Disagreement {
                route_key: row.route_key.clone(),
                owner_epoch: row.epoch,
                log_epoch: row.log_epoch,
            });
        }
        let owner = Owner {
            route_key: row.route_key,
            deployment_id: row.deployment_id,
            artifact_digest: row.artifact_digest,
            epoch: row.epoch,
        };
        self.mirror.link(owner.deployment_id, key.clone());
        let targets = self.mirror.targets(&owner);
        self.hot
            .routes
            .insert(key, Arc::new(Route::new(owner, targets)));
    }

    pub(crate) fn finish(self, head: i64, allocations_seen: Option<DateTime<Utc>>) -> Snapshot {
        Snapshot {
            head,
            allocations_seen,
            mirror: self.mirror,
            hot: self.hot,
            disagreements: self.disagreements,
        }
    }
}

/// How many of `changes` (ordered by seq) follow `applied` with none missing.
pub(crate) fn contiguous(applied: i64, changes: &[Change]) -> usize {
    changes
        .iter()
        .zip(applied + 1..)
        .take_while(|(c, expected)| c.seq == *expected)
        .count()
}

impl Mirror {
    pub(crate) fn allocation_count(&self) -> usize {
        self.count
    }

    /// Applies `changes` in order: each moves its key to its owner, unless the table already
    /// has that epoch or a newer one for the key.
    pub(crate) fn apply_changes(&mut self, hot: &mut Hot, changes: &[Change]) -> Applied {
        let mut applied = Applied::default();
        for c in changes {
            if matches!(
                hot.held.get(c.route_key.as_str()),
                Some(Held::Unverified { .. })
            ) {
                applied.touched_unverified = true;
            }
            let current = hot.routes.get_key_value(c.route_key.as_str());
            if let Some((_, route)) = current
                && route.owner.epoch >= c.epoch
            {
                tracing::debug!(
                    route_key = %c.route_key,
                    seq = c.seq,
                    epoch = c.epoch,
                    have = route.owner.epoch,
                    "route change ignored: the table has this epoch or a newer one"
                );
                applied.ignored += 1;
                continue;
            }
            let (key, previous) = match current {
                Some((k, r)) => (k.clone(), Some(r.owner.deployment_id)),
                None => (Arc::from(c.route_key.as_str()), None),
            };
            if previous != Some(c.deployment_id) {
                if let Some(previous) = previous {
                    self.unlink(previous, &key);
                }
                self.link(c.deployment_id, key.clone());
            }
            let owner = Owner {
                route_key: c.route_key.clone(),
                deployment_id: c.deployment_id,
                artifact_digest: c.artifact_digest.clone(),
                epoch: c.epoch,
            };
            let targets = self.targets(&owner);
            hot.routes.insert(key, Arc::new(Route::new(owner, targets)));
            applied.moved += 1;
        }
        applied
    }

    /// Applies allocation rows (any state; the same row again changes nothing). Returns the
    /// deployments whose targets changed, for [`Mirror::rebuild`].
    pub(crate) fn apply_allocation_rows(&mut self, rows: &[AllocationRow]) -> HashSet<Uuid> {
        rows.iter()
            .filter(|row| self.apply_allocation(row))
            .map(|row| row.deployment_id)
            .collect()
    }

    /// Rebuilds the routes of the keys `deployments` own from their current targets.
    pub(crate) fn rebuild(&self, hot: &mut Hot, deployments: &HashSet<Uuid>) {
        for deployment in deployments {
            let Some(d) = self.deployments.get(deployment) else {
                continue;
            };
            for key in &d.keys {
                if let Some(route) = hot.routes.get_mut(key) {
                    let targets = self.targets(&route.owner);
                    *route = Arc::new(route.with_targets(targets));
                }
            }
        }
    }

    /// Both steps at once; returns how many deployments changed.
    #[cfg(test)]
    fn apply_allocations(&mut self, hot: &mut Hot, rows: &[AllocationRow]) -> usize {
        let changed = self.apply_allocation_rows(rows);
        self.rebuild(hot, &changed);
        changed.len()
    }

    /// Holds closed the keys changed after the missing change `missing_seq`, and reopens keys
    /// an earlier gap held that are not among them. A key held as unverified stays so.
    pub(crate) fn hold_gap(hot: &mut Hot, missing_seq: i64, keys: &HashSet<&str>) {
        hot.held
            .retain(|k, h| !matches!(h, Held::Gap { .. }) || keys.contains(&**k));
        for key in keys {
            if matches!(hot.held.get(*key), Some(Held::Unverified { .. })) {
                continue;
            }
            let key = hot
                .routes
                .get_key_value(*key)
                .map_or_else(|| Arc::from(*key), |(k, _)| k.clone());
            hot.held.insert(key, Held::Gap { missing_seq });
        }
    }

    /// Reopens every key a gap held.
    pub(crate) fn release_gap(hot: &mut Hot) {
        hot.held.retain(|_, h| !matches!(h, Held::Gap { .. }));
    }

    /// Sets one allocation from its row. Returns whether its deployment's targets changed.
    fn apply_allocation(&mut self, row: &AllocationRow) -> bool {
        let eligible =
            row.stage == AllocationStage::Ready.as_str() && row.desired == Desired::Run.as_str();
        let target = match (eligible, row.address.as_deref()) {
            (true, Some(address)) => {
                let target = Target::new(row.id, address);
                if target.is_none() && self.unusable.insert(row.id) {
                    tracing::warn!(allocation = %row.id, address, "ready allocation has an unusable address");
                }
                target
            }
            _ => None,
        };
        match target {
            Some(target) => {
                let list = &mut self
                    .deployments
                    .entry(row.deployment_id)
                    .or_default()
                    .allocations;
                if list.capacity() == 0 {
                    list.reserve_exact(1);
                }
                match list.binary_search_by_key(&row.id, |a| a.id) {
                    Ok(i) => {
                        let a = &mut list[i];
                        if a.target == target && *a.digest == *row.artifact_digest {
                            return false;
                        }
                        a.target = target;
                        a.digest = row.artifact_digest.as_str().into();
                    }
                    Err(i) => {
                        let digest = row.artifact_digest.as_str().into();
                        list.insert(
                            i,
                            Alloc {
                                id: row.id,
                                digest,
                                target,
                            },
                        );
                        self.count += 1;
                    }
                }
                true
            }
            None => {
                let Some(d) = self.deployments.get_mut(&row.deployment_id) else {
                    return false;
                };
                let Ok(i) = d.allocations.binary_search_by_key(&row.id, |a| a.id) else {
                    return false;
                };
                d.allocations.remove(i);
                if d.is_empty() {
                    self.deployments.remove(&row.deployment_id);
                }
                self.count -= 1;
                true
            }
        }
    }

    /// The targets of `owner`: allocations of its deployment AND its artifact digest only,
    /// however healthy another deployment's or artifact's allocation is.
    fn targets(&self, owner: &Owner) -> Vec<Target> {
        let Some(list) = self
            .deployments
            .get(&owner.deployment_id)
            .map(|d| &d.allocations)
        else {
            return Vec::new();
        };
        let inside = |a: &&Alloc| *a.digest == *owner.artifact_digest;
        let mut targets = Vec::with_capacity(list.iter().filter(inside).count());
        targets.extend(list.iter().filter(inside).map(|a| a.target.clone()));
        targets
    }

    fn link(&mut self, deployment: Uuid, key: Arc<str>) {
        let keys = &mut self.deployments.entry(deployment).or_default().keys;
        if keys.capacity() == 0 {
            keys.reserve_exact(1);
        }
        keys.push(key);
    }

    fn unlink(&mut self, deployment: Uuid, key: &str) {
        if let Some(d) = self.deployments.get_mut(&deployment) {
            d.keys.retain(|k| &**k != key);
            if d.is_empty() {
                self.deployments.remove(&deployment);
            }
        }
    }
}

/// The heap `mirror` and `hot` hold, from capacities and lengths (a hashbrown table holds
/// a power of two of buckets, each an entry and one control byte, at most 7/8 full).
pub(crate) fn heap_estimate(mirror: &Mirror, hot: &Hot) -> usize {
    fn table<K, V>(capacity: usize) -> usize {
        if capacity == 0 {
            return 0;
        }
        let buckets = (capacity * 8 / 7).next_power_of_two();
        buckets * (size_of::<(K, V)>() + 1)
    }
    // An `Arc` allocation carries two counters before the value.
    const ARC: usize = 2 * size_of::<usize>();
    let arc_str = |k: &Arc<str>| ARC + k.len();
    // A target's authority shares the parsed address's bytes: the address and a header.
    let target = |t: &Target| t.address().len() + ARC;
    let mut bytes = table::<Arc<str>, Arc<Route>>(hot.routes.capacity())
        + table::<Arc<str>, Held>(hot.held.capacity())
        + table::<Uuid, Deployment>(mirror.deployments.capacity());
    for (key, route) in &hot.routes {
        bytes += arc_str(key) + ARC + size_of::<Route>();
        bytes += route.owner.route_key.capacity() + route.owner.artifact_digest.capacity();
        bytes += route.targets.capacity() * size_of::<Target>();
        bytes += route.targets.iter().map(target).sum::<usize>();
    }
    for d in mirror.deployments.values() {
        bytes += d.allocations.capacity() * size_of::<Alloc>();
        bytes += d
            .allocations
            .iter()
            .map(|a| a.digest.len() + target(&a.target))
            .sum::<usize>();
        bytes += d.keys.capacity() * size_of::<Arc<str>>();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn digest(n: u8) -> String {
        format!("sha256:{n:02x}")
    }

    fn change(seq: i64, key: &str, epoch: i64, deployment: u128, d: u8) -> Change {
        Change {
            seq,
            route_key: key.to_owned(),
            epoch,
            deployment_id: dep(deployment),
            artifact_digest: digest(d),
        }
    }

    fn alloc(id: u128, deployment: u128, d: u8, stage: &str, desired: &str) -> AllocationRow {
        AllocationRow {
            id: Uuid::from_u128(id),
            deployment_id: dep(deployment),
            artifact_digest: digest(d),
            desired: desired.to_owned(),
            stage: stage.to_owned(),
            address: Some(format!("http://127.0.0.1:{}", 9000 + id)),
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    fn owner(key: &str, epoch: i64, log_epoch: Option<i64>, deployment: u128) -> OwnerRow {
        OwnerRow {
            route_key: key.to_owned(),
            deployment_id: dep(deployment),
            artifact_digest: digest(1),
            epoch,
            log_epoch,
        }
    }

    /// `key`'s owner deployment, epoch and target allocation ids, or why it is refused.
    fn served(hot: &Hot, key: &str) -> Result<Option<(u128, i64, Vec<u128>)>, Held> {
        if let Some(h) = hot.held.get(key) {
            return Err(h.clone());
        }
        Ok(hot.routes.get(key).map(|r| {
            let ids = r
                .targets
                .iter()
                .map(|t| t.allocation_id.as_u128())
                .collect();
            (r.owner.deployment_id.as_u128(), r.owner.epoch, ids)
        }))
    }

    fn build(owners: Vec<OwnerRow>, allocations: &[AllocationRow]) -> Snapshot {
        let mut b = Builder::new(owners.len());
        for a in allocations {
            b.allocation(a);
        }
        for o in owners {
            b.owner(o);
        }
        b.finish(0, None)
    }

    fn empty() -> (Mirror, Hot) {
        let s = build(vec![], &[]);
        assert!(s.disagreements.is_empty());
        (s.mirror, s.hot)
    }

    #[test]
    fn changes_apply_in_order_and_older_epochs_are_ignored() {
        let (mut m, mut h) = empty();
        m.apply_allocations(
            &mut h,
            &[
                alloc(1, 10, 1, "ready", "run"),
                alloc(2, 20, 1, "ready", "run"),
            ],
        );
        let a = m.apply_changes(
            &mut h,
            &[
                change(1, "a.test", 1, 10, 1),
                change(2, "a.test", 2, 20, 1),
                // A late writer's older epoch never moves the key back.
                change(3, "a.test", 1, 10, 1),
                change(4, "a.test", 2, 10, 1),
            ],
        );
        assert_eq!((a.moved, a.ignored), (2, 2));
        assert_eq!(served(&h, "a.test"), Ok(Some((20, 2, vec![2]))));
        assert_eq!(served(&h, "b.test"), Ok(None));
        // The key left deployment 10: its allocations no longer rebuild the key's route.
        m.apply_allocations(&mut h, &[alloc(3, 10, 1, "ready", "run")]);
        assert_eq!(served(&h, "a.test"), Ok(Some((20, 2, vec![2]))));
    }

    #[test]
    fn only_the_owners_deployment_and_digest_serve() {
        let (mut m, mut h) = empty();
        m.apply_changes(&mut h, &[change(1, "a.test", 1, 10, 1)]);
        m.apply_allocations(
            &mut h,
            &[
                alloc(5, 10, 1, "ready", "run"),
                alloc(4, 10, 2, "ready", "run"),    // other artifact
                alloc(3, 20, 1, "ready", "run"),    // other deployment, same artifact
                alloc(2, 10, 1, "starting", "run"), // not ready
                alloc(1, 10, 1, "ready", "stop"),   // not meant to run
                alloc(6, 10, 1, "ready", "run"),
            ],
        );
        assert_eq!(served(&h, "a.test"), Ok(Some((10, 1, vec![5, 6]))));
        let mut no_address = alloc(7, 10, 1, "ready", "run");
        no_address.address = None;
        let mut bad_address = alloc(8, 10, 1, "ready", "run");
        bad_address.address = Some("https://x".into());
        m.apply_allocations(&mut h, &[no_address, bad_address]);
        assert_eq!(m.allocation_count(), 4);
        assert_eq!(served(&h, "a.test"), Ok(Some((10, 1, vec![5, 6]))));
    }

    #[test]
    fn allocation_rows_apply_idempotently() {
        let (mut m, mut h) = empty();
        m.apply_changes(&mut h, &[change(1, "a.test", 1, 10, 1)]);
        let rows = [
            alloc(2, 10, 1, "ready", "run"),
            alloc(1, 10, 1, "ready", "run"),
        ];
        assert_eq!(m.apply_allocations(&mut h, &rows), 1);
        assert_eq!(m.apply_allocations(&mut h, &rows), 0, "the same rows again");
        assert_eq!(served(&h, "a.test"), Ok(Some((10, 1, vec![1, 2]))));
        // Draining, then stopped: the target goes once.
        assert_eq!(
            m.apply_allocations(&mut h, &[alloc(1, 10, 1, "draining", "stop")]),
            1
        );
        assert_eq!(
            m.apply_allocations(&mut h, &[alloc(1, 10, 1, "stopped", "stop")]),
            0
        );
        assert_eq!(served(&h, "a.test"), Ok(Some((10, 1, vec![2]))));
        assert_eq!(m.allocation_count(), 1);
    }

    #[test]
    fn snapshot_holds_owners_the_log_disagrees_with() {
        let s = build(
            vec![
                owner("ok.test", 3, Some(3), 10),
                owner("ahead.test", 5, Some(4), 10),
                owner("unlogged.test", 1, None, 10),
            ],
            &[alloc(1, 10, 1, "ready", "run")],
        );
        let (mut m, mut h, d) = (s.mirror, s.hot, s.disagreements);
        assert_eq!(served(&h, "ok.test"), Ok(Some((10, 3, vec![1]))));
        assert_eq!(
            served(&h, "ahead.test"),
            Err(Held::Unverified {
                owner_epoch: 5,
                log_epoch: Some(4)
            })
        );
        assert_eq!(d.len(), 2);
        // A change to a held key is applied but the key stays held until a snapshot agrees.
        let a = m.apply_changes(&mut h, &[change(10, "ahead.test", 6, 10, 1)]);
        assert!(a.touched_unverified);
        assert!(served(&h, "ahead.test").is_err());
        assert_eq!(h.routes["ahead.test"].owner.epoch, 6);
    }

    #[test]
    fn contiguous_stops_at_the_first_missing_seq() {
        let c = |seqs: &[i64]| -> Vec<Change> {
            seqs.iter()
                .map(|&s| change(s, "a.test", s, 10, 1))
                .collect()
        };
        assert_eq!(contiguous(4, &c(&[5, 6, 7])), 3);
        assert_eq!(contiguous(4, &c(&[5, 7, 8])), 1);
        assert_eq!(contiguous(4, &c(&[6, 7])), 0);
        assert_eq!(contiguous(4, &c(&[])), 0);
    }

    #[test]
    fn a_gap_holds_only_the_keys_after_it() {
        let (mut m, mut h) = empty();
        m.apply_changes(
            &mut h,
            &[change(1, "a.test", 1, 10, 1), change(2, "b.test", 1, 10, 1)],
        );
        Mirror::hold_gap(&mut h, 3, &HashSet::from(["a.test", "new.test"]));
        assert_eq!(served(&h, "a.test"), Err(Held::Gap { missing_seq: 3 }));
        assert_eq!(served(&h, "new.test"), Err(Held::Gap { missing_seq: 3 }));
        assert_eq!(served(&h, "b.test"), Ok(Some((10, 1, vec![]))));
        // The same gap seen again with fewer keys after it reopens the others.
        Mirror::hold_gap(&mut h, 3, &HashSet::from(["new.test"]));
        assert!(served(&h, "a.test").is_ok());
        Mirror::release_gap(&mut h);
        assert_eq!(served(&h, "new.test"), Ok(None));
    }

    #[test]
    fn the_estimate_grows_with_the_table() {
        let (mut m, mut h) = empty();
        let before = heap_estimate(&m, &h);
        let changes: Vec<Change> = (1..=100)
            .map(|i| change(i, &format!("k{i}.test"), 1, i as u128, 1))
            .collect();
        m.apply_changes(&mut h, &changes);
        assert!(heap_estimate(&m, &h) > before + 100 * 100);
    }
}
