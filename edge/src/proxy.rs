//! The reverse proxy: one request to one allocation over a pooled HTTP/1.1 client, bodies
//! streamed both ways, hop-by-hop headers removed, forwarding headers added, and WebSocket
//! upgrades spliced into a byte pipe that lives as long as both sides keep it open.

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{
        Extensions, HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header,
        header::{CONNECTION, UPGRADE},
    },
    response::Response,
};
use hyper::upgrade::OnUpgrade;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tracing::Instrument;

use crate::{error::EdgeError, route::Target};

/// How long connecting to an allocation may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an allocation may take to send its response headers (the body may take longer).
const RESPONSE_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle pooled connection to an allocation is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// historical `Proxy-Connection`. They are never forwarded, except `Connection` and `Upgrade`
/// on a WebSocket upgrade.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    UPGRADE,
];

/// The pooled client every request to an allocation goes through.
#[derive(Clone)]
pub(crate) struct Proxy {
    client: Client<HttpConnector, Body>,
}

impl Proxy {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self { client }
    }

    /// Sends `req` to `target` and returns its response with the body still streaming. A
    /// WebSocket upgrade the allocation accepts is answered 101 here and spliced to the
    /// allocation's socket in a task of its own.
    pub(crate) async fn forward(
        &self,
        mut req: Request,
        target: &Target,
        peer: SocketAddr,
    ) -> Result<Response, EdgeError> {
        let upgrade = is_websocket_upgrade(req.headers());
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarding(&mut parts.headers, peer, host.as_ref());
        parts.uri = target
            .uri_for(&parts.uri)
            .map_err(EdgeError::BuildRequest)?;
        parts.version = Version::HTTP_11;
        // The server's extensions (connection info, matched path) are not the backend's.
        parts.extensions = Extensions::new();

        let sent = self.client.request(Request::from_parts(parts, body));
        let mut resp = tokio::time::timeout(RESPONSE_HEADERS_TIMEOUT, sent)
            .await
            .map_err(|_| EdgeError::BackendTimeout {
                allocation: target.allocation_id,
                address: target.address(),
                after: RESPONSE_HEADERS_TIMEOUT,
            })?
            .map_err(|source| EdgeError::Backend {
                allocation: target.allocation_id,
                address: target.address(),
                source,
            })?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_side) = client_side else {
                return Err(EdgeError::UnexpectedUpgrade {
                    allocation: target.allocation_id,
                });
            };
            let backend_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice(client_side, backend_side).in_current_span());
            let (mut parts, _empty) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// Copies bytes both ways between the client's and the allocation's upgraded connections
/// until either side closes. No idle timeout: a live Vango socket may be quiet for long.
async fn splice(client_side: OnUpgrade, backend_side: OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client_side, backend_side) {
        Ok(both) => both,
        Err(err) => {
            tracing::warn!(error = %err, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
        Err(err) => tracing::debug!(error = %err, "upgraded connection ended with an error"),
    }
}

/// Whether `headers` ask for a WebSocket upgrade: `Connection` names `upgrade` and
/// `Upgrade` is `websocket`. Any other upgrade is dropped with the hop-by-hop headers.
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
    connection_upgrade && websocket
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers and those `Connection` names. On an upgrade, keeps
/// `Upgrade` and leaves `Connection: upgrade` alone.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        if !(upgrade && (name == UPGRADE || name == CONNECTION)) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Adds where the request came from: the client address appended to `X-Forwarded-For` and
/// `Forwarded`, the original host in `X-Forwarded-Host`, and `X-Forwarded-Proto: http` (the
/// edge speaks plain HTTP; whatever a client claimed is replaced). `Host` is kept as the
/// client sent it, so an app checking `Origin` against `Host` sees its public name.
fn add_forwarding(headers: &mut HeaderMap, peer: SocketAddr, host: Option<&HeaderValue>) {
    let ip = peer.ip().to_canonical();
    append_list(headers, &X_FORWARDED_FOR, &ip.to_string());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    let host = host.and_then(|h| h.to_str().ok());
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let mut element = format!("for={node}");
    if let Some(h) = host.filter(|h| !h.contains(['"', '\\'])) {
        element.push_str(&format!(";host=\"{h}\""));
    }
    element.push_str(";proto=http");
    append_list(headers, &FORWARDED, &element);
}

/// Sets `name` to its current values and `item`, as one comma-separated list. Values that are
/// not visible ASCII are dropped rather than forwarded mangled.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    let mut list: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    list.push(item);
    let joined = list.join(", ");
    let value = HeaderValue::from_str(&joined)
        .or_else(|_| HeaderValue::from_str(item))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    headers.insert(name.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("accept", "text/html"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept"]);
    }

    #[test]
    fn upgrades_keep_connection_and_upgrade() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(is_websocket_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h[CONNECTION], "upgrade");
        assert!(!is_websocket_upgrade(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(!is_websocket_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarding_headers_append() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("shop.localhost:8081");
        add_forwarding(&mut h, "10.1.2.3:5555".parse().expect("addr"), Some(&host));
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.7, 10.1.2.3");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "shop.localhost:8081");
        assert_eq!(
            h[&FORWARDED],
            "for=10.1.2.3;host=\"shop.localhost:8081\";proto=http"
        );

        let mut h = HeaderMap::new();
        add_forwarding(&mut h, "[::1]:5555".parse().expect("addr"), None);
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
        assert_eq!(h[&FORWARDED], "for=\"[::1]\";proto=http");
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, "[::ffff:10.0.0.1]:1".parse().expect("addr"), None);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
    }
}
