//! Outbound rate limiting: calls wait their turn, within bounds, per key and per route.
//!
//! [`RateLimit`] holds each request until every quota that applies to it allows it, then
//! until a concurrency slot is free, then sends it on. Quotas are GCRA (`governor`):
//! global, per API key (keyed by a hash of the bearer token, never the token), and per
//! route class (submissions, reads). A request over quota *waits* (up to `max_wait`, with
//! at most `max_queue` requests waiting at once); past either bound it gets
//! `429 {"code":429,"msg":"rate limited by runway-proxy: ...","data":null}` with a
//! `Retry-After` that says when a permit will be free.
//!
//! Shared quotas (global, per class) queue their waiters in arrival order: the head of
//! the line sleeps until GCRA allows it (with governor's jitter) while the rest wait
//! behind it, so waiters don't wake in a herd. Per-key quotas are checked first, so one
//! key waiting on its own quota never holds up another key.
//!
//! Put this layer *inside* the retry layer: every attempt then takes its own permit, and
//! retries respect the limit.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use runway_proxy::limit::{QuotaSpec, RateLimitLayer};
//! use runway_proxy::retry::RetryLayer;
//!
//! let limit = RateLimitLayer::new()
//!     .global(QuotaSpec::parse("5/s").unwrap())
//!     .per_key(QuotaSpec::parse("300/min burst 10").unwrap())
//!     .max_concurrency(5)
//!     .max_wait(Duration::from_secs(30));
//! let stack = tower::ServiceBuilder::new()
//!     .layer(RetryLayer::new()) // outside: each attempt passes the limiter
//!     .layer(limit);
//! # let _ = stack;
//! ```

mod quota;

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Jitter, RateLimiter};
use http::{HeaderValue, Request, Response, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

pub use quota::{QuotaSpec, parse_optional};

use crate::body::{self, Body, BoxError};
use crate::duration;
use crate::envelope;
use crate::metrics::Metrics;
use crate::route::RouteClass;

/// Settings of the rate limiter. Every quota is optional; unset means unlimited.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LimitSettings {
    /// One quota for all requests.
    pub global: Option<QuotaSpec>,
    /// A quota for each API key (bearer token).
    pub per_key: Option<QuotaSpec>,
    /// A quota for submissions.
    pub submit: Option<QuotaSpec>,
    /// A quota for reads.
    pub read: Option<QuotaSpec>,
    /// Most requests in flight to the upstream at once.
    pub max_concurrency: Option<u32>,
    /// Most requests in flight to the upstream at once for one API key.
    pub max_concurrency_per_key: Option<u32>,
    /// Longest a request waits for its turn (default 30 s).
    pub max_wait: Duration,
    /// Most requests waiting at once (default 1024).
    pub max_queue: usize,
    /// Most API keys whose state is kept (default 10,000).
    pub max_keys: usize,
    /// A wait longer than this is logged (default 1 s).
    pub slow_wait: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            global: None,
            per_key: None,
            submit: None,
            read: None,
            max_concurrency: None,
            max_concurrency_per_key: None,
            max_wait: Duration::from_secs(30),
            max_queue: 1024,
            max_keys: 10_000,
            slow_wait: Duration::from_secs(1),
        }
    }
}

impl LimitSettings {
    /// Whether any limit is set at all (if not, the layer only passes requests through).
    pub fn is_unlimited(&self) -> bool {
        self.global.is_none()
            && self.per_key.is_none()
            && self.submit.is_none()
            && self.read.is_none()
            && self.max_concurrency.is_none()
            && self.max_concurrency_per_key.is_none()
    }
}

/// A shared quota: a GCRA limiter and the line of requests waiting for it.
#[derive(Debug)]
struct Gate {
    name: &'static str,
    spec: QuotaSpec,
    limiter: DefaultDirectRateLimiter,
    /// A one-permit fair semaphore used as a queue, not to guard data: the holder is the
    /// head of the line, sleeping until GCRA lets it through.
    line: Arc<Semaphore>,
    in_line: AtomicUsize,
}

impl Gate {
    fn new(name: &'static str, spec: QuotaSpec) -> Self {
        Gate {
            name,
            spec,
            limiter: RateLimiter::direct(spec.quota()),
            line: Arc::new(Semaphore::new(1)),
            in_line: AtomicUsize::new(0),
        }
    }
}

/// The per-key quota: a keyed GCRA limiter whose map is pruned and capped.
#[derive(Debug)]
struct KeyedGate {
    spec: QuotaSpec,
    limiter: DefaultKeyedRateLimiter<u64>,
    max_keys: usize,
    /// Milliseconds since `epoch` of the last pruning.
    last_prune_ms: AtomicU64,
    epoch: Instant,
}

/// How often the keyed state is pruned even when it is below its cap.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

impl KeyedGate {
    /// Drop the state of keys that are back to a full burst (indistinguishable from a new
    /// key), on a schedule or when the map reaches its cap. Returns the number of keys kept.
    fn prune_if_due(&self, metrics: Option<&Metrics>) -> usize {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        let len = self.limiter.len();
        let since = now_ms.saturating_sub(last);
        // At the cap, prune at most every 100 ms: pruning walks the whole map.
        let due = since >= PRUNE_EVERY.as_millis() as u64 || (len >= self.max_keys && since >= 100);
        if due
            && self
                .last_prune_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            let kept = self.limiter.len();
            if let Some(metrics) = metrics {
                metrics.limit_tracked_keys.set(kept as i64);
            }
            return kept;
        }
        len
    }
}

/// Concurrency slots per API key, pruned of idle keys.
#[derive(Debug)]
struct KeyedSlots {
    permits: u32,
    max_keys: usize,
    slots: Mutex<HashMap<u64, Arc<Semaphore>>>,
}

impl KeyedSlots {
    fn semaphore(&self, key: u64) -> Option<Arc<Semaphore>> {
        // Held only for a map lookup, never across an await.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(semaphore) = slots.get(&key) {
            return Some(Arc::clone(semaphore));
        }
        if slots.len() >= self.max_keys {
            // Idle keys (nobody holds or waits for a slot) carry no state worth keeping.
            let permits = self.permits as usize;
            slots.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < permits);
            if slots.len() >= self.max_keys {
                return None;
            }
        }
        let semaphore = Arc::new(Semaphore::new(self.permits as usize));
        slots.insert(key, Arc::clone(&semaphore));
        Some(semaphore)
    }

    fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[derive(Debug)]
struct Shared {
    settings: LimitSettings,
    global: Option<Gate>,
    submit: Option<Gate>,
    read: Option<Gate>,
    per_key: Option<KeyedGate>,
    concurrency: Option<Arc<Semaphore>>,
    per_key_concurrency: Option<KeyedSlots>,
    waiting: AtomicUsize,
    hasher: std::hash::RandomState,
    jitter: Jitter,
    clock: DefaultClock,
    metrics: Option<Arc<Metrics>>,
}

/// Applies [`RateLimit`] to a service. Clones (and every service it makes) share state.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        Self::from_settings(LimitSettings::default())
    }
}

impl RateLimitLayer {
    /// A layer with no limits set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer with these settings.
    pub fn from_settings(settings: LimitSettings) -> Self {
        Self::build(settings, None)
    }

    fn build(settings: LimitSettings, metrics: Option<Arc<Metrics>>) -> Self {
        let keyed = |spec: QuotaSpec| KeyedGate {
            spec,
            limiter: RateLimiter::keyed(spec.quota()),
            max_keys: settings.max_keys.max(1),
            last_prune_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        let shared = Shared {
            global: settings.global.map(|q| Gate::new("global", q)),
            submit: settings.submit.map(|q| Gate::new("submission", q)),
            read: settings.read.map(|q| Gate::new("read", q)),
            per_key: settings.per_key.map(keyed),
            concurrency: settings
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            per_key_concurrency: settings.max_concurrency_per_key.map(|permits| KeyedSlots {
                permits,
                max_keys: settings.max_keys.max(1),
                slots: Mutex::default(),
            }),
            waiting: AtomicUsize::new(0),
            hasher: std::hash::RandomState::new(),
            // Enough to spread waiters that woke for the same instant, small next to a
            // Runway call.
            jitter: Jitter::up_to(Duration::from_millis(5)),
            clock: DefaultClock::default(),
            metrics,
            settings,
        };
        RateLimitLayer {
            shared: Arc::new(shared),
        }
    }

    fn rebuild(self, change: impl FnOnce(&mut LimitSettings)) -> Self {
        let mut settings = self.shared.settings.clone();
        change(&mut settings);
        Self::build(settings, self.shared.metrics.clone())
    }

    /// One quota for all requests.
    pub fn global(self, quota: QuotaSpec) -> Self {
        self.rebuild(|s| s.global = Some(quota))
    }

    /// A quota for each API key.
    pub fn per_key(self, quota: QuotaSpec) -> Self {
        self.rebuild(|s| s.per_key = Some(quota))
    }

    /// A quota for submissions.
    pub fn submissions(self, quota: QuotaSpec) -> Self {
        self.rebuild(|s| s.submit = Some(quota))
    }

    /// A quota for reads.
    pub fn reads(self, quota: QuotaSpec) -> Self {
        self.rebuild(|s| s.read = Some(quota))
    }

    /// Most requests in flight to the upstream at once.
    pub fn max_concurrency(self, n: u32) -> Self {
        self.rebuild(|s| s.max_concurrency = Some(n.max(1)))
    }

    /// Most requests in flight to the upstream at once for one API key.
    pub fn max_concurrency_per_key(self, n: u32) -> Self {
        self.rebuild(|s| s.max_concurrency_per_key = Some(n.max(1)))
    }

    /// Longest a request waits for its turn.
    pub fn max_wait(self, wait: Duration) -> Self {
        self.rebuild(|s| s.max_wait = wait)
    }

    /// Most requests waiting at once.
    pub fn max_queue(self, n: usize) -> Self {
        self.rebuild(|s| s.max_queue = n)
    }

    /// Most API keys whose state is kept.
    pub fn max_keys(self, n: usize) -> Self {
        self.rebuild(|s| s.max_keys = n.max(1))
    }

    /// Record waits, refusals and in-flight requests in `metrics`.
    pub fn metrics(self, metrics: Arc<Metrics>) -> Self {
        Self::build(self.shared.settings.clone(), Some(metrics))
    }

    /// How many API keys have rate-limit or concurrency state now.
    pub fn tracked_keys(&self) -> usize {
        let quota = self.shared.per_key.as_ref().map_or(0, |k| k.limiter.len());
        let slots = self
            .shared
            .per_key_concurrency
            .as_ref()
            .map_or(0, KeyedSlots::len);
        quota.max(slots)
    }

    /// How many requests are waiting for their turn now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Holds each request until its quotas and a concurrency slot allow it. See the module docs.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Response future of [`RateLimit`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

impl<S, B, RB> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Waiting happens per request in the future, where it can be bounded and cancelled.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        let class = RouteClass::of(request.method(), request.uri().path());
        let key = (shared.per_key.is_some() || shared.per_key_concurrency.is_some()).then(|| {
            // The token is hashed, never kept: the state is keyed by the hash.
            let token = request
                .headers()
                .get(header::AUTHORIZATION)
                .map_or(&b""[..], HeaderValue::as_bytes);
            shared.hasher.hash_one(token)
        });
        Box::pin(async move {
            let permit = match shared.wait_turn(class, key).await {
                Ok(permit) => permit,
                Err(refusal) => return Ok(refusal.into_response()),
            };
            let response = inner.oneshot(request).await?;
            // The slot is held until the response body is done with, not just its headers.
            Ok(response.map(|body| {
                body::boxed(WithPermit {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// What a request holds while it is in flight to the upstream.
#[derive(Debug)]
struct Permit {
    _global: Option<OwnedSemaphorePermit>,
    _per_key: Option<OwnedSemaphorePermit>,
    _in_flight: Option<crate::metrics::GaugeGuard>,
}

pin_project_lite::pin_project! {
    /// A response body that keeps the request's concurrency slot until it is dropped.
    struct WithPermit<B> {
        #[pin]
        body: B,
        _permit: Permit,
    }
}

impl<B: http_body::Body> http_body::Body for WithPermit<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Why a request was not let through.
#[derive(Debug)]
enum Refusal {
    QueueFull {
        waiting: usize,
        retry_after: Duration,
    },
    MaxWait {
        waited_for: String,
        max_wait: Duration,
        retry_after: Duration,
    },
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::MaxWait { .. } => "max_wait",
        }
    }

    fn into_response(self) -> Response<Body> {
        let (msg, retry_after) = match self {
            Refusal::QueueFull { waiting, retry_after } => (
                format!(
                    "rate limited by runway-proxy: {waiting} requests are already waiting for their turn; \
                     try again in {}s",
                    whole_seconds(retry_after)
                ),
                retry_after,
            ),
            Refusal::MaxWait {
                waited_for,
                max_wait,
                retry_after,
            } => (
                format!(
                    "rate limited by runway-proxy: no {waited_for} within the {} it may wait; try again in {}s",
                    duration::format(max_wait),
                    whole_seconds(retry_after)
                ),
                retry_after,
            ),
        };
        let mut response = envelope::error_response(StatusCode::TOO_MANY_REQUESTS, &msg);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(retry_after)));
        response
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0).max(u64::from(duration.is_zero()))
}

/// Counts a request as waiting for as long as it lives (so a cancelled waiter gives its
/// place back).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        if let Some(metrics) = &self.0.metrics {
            metrics.limit_waiting.add(-1);
        }
    }
}

impl Shared {
    /// Wait until every quota that applies lets the request through and a concurrency
    /// slot is free, all within `max_wait`.
    async fn wait_turn(&self, class: RouteClass, key: Option<u64>) -> Result<Permit, Refusal> {
        let started = Instant::now();
        let deadline = started + self.settings.max_wait;
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        if let Some(metrics) = &self.metrics {
            metrics.limit_waiting.add(1);
        }
        let _waiting = Waiting(self);
        if waiting >= self.settings.max_queue {
            let retry_after = self.estimate_wait(waiting);
            return Err(self.refuse(Refusal::QueueFull { waiting, retry_after }));
        }
        // Most specific first: a key waiting on its own quota takes no shared capacity
        // and holds no place in a shared line.
        if let (Some(gate), Some(key)) = (&self.per_key, key) {
            if gate.prune_if_due(self.metrics.as_deref()) >= gate.max_keys {
                // Full of keys all active right now: this key goes unlimited rather than
                // grow the map without bound; the shared quotas still apply.
                tracing::warn!(
                    max_keys = gate.max_keys,
                    "per-key rate limit state is full; not limiting a new key"
                );
                if let Some(metrics) = &self.metrics {
                    metrics.limit_refusals.inc(&"keys_overflow");
                }
            } else {
                self.wait_keyed(gate, key, deadline).await?;
            }
        }
        let class_gate = match class {
            RouteClass::Submission => self.submit.as_ref(),
            RouteClass::Read => self.read.as_ref(),
            RouteClass::Other => None,
        };
        for gate in class_gate.into_iter().chain(self.global.as_ref()) {
            self.wait_gate(gate, deadline).await?;
        }
        let global = match &self.concurrency {
            Some(semaphore) => Some(self.acquire(semaphore, deadline, "free upstream slot").await?),
            None => None,
        };
        let per_key = match (&self.per_key_concurrency, key) {
            (Some(slots), Some(key)) => match slots.semaphore(key) {
                Some(semaphore) => Some(
                    self.acquire(&semaphore, deadline, "free slot for this API key")
                        .await?,
                ),
                None => None,
            },
            _ => None,
        };
        let waited = started.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.limit_wait.observe(waited);
        }
        if waited >= self.settings.slow_wait {
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                route_class = class.as_str(),
                "request waited for its turn under the rate limit"
            );
        }
        Ok(Permit {
            _global: global,
            _per_key: per_key,
            _in_flight: self.metrics.as_ref().map(|m| m.limit_in_flight.track()),
        })
    }

    /// Wait at a shared gate: line up behind earlier arrivals, then sleep until GCRA allows.
    async fn wait_gate(&self, gate: &Gate, deadline: Instant) -> Result<(), Refusal> {
        // Nobody in line and a cell free: go. (Checking the line first keeps a newcomer
        // from taking the cell the head of the line is sleeping for.)
        if gate.in_line.load(Ordering::Acquire) == 0 && gate.limiter.check().is_ok() {
            return Ok(());
        }
        let ahead = gate.in_line.fetch_add(1, Ordering::AcqRel);
        struct InLine<'a>(&'a AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _in_line = InLine(&gate.in_line);
        let what = || format!("{} quota ({}) permit", gate.name, gate.spec);
        let head = match tokio::time::timeout_at(deadline, Arc::clone(&gate.line).acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                let retry_after = gate.spec.replenish_interval().saturating_mul(ahead as u32 + 1);
                return Err(self.max_wait(what(), retry_after));
            }
        };
        loop {
            let wait = match gate.limiter.check() {
                Ok(()) => break,
                Err(not_until) => not_until.wait_time_from(self.clock.now()),
            };
            if Instant::now() + wait > deadline {
                drop(head);
                return Err(self.max_wait(what(), wait));
            }
            tokio::time::sleep(self.jitter + wait).await;
        }
        drop(head);
        Ok(())
    }

    async fn wait_keyed(&self, gate: &KeyedGate, key: u64, deadline: Instant) -> Result<(), Refusal> {
        loop {
            let wait = match gate.limiter.check_key(&key) {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(self.clock.now()),
            };
            if Instant::now() + wait > deadline {
                return Err(self.max_wait(format!("per-key quota ({}) permit", gate.spec), wait));
            }
            tokio::time::sleep(self.jitter + wait).await;
        }
    }

    async fn acquire(
        &self,
        semaphore: &Arc<Semaphore>,
        deadline: Instant,
        what: &str,
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        match tokio::time::timeout_at(deadline, Arc::clone(semaphore).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Nobody knows when a slow upstream call ends; a second is a fair guess.
            _ => Err(self.max_wait(what.to_owned(), Duration::from_secs(1))),
        }
    }

    fn max_wait(&self, waited_for: String, retry_after: Duration) -> Refusal {
        self.refuse(Refusal::MaxWait {
            waited_for,
            max_wait: self.settings.max_wait,
            retry_after,
        })
    }

    fn refuse(&self, refusal: Refusal) -> Refusal {
        tracing::info!(reason = refusal.reason(), "request refused by the rate limit");
        if let Some(metrics) = &self.metrics {
            metrics.limit_refusals.inc(&refusal.reason());
        }
        refusal
    }

    /// A guess of when a full queue will have room: the waiters ahead, at the pace of the
    /// tightest shared quota.
    fn estimate_wait(&self, waiting: usize) -> Duration {
        let interval = [&self.global, &self.submit, &self.read]
            .into_iter()
            .flatten()
            .map(|gate| gate.spec.replenish_interval())
            .max()
            .unwrap_or(Duration::from_millis(10));
        interval.saturating_mul(u32::try_from(waiting).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }
}
