//! Request classes of the request lifecycle traces, decided from the method, the path, the
//! headers and the route's [`RouteClasses`], with no I/O: what the edge may do with a request
//! when no allocation is ready. A crate of its own, apart from `rhone-edge`, so that it builds
//! without the edge's DB and Temporal clients: the fuzz targets (`fuzz/`) call it directly.

use http::{
    HeaderMap, Method,
    header::{CONNECTION, UPGRADE},
};
use rhone_manifest::app::{RoutePattern, SignaturePolicy, WebhookRoute};

/// The header a client names an idempotent request with.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// How far a signed webhook's timestamp may be from the edge's clock.
const WEBHOOK_TOLERANCE_SECS: i64 = 300;

/// What a request is, for the cold path.
#[derive(Debug, PartialEq, Eq)]
pub enum Class<'p> {
    /// GET, HEAD or OPTIONS: safe to hold while the app wakes.
    Read,
    /// A WebSocket upgrade (Vango's live transport): held like a read, then pinned.
    Live,
    /// A provider webhook declared in `rhone.toml`.
    Webhook(&'p WebhookRoute),
    /// An unsafe request on a route declared idempotent, with an `Idempotency-Key`, and an
    /// idempotency store bound: it may be forwarded once.
    IdempotentWrite { key: String },
    /// Any other unsafe request: never replayed; `why` says what is missing.
    UnsafeWrite { why: &'static str },
}

impl Class<'_> {
    /// The class's name in wake evidence.
    pub fn name(&self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Live => "websocket",
            Class::Webhook(_) => "webhook",
            Class::IdempotentWrite { .. } => "idempotent_write",
            Class::UnsafeWrite { .. } => "unsafe_write",
        }
    }
}

/// Whether `method` is safe to hold and to send again.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The request classes a route's owner artifact declares in `rhone.toml` (`[routes]`), and
/// whether an idempotency store is bound to its environment: the part of the edge's route
/// policy that [`classify`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteClasses {
    pub webhooks: Vec<WebhookRoute>,
    pub idempotent: Vec<RoutePattern>,
    /// An `idempotency` runtime service is bound and ready: the edge may record idempotent
    /// writes and forward one to a waking app.
    pub idempotency_bound: bool,
}

impl RouteClasses {
    /// The webhook route declared for `path`, if any.
    pub fn webhook(&self, path: &str) -> Option<&WebhookRoute> {
        self.webhooks.iter().find(|w| w.path.matches(path))
    }

    /// Whether `path` is declared to honour `Idempotency-Key`.
    pub fn is_idempotent(&self, path: &str) -> bool {
        self.idempotent.iter().any(|p| p.matches(path))
    }
}

/// The class of a request to a route with `policy`.
pub fn classify<'p>(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    policy: &'p RouteClasses,
) -> Class<'p> {
    if let Some(hook) = policy.webhook(path) {
        return Class::Webhook(hook);
    }
    // A WebSocket opens with a GET; an upgrade on another method is an unsafe request.
    if *method == Method::GET && is_websocket_upgrade(headers) {
        return Class::Live;
    }
    if is_safe(method) {
        return Class::Read;
    }
    if !policy.is_idempotent(path) {
        return Class::UnsafeWrite {
            why: "this route is not declared idempotent in rhone.toml ([routes] idempotent)",
        };
    }
    let Some(key) = idempotency_key(headers) else {
        return Class::UnsafeWrite {
            why: "the request has no usable Idempotency-Key header",
        };
    };
    if !policy.idempotency_bound {
        return Class::UnsafeWrite {
            why: "no idempotency store is bound to this environment",
        };
    }
    Class::IdempotentWrite { key }
}

/// Whether a request must take the cold path even though its route is ready: an unsafe
/// request carrying an `Idempotency-Key` (it may need the idempotency store), or a protocol
/// upgrade (a live session's socket).
pub fn needs_policy(method: &Method, headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) || (!is_safe(method) && headers.contains_key(IDEMPOTENCY_KEY))
}

/// The request's `Idempotency-Key`: visible ASCII, 1 to 255 characters.
pub fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(IDEMPOTENCY_KEY)?.to_str().ok()?.trim();
    let ok = !v.is_empty()
        && v.len() <= MAX_IDEMPOTENCY_KEY
        && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    ok.then(|| v.to_owned())
}

/// A webhook delivery whose signature headers are present, well formed and fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub provider: &'static str,
    /// The provider's delivery or event id, where a header carries one.
    pub id: Option<String>,
}

/// Why a webhook delivery is blocked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("the {provider} signature header {header} is missing")]
    Missing {
        provider: &'static str,
        header: &'static str,
    },
    #[error("the {provider} signature header {header} is malformed: {why}")]
    Malformed {
        provider: &'static str,
        header: &'static str,
        why: &'static str,
    },
    #[error(
        "the {provider} delivery timestamp is {skew_secs} s away from now, more than the {WEBHOOK_TOLERANCE_SECS} s allowed"
    )]
    Stale {
        provider: &'static str,
        skew_secs: i64,
    },
}

/// Checks the signature headers `policy` requires: present, well formed, and a timestamp
/// within five minutes of `now` (unix seconds) where the scheme signs one. The HMAC itself is
/// the app's to verify with its signing secret; a delivery failing this check never wakes it.
pub fn check_signature(
    policy: SignaturePolicy,
    headers: &HeaderMap,
    now: i64,
) -> Result<Delivery, SignatureProblem> {
    let provider = policy.as_str();
    let get = |header: &'static str| {
        headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(SignatureProblem::Missing { provider, header })
    };
    let malformed = |header, why| SignatureProblem::Malformed {
        provider,
        header,
        why,
    };
    // Any i64 the sender writes: `now - t` would overflow (a panic in a debug build; in a
    // release build a skew of -2^63, which passed as fresh).
    let fresh = |t: i64| {
        let skew = now.abs_diff(t);
        if skew > WEBHOOK_TOLERANCE_SECS.unsigned_abs() {
            Err(SignatureProblem::Stale {
                provider,
                skew_secs: i64::try_from(skew).unwrap_or(i64::MAX),
            })
        } else {
            Ok(())
        }
    };
    match policy {
        SignaturePolicy::None => Ok(Delivery { provider, id: None }),
        SignaturePolicy::Stripe => {
            const H: &str = "stripe-signature";
            let v = get(H)?;
            let mut t = None;
            let mut v1 = false;
            for part in v.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", n)) => t = n.parse::<i64>().ok(),
                    Some(("v1", sig)) => v1 |= is_hex(sig, 64),
                    _ => {}
                }
            }
            let t = t.ok_or_else(|| malformed(H, "no t=<unix seconds>"))?;
            if !v1 {
                return Err(malformed(H, "no v1=<64 hex digits>"));
            }
            fresh(t)?;
            Ok(Delivery { provider, id: None })
        }
        SignaturePolicy::Github => {
            const H: &str = "x-hub-signature-256";
            let v = get(H)?;
            let sig = v
                .strip_prefix("sha256=")
                .ok_or_else(|| malformed(H, "expected sha256=<64 hex digits>"))?;
            if !is_hex(sig, 64) {
                return Err(malformed(H, "expected sha256=<64 hex digits>"));
            }
            let id = get("x-github-delivery").ok().map(str::to_owned);
            Ok(Delivery { provider, id })
        }
        SignaturePolicy::Slack => {
            const H: &str = "x-slack-signature";
            const T: &str = "x-slack-request-timestamp";
            let v = get(H)?;
            let sig = v
                .strip_prefix("v0=")
                .ok_or_else(|| malformed(H, "expected v0=<64 hex digits>"))?;
            if !is_hex(sig, 64) {
                return Err(malformed(H, "expected v0=<64 hex digits>"));
            }
            let t = get(T)?
                .parse::<i64>()
                .map_err(|_| malformed(T, "expected unix seconds"))?;
            fresh(t)?;
            Ok(Delivery { provider, id: None })
        }
        SignaturePolicy::StandardWebhooks => {
            const H: &str = "webhook-signature";
            const T: &str = "webhook-timestamp";
            let id = get("webhook-id")?.to_owned();
            let sigs = get(H)?;
            let any = sigs.split(' ').any(|s| {
                s.split_once(',')
                    .is_some_and(|(version, sig)| version == "v1" && !sig.is_empty())
            });
            if !any {
                return Err(malformed(H, "expected v1,<base64 signature>"));
            }
            let t = get(T)?
                .parse::<i64>()
                .map_err(|_| malformed(T, "expected unix seconds"))?;
            fresh(t)?;
            Ok(Delivery {
                provider,
                id: Some(id),
            })
        }
    }
}

/// Whether `headers` ask for a WebSocket upgrade: `Connection` names `upgrade` and
/// `Upgrade` is `websocket`. Any other upgrade is dropped with the hop-by-hop headers.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
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

/// The tokens of every `Connection` header, trimmed, empty ones left out.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn policy(bound: bool) -> RouteClasses {
        RouteClasses {
            webhooks: vec![WebhookRoute {
                path: RoutePattern::parse("/webhooks/stripe").expect("pattern"),
                signature: SignaturePolicy::Stripe,
            }],
            idempotent: vec![RoutePattern::parse("/actions/*").expect("pattern")],
            idempotency_bound: bound,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn classes_follow_the_traces() {
        let p = policy(true);
        let none = HeaderMap::new();
        let keyed = headers(&[("idempotency-key", "k-1")]);
        assert_eq!(classify(&Method::GET, "/dashboard", &none, &p), Class::Read);
        assert_eq!(classify(&Method::HEAD, "/", &none, &p), Class::Read);
        let ws = headers(&[("upgrade", "websocket"), ("connection", "Upgrade")]);
        assert_eq!(classify(&Method::GET, "/_vango/live", &ws, &p), Class::Live);
        assert!(matches!(
            classify(&Method::POST, "/_vango/live", &ws, &p),
            Class::UnsafeWrite { .. }
        ));
        assert!(matches!(
            classify(&Method::POST, "/webhooks/stripe", &keyed, &p),
            Class::Webhook(w) if w.signature == SignaturePolicy::Stripe
        ));
        assert_eq!(
            classify(&Method::POST, "/actions/increment", &keyed, &p),
            Class::IdempotentWrite { key: "k-1".into() }
        );
        let why = |c| match c {
            Class::UnsafeWrite { why } => why,
            other => panic!("expected an unsafe write, got {other:?}"),
        };
        assert!(
            why(classify(&Method::POST, "/actions/increment", &none, &p))
                .contains("Idempotency-Key")
        );
        assert!(
            why(classify(&Method::POST, "/save", &keyed, &p)).contains("not declared idempotent")
        );
        let unbound = policy(false);
        assert!(
            why(classify(&Method::DELETE, "/actions/x", &keyed, &unbound))
                .contains("idempotency store")
        );
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert_eq!(
            idempotency_key(&headers(&[("idempotency-key", " a b ")])).as_deref(),
            Some("a b")
        );
        assert_eq!(idempotency_key(&headers(&[("idempotency-key", "")])), None);
        let long = "x".repeat(256);
        assert_eq!(
            idempotency_key(&headers(&[("idempotency-key", &long)])),
            None
        );
    }

    /// Found by the `classify` fuzz target (`fuzz/corpus/classify/crash-timestamp-*`).
    #[test]
    fn timestamps_at_the_ends_of_i64_are_stale_not_a_panic_or_fresh() {
        let hex = "a".repeat(64);
        let slack = format!("v0={hex}");
        // `NOW - t` is 2^63: it wrapped to -2^63, whose absolute value is itself.
        for t in [i64::MIN, i64::MIN + 1, NOW + i64::MIN, -i64::MAX, i64::MAX] {
            let stripe = format!("t={t},v1={hex}");
            let checked = check_signature(
                SignaturePolicy::Stripe,
                &headers(&[("stripe-signature", &stripe)]),
                NOW,
            );
            assert!(
                matches!(checked, Err(SignatureProblem::Stale { skew_secs, .. }) if skew_secs > 300),
                "t={t}: {checked:?}"
            );
            let t = t.to_string();
            let checked = check_signature(
                SignaturePolicy::Slack,
                &headers(&[
                    ("x-slack-signature", &slack),
                    ("x-slack-request-timestamp", &t),
                ]),
                NOW,
            );
            assert!(
                matches!(checked, Err(SignatureProblem::Stale { .. })),
                "t={t}: {checked:?}"
            );
        }
        assert!(
            check_signature(
                SignaturePolicy::Stripe,
                &headers(&[("stripe-signature", &format!("t={},v1={hex}", NOW - 300))]),
                NOW,
            )
            .is_ok()
        );
    }

    #[test]
    fn webhook_signatures_are_checked_per_provider() {
        let hex = "a".repeat(64);
        let stripe = format!("t={NOW},v1={hex}");
        assert_eq!(
            check_signature(
                SignaturePolicy::Stripe,
                &headers(&[("stripe-signature", &stripe)]),
                NOW
            ),
            Ok(Delivery {
                provider: "stripe",
                id: None
            })
        );
        assert_eq!(
            check_signature(SignaturePolicy::Stripe, &HeaderMap::new(), NOW),
            Err(SignatureProblem::Missing {
                provider: "stripe",
                header: "stripe-signature"
            })
        );
        let old = format!("t={},v1={hex}", NOW - 301);
        assert!(matches!(
            check_signature(
                SignaturePolicy::Stripe,
                &headers(&[("stripe-signature", &old)]),
                NOW
            ),
            Err(SignatureProblem::Stale { skew_secs: 301, .. })
        ));
        let short = format!("t={NOW},v1=abc");
        assert!(
            check_signature(
                SignaturePolicy::Stripe,
                &headers(&[("stripe-signature", &short)]),
                NOW
            )
            .unwrap_err()
            .to_string()
            .contains("v1=<64 hex digits>")
        );
        let gh = format!("sha256={hex}");
        assert_eq!(
            check_signature(
                SignaturePolicy::Github,
                &headers(&[("x-hub-signature-256", &gh), ("x-github-delivery", "d-1")]),
                NOW
            ),
            Ok(Delivery {
                provider: "github",
                id: Some("d-1".into())
            })
        );
        let slack = format!("v0={hex}");
        let t = NOW.to_string();
        assert!(
            check_signature(
                SignaturePolicy::Slack,
                &headers(&[
                    ("x-slack-signature", &slack),
                    ("x-slack-request-timestamp", &t)
                ]),
                NOW
            )
            .is_ok()
        );
        assert_eq!(
            check_signature(
                SignaturePolicy::StandardWebhooks,
                &headers(&[
                    ("webhook-id", "msg_1"),
                    ("webhook-signature", "v1,c2ln"),
                    ("webhook-timestamp", &t)
                ]),
                NOW
            ),
            Ok(Delivery {
                provider: "standard_webhooks",
                id: Some("msg_1".into())
            })
        );
        assert_eq!(
            check_signature(SignaturePolicy::None, &HeaderMap::new(), NOW),
            Ok(Delivery {
                provider: "none",
                id: None
            })
        );
    }
}
