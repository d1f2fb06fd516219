//! Why the edge could not serve a request, and the one place ([`respond`]) that turns each
//! cause into a status and a page.

use std::{error::Error as StdError, fmt, io, time::Duration};

use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};
use uuid::Uuid;

use crate::{body::Body, page::page};

/// A cause a route source may give for not answering at all (a DB error, a table that has
/// not loaded its first snapshot).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Seconds a client is told to wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "5";
/// Seconds to wait on a route key held closed by the route table: a gap closes or a reload
/// ends within about a second.
const RETRY_AFTER_HELD_SECS: &str = "1";
/// Seconds to wait on an app that is waking: most apps are ready within a few.
const RETRY_AFTER_WAKE_SECS: &str = "2";

/// Everything that stops the edge from handing a request to an allocation.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("the request has no usable Host header")]
    MissingHost,
    #[error("no route owner claims {route_key}")]
    NoRouteOwner { route_key: String },
    #[error("the route owner of {route_key} at epoch {epoch} has no ready allocation")]
    NoReadyAllocation { route_key: String, epoch: i64 },
    #[error("the route table cannot be read")]
    RouteTableUnavailable(#[source] BoxError),
    /// The change log skipped a sequence number and a change to this key came after it: the
    /// key is refused until the missing change is read or a snapshot is reloaded.
    #[error("route table gap: {route_key} changed after change {missing_seq}, which is missing")]
    RouteTableGap { route_key: String, missing_seq: i64 },
    /// The last snapshot's RouteOwner row and change log disagree about this key: it is
    /// refused until a later snapshot agrees.
    #[error(
        "{route_key} is held closed: its RouteOwner is at epoch {owner_epoch}, its latest route change at {}",
        log_epoch.map_or_else(|| "none".to_owned(), |e| format!("epoch {e}"))
    )]
    RouteUnverified {
        route_key: String,
        owner_epoch: i64,
        log_epoch: Option<i64>,
    },
    #[error("the request to allocation {allocation} at {address} failed")]
    Backend {
        allocation: uuid::Uuid,
        address: String,
        #[source]
        source: BoxError,
    },
    #[error("allocation {allocation} at {address} sent no response headers within {after:?}")]
    BackendTimeout {
        allocation: uuid::Uuid,
        address: String,
        after: Duration,
    },
    #[error("allocation {allocation} switched protocols without being asked to")]
    UnexpectedUpgrade { allocation: uuid::Uuid },
    #[error("the request for the allocation could not be built")]
    BuildRequest(#[source] hyper::http::Error),
    /// The route's policy (environment, artifact manifest, bindings) could not be read.
    #[error("the route policy cannot be read")]
    Policy(#[source] BoxError),
    /// A held request's wake did not make an allocation ready within the wake budget.
    #[error(
        "{route_key} did not wake within its {budget:?} wake budget (epoch {epoch}, operation {})",
        op(operation)
    )]
    WakeTimeout {
        route_key: String,
        epoch: i64,
        budget: Duration,
        operation: Option<Uuid>,
    },
    /// The wake of a held request failed.
    #[error("the wake of {route_key} at epoch {epoch} failed (operation {operation}): {reason}")]
    WakeFailed {
        route_key: String,
        epoch: i64,
        operation: Uuid,
        reason: String,
    },
    /// The wake could not be asked for (Temporal unreachable, or this edge has no client).
    #[error("the wake of {route_key} could not be started")]
    WakeUnavailable {
        route_key: String,
        #[source]
        source: BoxError,
    },
    /// An unsafe request to a cold app that the edge will not replay.
    #[error("{method} {path} on {route_key} was not forwarded while the app is asleep: {why}")]
    NotReplayed {
        route_key: String,
        method: String,
        path: String,
        why: String,
        operation: Option<Uuid>,
    },
    /// A webhook delivery to a cold app whose signature headers fail the route's policy.
    #[error("webhook {path} on {route_key} blocked: {problem}")]
    WebhookBlocked {
        route_key: String,
        path: String,
        problem: String,
    },
    /// A signed webhook delivery to a cold app: the app is woken, the provider retries.
    #[error(
        "webhook {path} on {route_key} deferred while the app wakes (operation {})",
        op(operation)
    )]
    WebhookDeferred {
        route_key: String,
        path: String,
        operation: Option<Uuid>,
    },
    /// A request with an `Idempotency-Key` whose first request is still in flight.
    #[error("a request with Idempotency-Key {key:?} is still in flight")]
    IdempotencyInFlight { key: String },
    /// The edge already holds as many requests for waking apps as it may.
    #[error("the edge holds {limit} requests for waking apps already")]
    TooManyHeld { limit: u64 },
    /// The route holds as many unexpired idempotency records as it may.
    #[error("this route holds the most idempotency records it may")]
    IdempotencyFull,
    /// An `Idempotency-Key` used again for a different request.
    #[error("Idempotency-Key {key:?} was first used for a different request")]
    IdempotencyMismatch { key: String },
    /// A request body beyond what the edge buffers for a request it must hold.
    #[error("the request body is larger than the {limit} bytes the edge holds for a waking app")]
    BodyTooLarge { limit: usize },
    /// The client's request body could not be read.
    #[error("the request body could not be read")]
    ClientBody(#[source] hyper::Error),
    /// An immutable asset could not be read from the artifact store: `transient` for store
    /// I/O (503), otherwise a missing or corrupt asset (502).
    #[error("an asset could not be served from the artifact store")]
    Asset {
        transient: bool,
        #[source]
        source: BoxError,
    },
    /// The idempotency store could not be read or written.
    #[error("the idempotency store failed")]
    IdempotencyStore(#[source] BoxError),
}

fn op(operation: &Option<Uuid>) -> String {
    operation.map_or_else(|| "not yet known".to_owned(), |o| o.to_string())
}

/// Where a failed request was going, for the log line (the page never says).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Failed<'a> {
    pub(crate) route_key: Option<&'a str>,
    pub(crate) epoch: Option<i64>,
    pub(crate) allocation: Option<Uuid>,
}

/// How the edge answers `err`: the one mapping from causes to statuses. A backend error is
/// classified by walking its source chain: a timeout anywhere in it (connecting or waiting)
/// is a 504, anything else (refused, reset, closed early) a 502. Logged at warn (error for a
/// 500, debug for a 400 or 404) with the route key, epoch and allocation of `at`.
pub(crate) fn respond(err: &EdgeError, at: Failed<'_>) -> Response<Body> {
    use EdgeError::*;
    let (status, title, text) = match err {
        MissingHost => (
            StatusCode::BAD_REQUEST,
            "Missing Host",
            "This request has no Host header, so no app can be chosen for it.".to_owned(),
        ),
        NoRouteOwner { route_key } => (
            StatusCode::NOT_FOUND,
            "No app here",
            format!(
                "No app is deployed at {route_key}. Check the host name, or deploy to it with `rhone deploy`."
            ),
        ),
        NoReadyAllocation { route_key, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Starting",
            format!("{route_key} has no ready instance yet. Retry in a few seconds."),
        ),
        RouteTableUnavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The route table cannot be read right now. Retry shortly.".to_owned(),
        ),
        RouteTableGap { route_key, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Route table gap",
            format!(
                "This edge missed a route change for {route_key} (route table gap) and is catching up. Retry in a second."
            ),
        ),
        RouteUnverified { route_key, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Route held closed",
            format!(
                "This edge cannot yet confirm which deployment serves {route_key}. Retry shortly."
            ),
        ),
        Backend { .. } if timed_out(err) => gateway_timeout(),
        BackendTimeout { .. } => gateway_timeout(),
        Backend { .. } | UnexpectedUpgrade { .. } => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "The app did not answer this request properly. Retry, and check the app's logs if it persists."
                .to_owned(),
        ),
        BuildRequest(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            "The edge could not handle this request.".to_owned(),
        ),
        Asset {
            transient: true, ..
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "This file cannot be read from the artifact store right now. Retry shortly.".to_owned(),
        ),
        Asset { .. } => (
            StatusCode::BAD_GATEWAY,
            "Bad gateway",
            "This file of the app's artifact is missing or does not match its digest.".to_owned(),
        ),
        Policy(_) | IdempotencyStore(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "The edge cannot read this app's routing policy right now. Retry shortly.".to_owned(),
        ),
        WakeTimeout {
            route_key,
            budget,
            operation,
            ..
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Waking up",
            format!(
                "{route_key} was asleep and is starting; it was not ready within {} ms. Retry in a few seconds.{}",
                budget.as_millis(),
                operation_line(*operation)
            ),
        ),
        WakeFailed {
            route_key,
            operation,
            ..
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Could not wake",
            format!(
                "{route_key} was asleep and failed to start.{} Retry later; the operation says why.",
                operation_line(Some(*operation))
            ),
        ),
        WakeUnavailable { route_key, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Asleep",
            format!("{route_key} is asleep and cannot be woken right now. Retry shortly."),
        ),
        NotReplayed {
            method,
            path,
            why,
            operation,
            ..
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Not forwarded",
            format!(
                "{method} {path} was not forwarded: the app is asleep and this request cannot be replayed safely ({why}). Nothing was applied. The app is waking; retry in a few seconds, with an Idempotency-Key to make the retry safe.{}",
                operation_line(*operation)
            ),
        ),
        WebhookBlocked { path, problem, .. } => (
            StatusCode::UNAUTHORIZED,
            "Webhook blocked",
            format!("The delivery to {path} was blocked and not forwarded: {problem}."),
        ),
        WebhookDeferred {
            path, operation, ..
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Webhook deferred",
            format!(
                "The app is asleep. The delivery to {path} was not forwarded or stored; the app is waking, so retry this delivery.{}",
                operation_line(*operation)
            ),
        ),
        IdempotencyInFlight { key } => (
            StatusCode::CONFLICT,
            "In flight",
            format!("A request with Idempotency-Key {key} is still being handled. Retry when it has finished."),
        ),
        TooManyHeld { limit } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            format!(
                "The app is asleep, and this edge is already holding {limit} requests for apps that are waking. Retry in a moment."
            ),
        ),
        IdempotencyFull => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many idempotent writes",
            format!(
                "The app is asleep, and the edge already keeps the answers of {} idempotent requests to it (each for a day). Retry once the app is awake, when writes go to it directly.",
                crate::idempotency::MAX_RECORDS_PER_ROUTE
            ),
        ),
        IdempotencyMismatch { key } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key reused",
            format!("Idempotency-Key {key} was already used for a different request. Use a new key for a new request."),
        ),
        BodyTooLarge { limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request too large",
            format!("The app is asleep, and the edge holds at most {limit} bytes of a request body while it wakes."),
        ),
        ClientBody(_) => (
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request body could not be read.".to_owned(),
        ),
    };
    let chain = Chain(err);
    let (route_key, epoch) = (at.route_key, at.epoch);
    let allocation = at.allocation.map(tracing::field::display);
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::NOT_FOUND
        | StatusCode::CONFLICT
        | StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::PAYLOAD_TOO_LARGE => {
            tracing::debug!(%status, route_key, epoch, allocation, error = %chain)
        }
        StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::error!(%status, route_key, epoch, allocation, error = %chain)
        }
        _ => tracing::warn!(%status, route_key, epoch, allocation, error = %chain),
    }
    let mut resp = page(status, title, &text);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let secs = match err {
            RouteTableGap { .. } | RouteUnverified { .. } => RETRY_AFTER_HELD_SECS,
            WakeTimeout { .. } | NotReplayed { .. } | WebhookDeferred { .. } => {
                RETRY_AFTER_WAKE_SECS
            }
            _ => RETRY_AFTER_SECS,
        };
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    }
    resp
}

fn operation_line(operation: Option<Uuid>) -> String {
    operation.map_or_else(String::new, |o| format!(" Operation: {o}."))
}

fn gateway_timeout() -> (StatusCode, &'static str, String) {
    (
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway timeout",
        "The app took too long to answer. Retry shortly.".to_owned(),
    )
}

/// Whether a timeout is anywhere in the source chain of `err`: the connector reports a
/// connect timeout as an `io::Error` of kind `TimedOut`, hyper its own timeouts by kind.
fn timed_out(err: &(dyn StdError + 'static)) -> bool {
    std::iter::successors(Some(err), |e| (*e).source()).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
    })
}

/// An error with its causes, `outer: inner: innermost`, for logs only.
pub(crate) struct Chain<'a>(pub(crate) &'a EdgeError);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(err: EdgeError, status: u16, retry_after: Option<&str>) {
        let resp = respond(&err, Failed::default());
        assert_eq!(resp.status().as_u16(), status, "{err}");
        assert_eq!(
            resp.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            retry_after,
            "{err}"
        );
    }

    #[test]
    fn statuses() {
        let key = || "shop.example.com".to_owned();
        check(EdgeError::MissingHost, 400, None);
        check(EdgeError::NoRouteOwner { route_key: key() }, 404, None);
        check(
            EdgeError::TooManyHeld { limit: 1000 },
            503,
            Some(RETRY_AFTER_SECS),
        );
        check(EdgeError::IdempotencyFull, 429, None);
        check(
            EdgeError::NoReadyAllocation {
                route_key: key(),
                epoch: 3,
            },
            503,
            Some("5"),
        );
        check(
            EdgeError::RouteTableUnavailable("db down".into()),
            503,
            Some("5"),
        );
        check(
            EdgeError::RouteTableGap {
                route_key: key(),
                missing_seq: 7,
            },
            503,
            Some("1"),
        );
        check(
            EdgeError::RouteUnverified {
                route_key: key(),
                owner_epoch: 5,
                log_epoch: Some(4),
            },
            503,
            Some("1"),
        );
        let allocation = uuid::Uuid::nil();
        let after = Duration::from_secs(60);
        let address = "http://127.0.0.1:1".to_owned();
        check(
            EdgeError::BackendTimeout {
                allocation,
                address,
                after,
            },
            504,
            None,
        );
        check(EdgeError::UnexpectedUpgrade { allocation }, 502, None);
    }

    #[test]
    fn a_timeout_deep_in_the_chain_is_found() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] io::Error);
        let timeout = Outer(io::Error::new(io::ErrorKind::TimedOut, "connect"));
        let refused = Outer(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(timed_out(&timeout));
        assert!(!timed_out(&refused));
    }
}
