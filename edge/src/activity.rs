//! What the edge tells the control plane about a route key's use, for scale to zero: when
//! the key last had a request and how many live sockets it holds. A request costs one relaxed
//! load (and a store at most every [`TOUCH_RESOLUTION_MS`]); a reporter task writes the keys
//! whose activity moved to `route_activity`, one row per (route key, edge), every heartbeat.
//! The Wake workflow reads those rows to decide that a key is idle.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chrono::{DateTime, Utc};
use rhone_schema::entity::route_activity;
use sea_orm::{ActiveValue::Set, DatabaseConnection, DbErr, EntityTrait, sea_query::OnConflict};
use tokio::sync::watch;

use crate::table::RouteTable;

/// A request's time is kept to this many milliseconds, so a busy key is written to at most
/// this often from all worker threads together.
const TOUCH_RESOLUTION_MS: i64 = 100;
/// Rows of a key with live sockets are written again this often, so the control plane can
/// tell a held socket from a crashed edge's stale row.
const SOCKETS_REFRESH: Duration = Duration::from_secs(5);

/// The activity of one route key at one epoch.
#[derive(Default)]
pub(crate) struct Activity {
    /// Unix milliseconds of the last request, 0 for none yet.
    last_request_ms: AtomicI64,
    /// WebSockets open through this edge.
    sockets: AtomicI64,
    /// What the reporter last wrote: the request time and the socket count.
    reported_ms: AtomicI64,
    reported_sockets: AtomicI64,
    reported_at_ms: AtomicI64,
}

impl Activity {
    /// Notes a request now.
    pub(crate) fn touch(&self) {
        let now = now_ms();
        if now - self.last_request_ms.load(Ordering::Relaxed) >= TOUCH_RESOLUTION_MS {
            self.last_request_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Counts an open live socket until the guard is dropped.
    pub(crate) fn socket(self: &Arc<Self>) -> SocketGuard {
        self.sockets.fetch_add(1, Ordering::Relaxed);
        self.touch();
        SocketGuard(self.clone())
    }

    /// The row to write, if anything moved since the last one written.
    fn due(&self, now: i64) -> Option<(i64, i64)> {
        let last = self.last_request_ms.load(Ordering::Relaxed);
        let sockets = self.sockets.load(Ordering::Relaxed);
        let moved = last > self.reported_ms.load(Ordering::Relaxed)
            || sockets != self.reported_sockets.load(Ordering::Relaxed);
        let refresh = sockets > 0
            && now - self.reported_at_ms.load(Ordering::Relaxed)
                >= SOCKETS_REFRESH.as_millis() as i64;
        (moved || refresh).then_some((last, sockets))
    }

    fn reported(&self, last: i64, sockets: i64, now: i64) {
        self.reported_ms.store(last, Ordering::Relaxed);
        self.reported_sockets.store(sockets, Ordering::Relaxed);
        self.reported_at_ms.store(now, Ordering::Relaxed);
    }
}

impl fmt::Debug for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activity")
            .field(
                "last_request_ms",
                &self.last_request_ms.load(Ordering::Relaxed),
            )
            .field("sockets", &self.sockets.load(Ordering::Relaxed))
            .finish()
    }
}

/// Activity does not take part in a route's equality.
impl PartialEq for Activity {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Activity {}

/// An open live socket; dropping it closes the count.
pub(crate) struct SocketGuard(Arc<Activity>);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn at(ms: i64) -> Option<DateTime<Utc>> {
    (ms > 0)
        .then(|| DateTime::from_timestamp_millis(ms))
        .flatten()
}

/// Writes the activity of `table`'s keys every `every` until `stop` turns true (or its sender
/// goes), then once more.
pub(crate) async fn report(
    table: RouteTable,
    db: DatabaseConnection,
    edge_id: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            changed = stop.changed() => match changed {
                Ok(()) if !*stop.borrow() => continue,
                _ => break,
            },
            _ = interval.tick() => {}
        }
        match write_due(&table, &db, &edge_id).await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("route activity is written again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "writing route activity failed; idle keys may sleep late");
            }
            Err(_) => {}
        }
    }
    let _ = write_due(&table, &db, &edge_id).await;
}

/// Upserts the rows of the keys whose activity moved; returns how many.
pub(crate) async fn write_due(
    table: &RouteTable,
    db: &DatabaseConnection,
    edge_id: &str,
) -> Result<usize, DbErr> {
    let now = now_ms();
    let due = table.activities(|a| a.due(now));
    if due.is_empty() {
        return Ok(0);
    }
    let updated_at = at(now).unwrap_or_else(Utc::now);
    for chunk in due.chunks(500) {
        let rows = chunk
            .iter()
            .map(|(key, _, (last, sockets))| route_activity::ActiveModel {
                route_key: Set(key.to_string()),
                edge_id: Set(edge_id.to_owned()),
                last_request_at: Set(at(*last)),
                open_sockets: Set(i32::try_from(*sockets).unwrap_or(i32::MAX)),
                updated_at: Set(updated_at),
            });
        route_activity::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::columns([
                    route_activity::Column::RouteKey,
                    route_activity::Column::EdgeId,
                ])
                .update_columns([
                    route_activity::Column::LastRequestAt,
                    route_activity::Column::OpenSockets,
                    route_activity::Column::UpdatedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    for (_, a, (last, sockets)) in &due {
        a.reported(*last, *sockets, now);
    }
    Ok(due.len())
}
