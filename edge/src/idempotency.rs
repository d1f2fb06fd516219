//! The edge's idempotency store: `idempotency_records` in the control DB, one row per
//! (route key and credential, `Idempotency-Key`; see [`scope`]). A request on a route declared idempotent, with a key and
//! an idempotency binding, is forwarded only by the request that created the row; a repeat
//! of the same request is answered from the row, a repeat while the first is in flight gets
//! 409, the same key with another request 422. A request that was never forwarded (the wake
//! missed its budget, the client went away while it was held) removes its row, so its retry
//! goes through; one that was sent but whose answer was lost keeps an "outcome unknown" 502,
//! so its retry is never applied again (`cold.rs`, `Claim`).
//!
//! The stored body is the response's `Content-Type`, a newline, then the response bytes.

use chrono::{Duration as ChronoDuration, Utc};
use hyper::body::Bytes;
use rhone_schema::entity::idempotency_record;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, sea_query::OnConflict,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long a key's answer is kept; expired rows are purged by [`purge_expired`].
const KEEP: ChronoDuration = ChronoDuration::hours(24);
/// The most unexpired records one route key holds (every credential's together): a new key
/// past it is refused (429) until old ones expire. Each may hold an answer of up to the
/// edge's body limit, so this bounds what one route's callers can make the DB keep.
pub(crate) const MAX_RECORDS_PER_ROUTE: u64 = 1000;

/// What the store says about a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Begin {
    /// The first request with this key: forward it, then [`complete`] or [`abandon`] the row.
    First(Uuid),
    /// The same request was answered before: send this again.
    Replay {
        status: u16,
        content_type: String,
        body: Bytes,
    },
    /// The first request with this key has not been answered yet.
    InFlight,
    /// The key was first used for a different request.
    Mismatch,
    /// The route already holds [`MAX_RECORDS_PER_ROUTE`] unexpired records.
    Full,
}

/// The key space of a request: its route key and, for a client that authenticates with an
/// `Authorization` header, a hash of it, so one credential never reads another's answers.
/// Cookie-authenticated clients share the route's key space (cookies change between a
/// request and its retry): their keys must be unguessable, as the Idempotency-Key draft asks.
pub(crate) fn scope(route_key: &str, authorization: Option<&hyper::header::HeaderValue>) -> String {
    match authorization {
        None => route_key.to_owned(),
        Some(v) => {
            let digest = Sha256::digest(v.as_bytes());
            format!("{route_key} auth:{}", &hex::encode(digest)[..32])
        }
    }
}

/// The hash that tells the same request from another: method, path and query, and body.
pub(crate) fn request_hash(method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path_and_query.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// Claims `key` in `scope` for a request of `hash`, or says what happened to it before.
pub(crate) async fn begin(
    db: &DatabaseConnection,
    route_key: &str,
    scope: &str,
    key: &str,
    hash: &str,
) -> Result<Begin, DbErr> {
    for _ in 0..2 {
        let id = Uuid::new_v4();
        let now = Utc::now();
        let inserted = idempotency_record::Entity::insert(idempotency_record::ActiveModel {
            id: Set(id),
            scope: Set(scope.to_owned()),
            key: Set(key.to_owned()),
            request_hash: Set(hash.to_owned()),
            status_code: Set(None),
            response_body: Set(None),
            created_at: Set(now),
            expires_at: Set(now + KEEP),
        })
        .on_conflict(
            OnConflict::columns([
                idempotency_record::Column::Scope,
                idempotency_record::Column::Key,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
        if inserted == 1 {
            // A new key: kept only within the route's quota (a known key never counts).
            if held_by_route(db, route_key).await? > MAX_RECORDS_PER_ROUTE {
                idempotency_record::Entity::delete_by_id(id)
                    .exec(db)
                    .await?;
                return Ok(Begin::Full);
            }
            return Ok(Begin::First(id));
        }
        let Some(row) = idempotency_record::Entity::find()
            .filter(idempotency_record::Column::Scope.eq(scope))
            .filter(idempotency_record::Column::Key.eq(key))
            .one(db)
            .await?
        else {
            continue; // removed in between: claim it again
        };
        if row.expires_at <= now {
            idempotency_record::Entity::delete_by_id(row.id)
                .exec(db)
                .await?;
            continue;
        }
        if row.request_hash != hash {
            return Ok(Begin::Mismatch);
        }
        return Ok(match (row.status_code, row.response_body) {
            (Some(status), body) => {
                let (content_type, body) = split(body.unwrap_or_default());
                Begin::Replay {
                    status: u16::try_from(status).unwrap_or(500),
                    content_type,
                    body,
                }
            }
            (None, _) => Begin::InFlight,
        });
    }
    Ok(Begin::InFlight)
}

/// Unexpired records of `route_key`, every credential's key space together.
async fn held_by_route(db: &DatabaseConnection, route_key: &str) -> Result<u64, DbErr> {
    idempotency_record::Entity::find()
        .filter(
            Condition::any()
                .add(idempotency_record::Column::Scope.eq(route_key))
                .add(idempotency_record::Column::Scope.starts_with(format!("{route_key} auth:"))),
        )
        .filter(idempotency_record::Column::ExpiresAt.gt(Utc::now()))
        .count(db)
        .await
}

/// Removes every record past its `expires_at`; how many. Each edge runs it now and then
/// (`PURGE_EVERY` in `lib.rs`); edges doing it at once only delete the same rows.
pub(crate) async fn purge_expired(db: &DatabaseConnection) -> Result<u64, DbErr> {
    Ok(idempotency_record::Entity::delete_many()
        .filter(idempotency_record::Column::ExpiresAt.lte(Utc::now()))
        .exec(db)
        .await?
        .rows_affected)
}

/// Stores the answer of the request that claimed row `id`.
pub(crate) async fn complete(
    db: &DatabaseConnection,
    id: Uuid,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Result<(), DbErr> {
    let mut stored = Vec::with_capacity(content_type.len() + 1 + body.len());
    stored.extend_from_slice(content_type.as_bytes());
    stored.push(b'\n');
    stored.extend_from_slice(body);
    idempotency_record::Entity::update(idempotency_record::ActiveModel {
        id: Set(id),
        status_code: Set(Some(i32::from(status))),
        response_body: Set(Some(stored)),
        ..Default::default()
    })
    .exec(db)
    .await?;
    Ok(())
}

/// Removes row `id`: its request was never forwarded, so a retry must go through.
pub(crate) async fn abandon(db: &DatabaseConnection, id: Uuid) -> Result<(), DbErr> {
    idempotency_record::Entity::delete_by_id(id)
        .exec(db)
        .await?;
    Ok(())
}

fn split(stored: Vec<u8>) -> (String, Bytes) {
    let stored = Bytes::from(stored);
    match stored.iter().position(|b| *b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&stored[..i]).into_owned(),
            stored.slice(i + 1..),
        ),
        None => ("application/octet-stream".to_owned(), stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_tells_requests_apart() {
        let a = request_hash("POST", "/actions/increment", b"{}");
        assert_eq!(a, request_hash("POST", "/actions/increment", b"{}"));
        assert_ne!(a, request_hash("POST", "/actions/increment", b"{ }"));
        assert_ne!(a, request_hash("PUT", "/actions/increment", b"{}"));
        assert_ne!(a, request_hash("POST", "/actions/incremen", b"t{}"));
    }

    #[test]
    fn a_credential_has_its_own_key_space() {
        let a = hyper::header::HeaderValue::from_static("Bearer a");
        let b = hyper::header::HeaderValue::from_static("Bearer b");
        assert_eq!(scope("shop.localhost", None), "shop.localhost");
        assert_ne!(
            scope("shop.localhost", Some(&a)),
            scope("shop.localhost", Some(&b))
        );
        assert_eq!(
            scope("shop.localhost", Some(&a)),
            scope("shop.localhost", Some(&a))
        );
        assert!(!scope("shop.localhost", Some(&a)).contains("Bearer"));
    }

    #[test]
    fn stored_bodies_keep_their_content_type() {
        assert_eq!(
            split(b"application/json\n{\"a\":1}".to_vec()),
            (
                "application/json".to_owned(),
                Bytes::from_static(b"{\"a\":1}")
            )
        );
    }

    async fn store() -> Result<(tempfile::TempDir, DatabaseConnection), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let db = rhone_schema::connect(&url).await?;
        rhone_schema::migrate(&db).await?;
        Ok((dir, db))
    }

    /// A route's callers (every credential together) can make the DB keep at most
    /// `MAX_RECORDS_PER_ROUTE` records; a key already held still answers, another route is
    /// not affected, and once the records expire the purge frees the route.
    #[tokio::test]
    async fn a_route_holds_at_most_its_quota_until_the_purge()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_dir, db) = store().await?;
        let route = "app.example.com";
        let now = Utc::now();
        let rows = (0..MAX_RECORDS_PER_ROUTE).map(|i| idempotency_record::ActiveModel {
            id: Set(Uuid::new_v4()),
            // Half under the route's own key space, half under a credential's.
            scope: Set(if i % 2 == 0 {
                route.to_owned()
            } else {
                format!("{route} auth:{i:032}")
            }),
            key: Set(format!("k{i}")),
            request_hash: Set("h".to_owned()),
            status_code: Set(Some(201)),
            response_body: Set(Some(b"text/plain\nok".to_vec())),
            created_at: Set(now),
            expires_at: Set(now + KEEP),
        });
        idempotency_record::Entity::insert_many(rows)
            .exec_without_returning(&db)
            .await?;

        assert_eq!(begin(&db, route, route, "new", "h").await?, Begin::Full);
        let other = format!("{route} auth:{}", "f".repeat(32));
        assert_eq!(
            begin(&db, route, &other, "new", "h").await?,
            Begin::Full,
            "any credential"
        );
        assert!(
            matches!(
                begin(&db, route, route, "k0", "h").await?,
                Begin::Replay { status: 201, .. }
            ),
            "a key it holds still answers"
        );
        assert!(matches!(
            begin(&db, "other.example.com", "other.example.com", "new", "h").await?,
            Begin::First(_)
        ));

        assert_eq!(purge_expired(&db).await?, 0, "nothing has expired yet");
        idempotency_record::Entity::update_many()
            .col_expr(
                idempotency_record::Column::ExpiresAt,
                sea_orm::sea_query::Expr::value(now - ChronoDuration::seconds(1)),
            )
            .filter(idempotency_record::Column::Scope.ne("other.example.com"))
            .exec(&db)
            .await?;
        assert_eq!(purge_expired(&db).await?, MAX_RECORDS_PER_ROUTE);
        assert!(matches!(
            begin(&db, route, route, "new", "h").await?,
            Begin::First(_)
        ));
        Ok(())
    }
}
