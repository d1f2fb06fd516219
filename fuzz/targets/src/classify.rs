//! The edge's request classes: [`rhone_edge_classify::classify`] and the webhook signature
//! check on any request and any route declaration.
//!
//! The input is text, so seeds read like the requests they are:
//!
//! ```text
//! POST /webhooks/stripe
//! stripe-signature: t=1800000000,v1=…
//!
//! webhook /webhooks/stripe stripe
//! idempotent /actions/*
//! bound
//! now 1800000000
//! ```
//!
//! A request line (method, path), header lines up to an empty line, then the route's
//! declarations: webhooks, idempotent patterns, whether an idempotency store is bound, and
//! the edge's clock. Lines that do not make a valid method, header or pattern are left out.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rhone_edge_classify::{
    Class, MAX_IDEMPOTENCY_KEY, RouteClasses, SignatureProblem, check_signature, idempotency_key,
    is_safe, is_websocket_upgrade, needs_policy,
};
use rhone_manifest::app::{RoutePattern, SignaturePolicy, WebhookRoute};

/// The clock of a seed that does not set one.
const NOW: i64 = 1_800_000_000;

/// Classifies the request `data` describes and checks what each class promises: a webhook is
/// the first declared route matching the path; a live socket is a GET with a WebSocket
/// upgrade; a read is a safe method; an idempotent write is an unsafe request on a declared
/// route, with a bounded visible key and a store bound, and takes the cold path even on a ready
/// route (as a live socket does); anything else unsafe is an unsafe write. A webhook's
/// signature check answers for any headers and any clock: a delivery of the route's provider,
/// or a problem (a stale one more than five minutes off).
pub fn classify(data: &[u8]) {
    let Some(input) = Input::read(data) else {
        return;
    };
    let Input {
        method,
        path,
        headers,
        routes,
        now,
    } = &input;
    let class = rhone_edge_classify::classify(method, path, headers, routes);
    let _ = class.name();
    match &class {
        Class::Webhook(hook) => {
            assert!(hook.path.matches(path));
            let first = routes.webhooks.iter().find(|w| w.path.matches(path));
            assert_eq!(first, Some(*hook), "the first declared webhook wins");
            match check_signature(hook.signature, headers, *now) {
                Ok(delivery) => assert_eq!(delivery.provider, hook.signature.as_str()),
                Err(SignatureProblem::Stale { skew_secs, .. }) => assert!(skew_secs > 300),
                Err(problem) => assert!(!problem.to_string().is_empty()),
            }
        }
        Class::Live => {
            assert_eq!(*method, Method::GET);
            assert!(is_websocket_upgrade(headers));
            assert!(
                needs_policy(method, headers),
                "a live socket takes the cold path"
            );
            assert!(routes.webhook(path).is_none());
        }
        Class::Read => {
            assert!(is_safe(method));
            assert!(routes.webhook(path).is_none());
        }
        Class::IdempotentWrite { key } => {
            assert!(!is_safe(method));
            assert!(routes.idempotency_bound && routes.is_idempotent(path));
            assert!(
                needs_policy(method, headers),
                "an idempotent write takes the cold path"
            );
            assert!(!key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY);
            assert!(key.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
            assert_eq!(key.trim(), key);
            assert_eq!(idempotency_key(headers).as_ref(), Some(key));
        }
        Class::UnsafeWrite { why } => {
            assert!(!is_safe(method));
            assert!(!why.is_empty());
            assert!(routes.webhook(path).is_none());
        }
    }
    // Every scheme's check answers for these headers, whichever route declares it.
    for policy in SignaturePolicy::ALL {
        match check_signature(*policy, headers, *now) {
            Ok(delivery) => assert_eq!(delivery.provider, policy.as_str()),
            Err(SignatureProblem::Stale { skew_secs, .. }) => assert!(skew_secs > 300),
            Err(_) => {}
        }
    }
}

/// A request and the route it goes to, read from a seed's text.
struct Input {
    method: Method,
    path: String,
    headers: HeaderMap,
    routes: RouteClasses,
    now: i64,
}

impl Input {
    fn read(data: &[u8]) -> Option<Input> {
        let mut lines = data.split(|&b| b == b'\n');
        let first = std::str::from_utf8(lines.next()?).ok()?;
        let (method, path) = first.split_once(' ')?;
        let method = Method::from_bytes(method.as_bytes()).ok()?;
        let mut headers = HeaderMap::new();
        for line in lines.by_ref() {
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        let mut routes = RouteClasses::default();
        let mut now = NOW;
        for line in lines {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["webhook", path, signature] => {
                    if let (Ok(path), Some(signature)) = (
                        RoutePattern::parse(path),
                        SignaturePolicy::from_name(signature),
                    ) {
                        routes.webhooks.push(WebhookRoute { path, signature });
                    }
                }
                ["idempotent", path] => routes.idempotent.extend(RoutePattern::parse(path)),
                ["bound"] => routes.idempotency_bound = true,
                ["now", n] => now = n.parse().unwrap_or(NOW),
                _ => {}
            }
        }
        Some(Input {
            method,
            path: path.to_owned(),
            headers,
            routes,
            now,
        })
    }
}
