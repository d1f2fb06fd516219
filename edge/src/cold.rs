//! The cold path: what the edge does with a request when the route owner has no ready
//! allocation (the app sleeps, or is waking), and with an idempotent write at any time. One
//! decision per request class of the request lifecycle traces:
//!
//! - a fingerprinted asset is served from the artifact store; the app is not woken;
//! - a read (GET, HEAD, OPTIONS) or a live socket asks for the wake of its route key and epoch
//!   and is held within the wake budget, then routed, or answered 503 with `Retry-After`;
//! - an idempotent write (declared route, `Idempotency-Key`, idempotency store bound) is
//!   claimed in the store, held like a read, forwarded once, and its answer kept for repeats;
//! - any other unsafe request is never replayed: it wakes the app and gets a 503 saying why;
//! - a webhook's signature headers are checked; a blocked delivery is recorded in the audit
//!   log, a signed one wakes the app with its evidence on the Wake operation and gets a 503,
//!   so the provider delivers it again: nothing is queued for a replay no one sees.
//!
//! Control-plane I/O (the DB, Temporal) runs on the runtime the edge was started on, never on
//! a request worker's.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{
    Request, Response, StatusCode,
    body::{Body as _, Bytes, Incoming},
    header::{self, HeaderValue},
};
use rhone_edge_classify::{self as classify, Class};
use rhone_schema::entity::audit_log;
use rhone_workflows::wake::{WakeRequest, WakeStatus};
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde::Serialize;
use serde_json::json;
use tokio::{runtime::Handle, sync::watch};
use uuid::Uuid;

use crate::{
    activity::now_ms,
    assets::Assets,
    body::Body,
    error::{Chain, EdgeError},
    idempotency::{self, Begin},
    policy::{Policies, Policy},
    proxy::{self, Client, NotAnswered},
    route::{Owner, Route, RouteSource, affinity_key},
    session::{self, Resume, Sessions},
    wake::{Outcome, WakeClient, Waker},
};

/// The most of a request body the edge holds while an app wakes (idempotent writes only).
pub(crate) const MAX_HELD_BODY: usize = 1024 * 1024;
/// The most of a response kept in the idempotency store.
const MAX_STORED_RESPONSE: usize = 1024 * 1024;
/// How often a held request looks at a route source that cannot tell it of changes.
const HOLD_POLL: Duration = Duration::from_millis(25);
/// How long a webhook or refused write waits for its evidence to be recorded before the
/// answer goes out without the operation id.
const EVIDENCE_WAIT: Duration = Duration::from_secs(2);
/// How long after an answer a held request that still sees no allocation asks again.
const ASK_AGAIN_STILL_COLD: Duration = Duration::from_secs(1);
/// The error prefix of a wake that ended because the route moved on: the held request
/// follows the route rather than failing.
const SUPERSEDED: &str = "route epoch superseded";

/// What the server does next with a request the cold path looked at.
pub(crate) enum Decision {
    /// Forward it as usual, to this route (now ready).
    Forward(Request<Incoming>, Arc<Route>),
    /// Forward it to this allocation of the route (a live session's).
    ForwardTo(Request<Incoming>, Arc<Route>, Uuid),
    /// Send this answer.
    Answer(Response<Body>),
}

/// What the cold path did since the edge started, for `GET /_rhone/status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ColdStatus {
    /// Requests held for a wake right now.
    pub held_now: u64,
    /// Requests answered 503 because the edge already held [`MAX_HELD`].
    pub held_refused: u64,
    /// Held requests routed once an allocation was ready.
    pub held_routed: u64,
    /// Held requests answered 503 at the end of their wake budget.
    pub held_timed_out: u64,
    /// Held requests answered 503 because their wake failed or could not be asked for.
    pub held_wake_failed: u64,
    /// Calls to Temporal asking for a wake (shared by the reads of one key and epoch).
    pub wake_calls: u64,
    /// Immutable assets answered from the artifact store (200 or 304).
    pub assets_served: u64,
    /// Idempotent writes forwarded once, and repeats answered from their record.
    pub writes_forwarded: u64,
    pub writes_replayed: u64,
    /// Unsafe writes to a sleeping app answered 503 and not forwarded.
    pub writes_refused: u64,
    /// Webhook deliveries deferred (503, evidence on the wake) and blocked (401).
    pub webhooks_deferred: u64,
    pub webhooks_blocked: u64,
}

#[derive(Default)]
struct Counters {
    held_now: AtomicU64,
    held_refused: AtomicU64,
    held_routed: AtomicU64,
    held_timed_out: AtomicU64,
    held_wake_failed: AtomicU64,
    assets_served: AtomicU64,
    writes_forwarded: AtomicU64,
    writes_replayed: AtomicU64,
    writes_refused: AtomicU64,
    webhooks_deferred: AtomicU64,
    webhooks_blocked: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The most requests one edge holds at once for waking apps (each may carry a body of up
/// to [`MAX_HELD_BODY`]); the next is answered 503 at once.
pub(crate) const MAX_HELD: u64 = 1000;

/// Counts a held request while it is held.
struct Holding<'a>(&'a AtomicU64);

impl<'a> Holding<'a> {
    /// A place among at most `max` held requests, if one is free.
    fn within(c: &'a AtomicU64, max: u64) -> Option<Self> {
        let mut now = c.load(Ordering::Relaxed);
        loop {
            if now >= max {
                return None;
            }
            match c.compare_exchange_weak(now, now + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(Self(c)),
                Err(seen) => now = seen,
            }
        }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cold path's state, shared by every worker thread.
pub(crate) struct Cold {
    counters: Counters,
    /// How many blocked-webhook audit rows each route may still write this minute.
    audit_budget: std::sync::Mutex<AuditBudget>,
    policies: Policies,
    assets: Option<Assets>,
    sessions: Sessions,
    waker: Option<Waker>,
    edge_id: String,
    io: Handle,
}

impl Cold {
    /// The cold path of an edge named `edge_id`; control-plane calls run on `io`.
    pub(crate) fn new(
        db: sea_orm::DatabaseConnection,
        wake: Option<WakeClient>,
        assets: Option<Assets>,
        edge_id: String,
        io: Handle,
    ) -> Self {
        Self {
            counters: Counters::default(),
            audit_budget: std::sync::Mutex::new(AuditBudget::default()),
            policies: Policies::new(db),
            assets,
            sessions: Sessions::default(),
            waker: wake.map(|w| Waker::new(w, io.clone())),
            edge_id,
            io,
        }
    }

    pub(crate) fn status(&self) -> ColdStatus {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ColdStatus {
            held_now: get(&c.held_now),
            held_refused: get(&c.held_refused),
            held_routed: get(&c.held_routed),
            held_timed_out: get(&c.held_timed_out),
            held_wake_failed: get(&c.held_wake_failed),
            wake_calls: self.waker.as_ref().map_or(0, Waker::calls),
            assets_served: get(&c.assets_served),
            writes_forwarded: get(&c.writes_forwarded),
            writes_replayed: get(&c.writes_replayed),
            writes_refused: get(&c.writes_refused),
            webhooks_deferred: get(&c.webhooks_deferred),
            webhooks_blocked: get(&c.webhooks_blocked),
        }
    }

    /// Runs `f` on the control-plane runtime.
    async fn on_io<T, F>(self: &Arc<Self>, f: impl FnOnce(Arc<Self>) -> F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        match self.io.spawn(f(self.clone())).await {
            Ok(v) => v,
            // A panic there is this request's; a cancellation means the edge is stopping.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => panic!("the edge's control-plane runtime stopped"),
        }
    }

    async fn policy(self: &Arc<Self>, owner: &Owner) -> Result<Arc<Policy>, EdgeError> {
        let owner = owner.clone();
        self.on_io(|c| async move { c.policies.get(&owner).await })
            .await
    }

    /// Decides what to do with `req` for `route`, which has no ready allocation, or which is
    /// ready and `req` is an unsafe request with an `Idempotency-Key`.
    pub(crate) async fn decide<R: RouteSource>(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: Arc<Route>,
        routes: &R,
        client: &Client,
    ) -> Decision {
        let owner = &route.owner;
        let hot = !route.targets.is_empty();
        let policy = match self.policy(owner).await {
            Ok(p) => p,
            Err(e) => {
                // Without its policy a route still serves what it can: a ready allocation
                // gets the request as it is, a cold route answers as one that cannot wake.
                tracing::warn!(route_key = %owner.route_key, epoch = owner.epoch, error = %Chain(&e), "the route policy cannot be read");
                if hot {
                    return Decision::Forward(req, route);
                }
                let e = EdgeError::NoReadyAllocation {
                    route_key: owner.route_key.clone(),
                    epoch: owner.epoch,
                };
                return Decision::Answer(fail(&e, owner));
            }
        };
        let class = classify::classify(
            req.method(),
            req.uri().path(),
            req.headers(),
            &policy.classes,
        );
        if hot {
            return match class {
                Class::IdempotentWrite { key } => Decision::Answer(
                    self.idempotent(req, key, route.clone(), &policy, routes, client)
                        .await,
                ),
                Class::Live => self.live(req, route, &policy),
                _ => Decision::Forward(req, route),
            };
        }
        // An immutable asset of the owner's artifact comes from the artifact store while no
        // allocation is ready: the app is never woken for one. (An awake app serves the same
        // bytes with the same headers, by Vango's contract.)
        if let Some(assets) = &self.assets
            && policy.assets.contains(req.uri().path())
        {
            let (assets, digest, index) = (
                assets.clone(),
                owner.artifact_digest.clone(),
                policy.clone(),
            );
            let (method, path, headers) = (
                req.method().clone(),
                req.uri().path().to_owned(),
                req.headers().clone(),
            );
            let served = self
                .on_io(|_| async move {
                    assets
                        .serve(&digest, &index.assets, &method, &path, &headers)
                        .await
                })
                .await;
            match served {
                Ok(Some(resp)) => {
                    bump(&self.counters.assets_served);
                    return Decision::Answer(resp);
                }
                Ok(None) => {}
                Err(e) => {
                    let transient = e.is_transient();
                    let e = EdgeError::Asset {
                        transient,
                        source: Box::new(e),
                    };
                    return Decision::Answer(fail(&e, owner));
                }
            }
        }
        if !policy.scale_to_zero {
            let e = EdgeError::NoReadyAllocation {
                route_key: owner.route_key.clone(),
                epoch: owner.epoch,
            };
            return Decision::Answer(fail(&e, owner));
        }
        let Some(waker) = &self.waker else {
            let e = EdgeError::WakeUnavailable {
                route_key: owner.route_key.clone(),
                source: "this edge runs without a Temporal client, so it cannot wake apps".into(),
            };
            return Decision::Answer(fail(&e, owner));
        };
        let request = |class: &Class, decision: String, detail: serde_json::Value| WakeRequest {
            class: class.name().to_owned(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            edge_id: self.edge_id.clone(),
            decision,
            detail,
        };
        match class {
            Class::Read | Class::Live => {
                let wake = request(
                    &class,
                    format!("held up to {} ms for the wake", policy.budget.as_millis()),
                    json!({}),
                );
                let deadline = Instant::now() + policy.budget;
                let live = class == Class::Live;
                match self
                    .hold(routes, waker, owner.clone(), wake, deadline, policy.budget)
                    .await
                {
                    Ok(ready) if live => self.live(req, ready, &policy),
                    Ok(ready) => Decision::Forward(req, ready),
                    Err(e) => Decision::Answer(fail(&e, owner)),
                }
            }
            Class::IdempotentWrite { key } => Decision::Answer(
                self.idempotent(req, key, route.clone(), &policy, routes, client)
                    .await,
            ),
            Class::UnsafeWrite { why } => {
                let wake = request(
                    &class,
                    format!("answered 503 with Retry-After, not forwarded: {why}"),
                    json!({}),
                );
                bump(&self.counters.writes_refused);
                let operation = operation_of(waker.wake(owner, wake, false)).await;
                let e = EdgeError::NotReplayed {
                    route_key: owner.route_key.clone(),
                    method: req.method().to_string(),
                    path: req.uri().path().to_owned(),
                    why: why.to_owned(),
                    operation,
                };
                Decision::Answer(fail(&e, owner))
            }
            Class::Webhook(hook) => {
                let path = req.uri().path().to_owned();
                match classify::check_signature(hook.signature, req.headers(), now_ms() / 1000) {
                    Err(problem) => {
                        bump(&self.counters.webhooks_blocked);
                        self.record_blocked(&policy, owner, &path, &problem.to_string())
                            .await;
                        let e = EdgeError::WebhookBlocked {
                            route_key: owner.route_key.clone(),
                            path,
                            problem: problem.to_string(),
                        };
                        Decision::Answer(fail(&e, owner))
                    }
                    Ok(delivery) => {
                        let wake = request(
                            &class,
                            "answered 503 with Retry-After; the delivery was neither forwarded nor stored, the provider's retry delivers it".to_owned(),
                            json!({ "provider": delivery.provider, "delivery": delivery.id }),
                        );
                        bump(&self.counters.webhooks_deferred);
                        let operation = operation_of(waker.wake(owner, wake, false)).await;
                        let e = EdgeError::WebhookDeferred {
                            route_key: owner.route_key.clone(),
                            path,
                            operation,
                        };
                        Decision::Answer(fail(&e, owner))
                    }
                }
            }
        }
    }

    /// A live socket: back to its session's allocation while it runs, else moved as the
    /// session store binding allows (see `session.rs`), and the session pinned to where it
    /// goes. A socket with no session id is forwarded as any request.
    fn live(&self, mut req: Request<Incoming>, route: Arc<Route>, policy: &Policy) -> Decision {
        session::strip(req.headers_mut());
        let Some(session) = affinity_key(req.headers(), req.uri()) else {
            return Decision::Forward(req, route);
        };
        // Records are per route key: the same session id on another app is another session.
        let record = format!("{} {session}", route.owner.route_key);
        let resume = session::resume(
            self.sessions.get(&record),
            &route,
            policy.session_store_bound,
        );
        let target = match resume {
            Resume::Pinned(id) => Some(id),
            // Where the session's pages go (rendezvous on the session id).
            _ => route.pick(Some(&session)).map(|t| t.allocation_id),
        };
        let Some(target) = target else {
            return Decision::Forward(req, route);
        };
        let headers = req.headers_mut();
        headers.insert(
            session::RESUME_HEADER,
            HeaderValue::from_static(resume.header()),
        );
        if let Some(from) = resume.from()
            && let Ok(v) = HeaderValue::from_str(&from.to_string())
        {
            headers.insert(session::FROM_HEADER, v);
        }
        self.sessions.pin(&record, target);
        Decision::ForwardTo(req, route, target)
    }

    /// Holds until `owner`'s route key has a ready allocation, following the route to a new
    /// epoch (and asking for that epoch's wake) if it moves, until `deadline`.
    async fn hold<R: RouteSource>(
        &self,
        routes: &R,
        waker: &Waker,
        owner: Owner,
        request: WakeRequest,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Arc<Route>, EdgeError> {
        let Some(_held) = Holding::within(&self.counters.held_now, MAX_HELD) else {
            bump(&self.counters.held_refused);
            return Err(EdgeError::TooManyHeld { limit: MAX_HELD });
        };
        let held = self
            .hold_inner(routes, waker, owner, request, deadline, budget)
            .await;
        let c = &self.counters;
        bump(match &held {
            Ok(_) => &c.held_routed,
            Err(EdgeError::WakeTimeout { .. }) => &c.held_timed_out,
            Err(_) => &c.held_wake_failed,
        });
        held
    }

    async fn hold_inner<R: RouteSource>(
        &self,
        routes: &R,
        waker: &Waker,
        mut owner: Owner,
        request: WakeRequest,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Arc<Route>, EdgeError> {
        let mut outcome = waker.wake(&owner, request.clone(), true);
        let mut asked = Instant::now();
        let mut changes = routes.subscribe();
        loop {
            match routes.route(&owner.route_key).await? {
                None => {
                    return Err(EdgeError::NoRouteOwner {
                        route_key: owner.route_key,
                    });
                }
                Some(r) if !r.targets.is_empty() => return Ok(r),
                Some(r) if r.owner.epoch != owner.epoch => {
                    tracing::info!(
                        route_key = %owner.route_key,
                        from = owner.epoch,
                        to = r.owner.epoch,
                        "the route moved while a request was held; waking the new owner"
                    );
                    owner = r.owner.clone();
                    outcome = waker.wake(&owner, request.clone(), true);
                    continue;
                }
                Some(_) => {}
            }
            let current = outcome.borrow().clone();
            // Answered (or its call ended without an answer), yet still no allocation here.
            let ended = current.is_some() || outcome.has_changed().is_err();
            if ended && asked.elapsed() >= ASK_AGAIN_STILL_COLD {
                // Answered, yet still no allocation here: the run may have answered just
                // before it put the route to sleep. Asking again attaches to it if it still
                // wakes the route, or starts the next run.
                outcome = waker.wake(&owner, request.clone(), true);
                asked = Instant::now();
                continue;
            }
            match current {
                Some(Err(e)) => {
                    return Err(EdgeError::WakeUnavailable {
                        route_key: owner.route_key,
                        source: e.into(),
                    });
                }
                Some(Ok(WakeStatus {
                    operation_id,
                    stage,
                    error,
                })) if stage == "failed"
                    && !error.as_deref().unwrap_or("").starts_with(SUPERSEDED) =>
                {
                    return Err(EdgeError::WakeFailed {
                        route_key: owner.route_key,
                        epoch: owner.epoch,
                        operation: operation_id,
                        reason: error.unwrap_or_else(|| "no reason recorded".to_owned()),
                    });
                }
                _ => {}
            }
            let operation = current.and_then(|o| o.ok()).map(|s| s.operation_id);
            let answered = outcome.has_changed().is_err();
            let ask_again = (asked + ASK_AGAIN_STILL_COLD).min(deadline);
            tokio::select! {
                () = changed(&mut changes) => {}
                r = outcome.changed(), if !answered => { let _ = r; }
                () = tokio::time::sleep_until(ask_again.into()), if answered => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Err(EdgeError::WakeTimeout {
                        route_key: owner.route_key,
                        epoch: owner.epoch,
                        budget,
                        operation,
                    });
                }
            }
        }
    }

    /// An idempotent write: claimed in the store, forwarded once (after a wake if the app is
    /// cold), its answer kept; a repeat is answered from the store.
    #[allow(clippy::too_many_arguments)]
    async fn idempotent<R: RouteSource>(
        self: &Arc<Self>,
        req: Request<Incoming>,
        key: String,
        route: Arc<Route>,
        policy: &Policy,
        routes: &R,
        client: &Client,
    ) -> Response<Body> {
        let owner = route.owner.clone();
        let (parts, body) = req.into_parts();
        let bytes = match read_bounded(
            body,
            parts.headers.get(header::CONTENT_LENGTH),
            MAX_HELD_BODY,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => return fail(&e, &owner),
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let hash = idempotency::request_hash(parts.method.as_str(), &path_and_query, &bytes);
        let scope = idempotency::scope(&owner.route_key, parts.headers.get(header::AUTHORIZATION));
        let claimed = {
            let (route_key, scope, key, hash) = (
                owner.route_key.clone(),
                scope.clone(),
                key.clone(),
                hash.clone(),
            );
            self.on_io(|c| async move {
                idempotency::begin(c.policies.db(), &route_key, &scope, &key, &hash).await
            })
            .await
        };
        let id = match claimed {
            Ok(Begin::First(id)) => id,
            Ok(Begin::Replay {
                status,
                content_type,
                body,
            }) => {
                bump(&self.counters.writes_replayed);
                return replay(status, &content_type, body);
            }
            Ok(Begin::InFlight) => return fail(&EdgeError::IdempotencyInFlight { key }, &owner),
            Ok(Begin::Mismatch) => return fail(&EdgeError::IdempotencyMismatch { key }, &owner),
            Ok(Begin::Full) => return fail(&EdgeError::IdempotencyFull, &owner),
            Err(e) => return fail(&EdgeError::IdempotencyStore(Box::new(e)), &owner),
        };
        // From here the record is settled however this request ends (see `Claim`).
        let mut claim = Claim {
            cold: self.clone(),
            id,
            state: ClaimState::Unsent,
        };
        let ready = if route.targets.is_empty() {
            let held = match &self.waker {
                Some(waker) => {
                    let wake = WakeRequest {
                        class: "idempotent_write".to_owned(),
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_owned(),
                        edge_id: self.edge_id.clone(),
                        decision: format!(
                            "held up to {} ms, then forwarded once under Idempotency-Key",
                            policy.budget.as_millis()
                        ),
                        detail: json!({}),
                    };
                    let deadline = Instant::now() + policy.budget;
                    self.hold(routes, waker, owner.clone(), wake, deadline, policy.budget)
                        .await
                }
                None => Err(EdgeError::WakeUnavailable {
                    route_key: owner.route_key.clone(),
                    source: "this edge runs without a Temporal client, so it cannot wake apps"
                        .into(),
                }),
            };
            match held {
                Ok(r) => r,
                Err(e) => {
                    // Never forwarded: the key is free again for the retry.
                    claim.release().await;
                    return fail(&e, &owner);
                }
            }
        } else {
            route
        };
        let Some(target) = ready.pick(None) else {
            claim.release().await;
            let e = EdgeError::NoReadyAllocation {
                route_key: owner.route_key.clone(),
                epoch: owner.epoch,
            };
            return fail(&e, &owner);
        };
        bump(&self.counters.writes_forwarded);
        claim.state = ClaimState::Sent;
        match proxy::forward_buffered(parts, bytes, target, client, MAX_STORED_RESPONSE).await {
            Ok(answer) => {
                let content_type = answer
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                let mut resp = match answer.too_large {
                    None => {
                        claim
                            .keep(answer.status.as_u16(), &content_type, &answer.body)
                            .await;
                        Response::new(Body::full(answer.body))
                    }
                    Some(n) => {
                        // Applied, but too large to keep: the status is kept and said.
                        let text = format!(
                            "The app answered {} with {n} bytes, more than the {MAX_STORED_RESPONSE} bytes the edge keeps for a request with an Idempotency-Key; the body was not kept.\n",
                            answer.status
                        );
                        claim
                            .keep(answer.status.as_u16(), TEXT, text.as_bytes())
                            .await;
                        let mut resp = Response::new(Body::full(text));
                        resp.headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT));
                        *resp.status_mut() = answer.status;
                        return resp;
                    }
                };
                *resp.status_mut() = answer.status;
                *resp.headers_mut() = answer.headers;
                resp
            }
            Err(NotAnswered { error, sent: false }) => {
                claim.release().await;
                fail(&error, &owner)
            }
            Err(NotAnswered { error, sent: true }) => {
                // It may have been applied: a retry under the key must not apply it again.
                claim.unknown().await;
                fail(&error, &owner)
            }
        }
    }

    /// Writes a blocked webhook delivery to the audit log.
    async fn record_blocked(
        self: &Arc<Self>,
        policy: &Policy,
        owner: &Owner,
        path: &str,
        problem: &str,
    ) {
        // Unsigned deliveries cost the sender nothing: a route writes at most
        // `AUDIT_ROWS_PER_MINUTE` rows a minute, the next one saying how many it left out.
        let admitted = self
            .audit_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(&owner.route_key, Instant::now());
        let Some(left_out) = admitted else {
            return;
        };
        let row = audit_log::ActiveModel {
            id: Set(Uuid::new_v4()),
            workspace_id: Set(Some(policy.workspace_id)),
            actor: Set(format!("edge:{}", self.edge_id)),
            action: Set("webhook.blocked".to_owned()),
            target_type: Set("route".to_owned()),
            target_id: Set(owner.route_key.clone()),
            operation_id: Set(None),
            detail: Set(json!({
                "path": path,
                "epoch": owner.epoch,
                "deployment_id": owner.deployment_id,
                "problem": problem,
                "decision": "answered 401, not forwarded, no wake",
                "not_recorded_before": left_out,
            })),
            created_at: Set(chrono::Utc::now()),
        };
        let done = self
            .on_io(|c| async move { row.insert(c.policies.db()).await })
            .await;
        if let Err(e) = done {
            tracing::error!(route_key = %owner.route_key, error = %e, "recording a blocked webhook failed");
        }
    }
}

/// Blocked-webhook audit rows a route may write per minute.
const AUDIT_ROWS_PER_MINUTE: u32 = 10;
const AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// A fixed one-minute window of audit rows per route key.
#[derive(Debug, Default)]
struct AuditBudget {
    routes: HashMap<String, AuditWindow>,
}

#[derive(Debug)]
struct AuditWindow {
    started: Instant,
    written: u32,
    /// Rows left out since the last one written.
    left_out: u64,
}

impl AuditBudget {
    /// `Some(rows left out before this one)` if a row for `route_key` may be written at
    /// `now`; `None` (counted) if the route has written its rows this minute.
    fn admit(&mut self, route_key: &str, now: Instant) -> Option<u64> {
        if self.routes.len() > 10_000 {
            self.routes
                .retain(|_, w| now.duration_since(w.started) < AUDIT_WINDOW);
        }
        let window = self
            .routes
            .entry(route_key.to_owned())
            .or_insert(AuditWindow {
                started: now,
                written: 0,
                left_out: 0,
            });
        if now.duration_since(window.started) >= AUDIT_WINDOW {
            window.started = now;
            window.written = 0;
        }
        if window.written >= AUDIT_ROWS_PER_MINUTE {
            window.left_out += 1;
            return None;
        }
        window.written += 1;
        Some(std::mem::take(&mut window.left_out))
    }
}

/// Waits a little for a wake call's answer, for the operation id an answer names.
async fn operation_of(mut outcome: watch::Receiver<Outcome>) -> Option<Uuid> {
    let answered = tokio::time::timeout(EVIDENCE_WAIT, outcome.wait_for(Option::is_some)).await;
    match answered {
        Ok(Ok(o)) => o
            .as_ref()
            .and_then(|o| o.as_ref().ok())
            .map(|s| s.operation_id),
        _ => None,
    }
}

/// Resolves when the route source changes, or after a short poll if it cannot say.
async fn changed(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *changes = None;
            }
        }
        None => tokio::time::sleep(HOLD_POLL).await,
    }
}

fn fail(e: &EdgeError, owner: &Owner) -> Response<Body> {
    crate::error::respond(
        e,
        crate::error::Failed {
            route_key: Some(&owner.route_key),
            epoch: Some(owner.epoch),
            allocation: None,
        },
    )
}

fn replay(status: u16, content_type: &str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

/// Text of the edge's own answers kept in the idempotency store.
const TEXT: &str = "text/plain; charset=utf-8";
/// What a retry gets when its key's first request was sent and its answer lost.
const OUTCOME_UNKNOWN: &str = "The first request with this Idempotency-Key reached the app, but its answer was lost; whether it was applied is unknown. Check the app's state; send a new request with a new key.\n";

/// Where a claimed idempotency record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimState {
    Unsent,
    Sent,
    Settled,
}

/// A claimed idempotency record, settled however the request ends: never sent, the key is
/// freed; answered, the answer is kept; sent but unanswered (the app's answer was lost, or
/// the client went away and the request's future was dropped), an "outcome unknown" 502 is
/// kept, so a retry under the key is never applied a second time. The normal paths settle
/// it before answering; `Drop` settles what a dropped future left.
struct Claim {
    cold: Arc<Cold>,
    id: Uuid,
    state: ClaimState,
}

impl Claim {
    async fn release(&mut self) {
        self.state = ClaimState::Settled;
        let id = self.id;
        let done = self
            .cold
            .on_io(|c| async move { idempotency::abandon(c.policies.db(), id).await })
            .await;
        if let Err(e) = done {
            tracing::error!(record = %id, error = %e, "releasing an idempotency record failed; its key stays in flight until it expires");
        }
    }

    async fn keep(&mut self, status: u16, content_type: &str, body: &[u8]) {
        self.state = ClaimState::Settled;
        let (id, content_type, body) = (self.id, content_type.to_owned(), body.to_vec());
        let done = self
            .cold
            .on_io(|c| async move {
                idempotency::complete(c.policies.db(), id, status, &content_type, &body).await
            })
            .await;
        if let Err(e) = done {
            tracing::error!(record = %id, error = %e, "storing an idempotent answer failed; a repeat is refused as in flight until the record expires");
        }
    }

    async fn unknown(&mut self) {
        self.keep(502, TEXT, OUTCOME_UNKNOWN.as_bytes()).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (id, state) = (self.id, self.state);
        let db = self.cold.policies.db().clone();
        let settle = async move {
            let done = match state {
                ClaimState::Settled => return,
                ClaimState::Unsent => idempotency::abandon(&db, id).await,
                ClaimState::Sent => {
                    idempotency::complete(&db, id, 502, TEXT, OUTCOME_UNKNOWN.as_bytes()).await
                }
            };
            if let Err(e) = done {
                tracing::error!(record = %id, error = %e, "settling an abandoned idempotency record failed");
            }
        };
        if state != ClaimState::Settled {
            self.cold.io.spawn(settle);
        }
    }
}

/// Reads a request body of at most `limit` bytes; a larger one (by its `Content-Length` or
/// as it streams) is refused without reading further.
async fn read_bounded(
    mut body: Incoming,
    declared: Option<&HeaderValue>,
    limit: usize,
) -> Result<Bytes, EdgeError> {
    let declared = declared
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(EdgeError::BodyTooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(EdgeError::ClientBody)?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Err(EdgeError::BodyTooLarge { limit });
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(bytes))
}

pub(crate) use rhone_edge_classify::needs_policy;

#[cfg(test)]
mod audit_budget_tests {
    use super::*;

    #[test]
    fn a_route_writes_ten_audit_rows_a_minute_then_says_how_many_it_left_out() {
        let mut budget = AuditBudget::default();
        let t0 = Instant::now();
        for _ in 0..AUDIT_ROWS_PER_MINUTE {
            assert_eq!(budget.admit("a.example.com", t0), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(
                budget.admit("a.example.com", t0 + Duration::from_secs(30)),
                None
            );
        }
        assert_eq!(
            budget.admit("b.example.com", t0),
            Some(0),
            "another route has its own"
        );
        let later = t0 + AUDIT_WINDOW;
        assert_eq!(budget.admit("a.example.com", later), Some(25));
        assert_eq!(budget.admit("a.example.com", later), Some(0));
    }
}

#[cfg(test)]
mod holding_tests {
    use super::*;

    #[test]
    fn an_edge_holds_at_most_its_limit_and_frees_places_as_requests_leave() {
        let c = AtomicU64::new(0);
        let held: Vec<_> = (0..3).map(|_| Holding::within(&c, 3)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(Holding::within(&c, 3).is_none(), "the fourth is refused");
        assert_eq!(c.load(Ordering::Relaxed), 3);
        drop(held);
        assert_eq!(c.load(Ordering::Relaxed), 0);
        assert!(Holding::within(&c, 3).is_some());
    }
}
