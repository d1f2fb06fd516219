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
    };
    let chain = Chain(err);
    let (route_key, epoch) = (at.route_key, at.epoch);
    let allocation = at.allocation.map(tracing::field::display);
    match status {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => {
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
            _ => RETRY_AFTER_SECS,
        };
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    }
    resp
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
struct Chain<'a>(&'a EdgeError);

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
