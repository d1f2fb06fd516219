//! The follower: the one task that writes the route table. Every `poll_interval` it applies
//! the route change log in order and the recently updated allocations, holds keys closed
//! across a gap (reloading a snapshot when the gap outlives `gap_grace`), and keeps the
//! edge's `edge_acks` row current. On stop it deletes that row.

use std::{
    collections::HashSet,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::watch;

use super::{
    RouteTable, db,
    mirror::{self, Mirror},
};
use crate::{config::EdgeConfig, error::BoxError};

/// Route changes read per query; more are read at once when a batch comes back full.
const BATCH: u64 = 10_000;
/// Changes applied per hold of the write lock, so readers never wait long.
const CHUNK: usize = 512;
/// How soon keys held as unverified are checked against a new snapshot; the wait doubles
/// while they stay unverified, up to `REVERIFY_MAX` (a reload of 100k keys costs about a
/// second of DB reads). A change to a held key checks at once.
const REVERIFY_FIRST: Duration = Duration::from_secs(5);
const REVERIFY_MAX: Duration = Duration::from_secs(300);
/// How often a failure that goes on is logged again.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long leaving (deleting the ack row) may take at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Follows the change log into `table` until `stop` turns true, then deletes the edge's
/// acknowledgement row. If the sender goes without saying so (the edge's future was dropped:
/// an aborted task), it returns and leaves the row, as a crash would; the drop also aborts
/// this task, and whichever happens first, the row stays.
pub(crate) async fn follow(
    table: RouteTable,
    db: DatabaseConnection,
    config: EdgeConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(config.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut f = Follower::new(table, db, config);
    loop {
        tokio::select! {
            changed = stop.changed() => match changed {
                Ok(()) if *stop.borrow() => break,
                Ok(()) => {}
                Err(_) => return,
            },
            _ = interval.tick() => f.tick().await,
        }
    }
    f.leave().await;
}

struct Follower {
    table: RouteTable,
    db: DatabaseConnection,
    config: EdgeConfig,
    started_at: DateTime<Utc>,
    /// The highest change applied with none missing before it; `None` until loaded.
    applied: Option<i64>,
    /// The newest allocation `updated_at` read.
    allocations_seen: Option<DateTime<Utc>>,
    gap: Option<Gap>,
    /// When held-unverified keys are checked against a new snapshot, and the wait after.
    reverify_at: Option<Instant>,
    reverify_wait: Duration,
    ack: AckState,
    failure: Option<Failure>,
}

/// A missing change and when it was first missed.
struct Gap {
    missing_seq: i64,
    since: Instant,
}

/// What the edge last wrote to its `edge_acks` row.
#[derive(Default)]
struct AckState {
    acked_seq: Option<i64>,
    acked_at: Option<DateTime<Utc>>,
    written_at: Option<Instant>,
}

/// A failure going on: logged when it starts, then every `FAILURE_LOG_EVERY`.
struct Failure {
    since: Instant,
    logged_at: Instant,
}

impl Follower {
    fn new(table: RouteTable, db: DatabaseConnection, config: EdgeConfig) -> Self {
        Self {
            table,
            db,
            config,
            started_at: Utc::now(),
            applied: None,
            allocations_seen: None,
            gap: None,
            reverify_at: None,
            reverify_wait: REVERIFY_FIRST,
            ack: AckState::default(),
            failure: None,
        }
    }

    async fn tick(&mut self) {
        let polled = self.poll().await;
        let acked = self
            .acknowledge()
            .await
            .map_err(|e| -> BoxError { format!("writing the edge acknowledgement: {e}").into() });
        self.note(polled.and(acked));
    }

    async fn poll(&mut self) -> Result<(), BoxError> {
        let due = self.reverify_at.is_some_and(|at| Instant::now() >= at);
        let Some(applied) = self.applied.filter(|_| !due) else {
            return self.reload().await;
        };
        let applied = self.follow_changes(applied).await?;
        if let Some(gap) = &self.gap
            && gap.since.elapsed() >= self.config.gap_grace
        {
            tracing::warn!(
                missing_seq = gap.missing_seq,
                applied,
                grace = ?self.config.gap_grace,
                "the missing route change did not appear; reloading a snapshot"
            );
            return self.reload().await;
        }
        Ok(self.follow_allocations().await?)
    }

    /// Applies the change log after `applied` up to the first missing seq; holds closed the
    /// keys of the changes after it. Returns the new `applied`.
    async fn follow_changes(&mut self, mut applied: i64) -> Result<i64, DbErr> {
        loop {
            let changes = db::changes_after(&self.db, applied, BATCH).await?;
            let full = changes.len() as u64 == BATCH;
            let n = mirror::contiguous(applied, &changes);
            let (ready, after_gap) = changes.split_at(n);
            for chunk in ready.chunks(CHUNK) {
                let outcome = {
                    let mut m = self.table.mirror();
                    let mut h = self.table.hot_mut();
                    m.apply_changes(&mut h, chunk)
                };
                if outcome.touched_unverified {
                    // The owner moved again: a snapshot may agree with the log now.
                    self.reverify_at = Some(Instant::now());
                    self.reverify_wait = REVERIFY_FIRST;
                }
            }
            if let Some(last) = ready.last() {
                applied = last.seq;
                self.applied = Some(applied);
                self.table
                    .shared
                    .applied_seq
                    .store(applied, Ordering::Release);
            }
            if after_gap.is_empty() {
                if let Some(gap) = self.gap.take() {
                    Mirror::release_gap(&mut self.table.hot_mut());
                    tracing::info!(
                        missing_seq = gap.missing_seq,
                        applied,
                        after = ?gap.since.elapsed(),
                        "the missing route change appeared; held keys reopen"
                    );
                }
                if full {
                    continue;
                }
                return Ok(applied);
            }
            let missing_seq = applied + 1;
            let keys: HashSet<&str> = after_gap.iter().map(|c| c.route_key.as_str()).collect();
            Mirror::hold_gap(&mut self.table.hot_mut(), missing_seq, &keys);
            if self
                .gap
                .as_ref()
                .is_none_or(|g| g.missing_seq != missing_seq)
            {
                self.table.shared.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    missing_seq,
                    next_seq = after_gap[0].seq,
                    held = keys.len(),
                    "route table gap: a route change is missing; holding the keys changed after it"
                );
                self.gap = Some(Gap {
                    missing_seq,
                    since: Instant::now(),
                });
            }
            return Ok(applied);
        }
    }

    async fn follow_allocations(&mut self) -> Result<(), DbErr> {
        let rows = db::allocations_since(&self.db, self.allocations_seen).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let newest = rows.iter().map(|r| r.updated_at).max();
        let count = {
            let mut m = self.table.mirror();
            let changed = m.apply_allocation_rows(&rows);
            // Rows read again within the overlap change nothing: readers are not locked out.
            if !changed.is_empty() {
                m.rebuild(&mut self.table.hot_mut(), &changed);
            }
            m.allocation_count()
        };
        self.table
            .shared
            .allocations
            .store(count, Ordering::Relaxed);
        self.allocations_seen = self.allocations_seen.max(newest);
        Ok(())
    }

    async fn reload(&mut self) -> Result<(), BoxError> {
        let loaded = self.table.reload(&self.db).await?;
        self.applied = Some(loaded.head);
        self.gap = None;
        if loaded.unverified > 0 {
            self.reverify_at = Some(Instant::now() + self.reverify_wait);
            self.reverify_wait = (self.reverify_wait * 2).min(REVERIFY_MAX);
        } else {
            self.reverify_at = None;
            self.reverify_wait = REVERIFY_FIRST;
        }
        // The snapshot read every allocation; following starts from its newest row. The
        // overlap window covers rows committed meanwhile with an older stamp.
        self.allocations_seen = loaded.allocations_seen;
        Ok(())
    }

    /// Writes the ack row when `applied` moved (promptly: promotions wait for it) or when
    /// the heartbeat is due.
    async fn acknowledge(&mut self) -> Result<(), DbErr> {
        let Some(applied) = self.applied else {
            return Ok(());
        };
        let moved = self.ack.acked_seq != Some(applied);
        let due = self
            .ack
            .written_at
            .is_none_or(|at| at.elapsed() >= self.config.heartbeat);
        if !moved && !due {
            return Ok(());
        }
        let now = Utc::now();
        let acked_at = match self.ack.acked_at {
            Some(at) if !moved => at,
            _ => now,
        };
        db::upsert_ack(
            &self.db,
            db::Ack {
                edge_id: self.config.edge_id.clone(),
                address: self.config.address.clone(),
                acked_seq: applied,
                acked_at,
                seen_at: now,
                started_at: self.started_at,
            },
        )
        .await?;
        if moved {
            tracing::debug!(edge_id = %self.config.edge_id, acked_seq = applied, "acknowledged");
        }
        self.ack = AckState {
            acked_seq: Some(applied),
            acked_at: Some(acked_at),
            written_at: Some(Instant::now()),
        };
        Ok(())
    }

    /// Logs a failing poll when it starts and then now and again, and its recovery.
    fn note(&mut self, result: Result<(), BoxError>) {
        match (result, &mut self.failure) {
            (Ok(()), None) => {}
            (Ok(()), Some(f)) => {
                tracing::info!(after = ?f.since.elapsed(), "the route table is following the control DB again");
                self.failure = None;
            }
            (Err(e), None) => {
                tracing::warn!(error = %chain(&*e), loaded = self.applied.is_some(), "following the control DB failed; serving the table as it is");
                let now = Instant::now();
                self.failure = Some(Failure {
                    since: now,
                    logged_at: now,
                });
            }
            (Err(e), Some(f)) => {
                if f.logged_at.elapsed() >= FAILURE_LOG_EVERY {
                    tracing::warn!(error = %chain(&*e), failing_for = ?f.since.elapsed(), "following the control DB still fails");
                    f.logged_at = Instant::now();
                }
            }
        }
    }

    /// Deletes the ack row: the edge leaves, so promotions stop waiting for it.
    async fn leave(self) {
        let edge_id = &self.config.edge_id;
        match tokio::time::timeout(LEAVE_TIMEOUT, db::delete_ack(&self.db, edge_id)).await {
            Ok(Ok(())) => tracing::info!(%edge_id, "edge left: acknowledgement row deleted"),
            Ok(Err(e)) => {
                tracing::warn!(%edge_id, error = %e, "deleting the edge acknowledgement failed")
            }
            Err(_) => tracing::warn!(%edge_id, "deleting the edge acknowledgement timed out"),
        }
    }
}

/// An error and its causes, `outer: inner: innermost`, for logs.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
