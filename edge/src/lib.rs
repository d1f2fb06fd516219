//! The HTTP front door. Requests are routed by their `Host` to the route key's RouteOwner.
//! This first version answers what it can decide without allocations: a clear 404 page for a
//! host that no RouteOwner claims, and 503 with `Retry-After` for a claimed host while the
//! proxying to allocations is not there yet.

use std::future::Future;

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use rhone_schema::entity::route_owner;
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("edge server failed: {0}")]
    Serve(#[source] std::io::Error),
}

#[derive(Clone)]
pub struct EdgeState {
    pub db: DatabaseConnection,
}

/// Serves the edge on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: EdgeState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    let app = Router::new()
        .route("/_rhone/healthz", get(|| async { "ok" }))
        .fallback(route)
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(EdgeError::Serve)
}

/// The route key of a request: its host, lowercased, without port.
pub fn route_key(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

async fn route(State(state): State<EdgeState>, req: Request) -> Response {
    let Some(key) = route_key(req.headers()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Missing Host",
            "This request has no Host header, so no app can be chosen for it.",
        );
    };
    let span = tracing::info_span!("edge_request", route_key = %key);
    let _guard = span.enter();
    match route_owner::Entity::find_by_id(key.clone())
        .one(&state.db)
        .await
    {
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            "No app here",
            &format!(
                "No app is deployed at {key}. Check the host name, or deploy to it with `rhone deploy`."
            ),
        ),
        Ok(Some(owner)) => {
            tracing::info!(epoch = owner.epoch, "route owner has no ready allocation");
            let mut resp = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Starting",
                &format!("{key} has no ready instance yet. Retry in a few seconds."),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
        Err(err) => {
            tracing::error!(error = %err, "route lookup failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The route table cannot be read right now. Retry shortly.",
            )
        }
    }
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{t}</title></head>\
         <body style=\"font-family:system-ui;max-width:40rem;margin:4rem auto\">\
         <h1>{t}</h1><p>{x}</p><p><small>Rhone edge · {code}</small></p></body></html>",
        t = esc(title),
        x = esc(text),
        code = status.as_u16()
    );
    (status, Html(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: Option<&str>, expected: Option<&str>) {
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
        check(Some("Shop.Example.COM"), Some("shop.example.com"));
        check(Some("shop.localhost:8081"), Some("shop.localhost"));
        check(Some(""), None);
        check(None, None);
    }
}
