//! Waiting for a turn: every quota that applies, then a concurrency slot, within
//! `max_wait`; or a refusal that says when to come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::Jitter;
use governor::clock::Clock;
use http::{HeaderValue, Response, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::gate::{Gate, KeyedGate, KeyedSlots, TokioClock};
use super::{LimitMetrics, LimitSettings};
use crate::body::Body;
use crate::duration;
use crate::envelope;
use crate::metrics::GaugeGuard;
use crate::route::RouteClass;

/// What every service made by one [`RateLimitLayer`](super::RateLimitLayer) shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) settings: LimitSettings,
    // Each piece of state is behind an `Arc` so that a reload that leaves its setting
    // alone carries it over: a quota keeps its spent cells and its line of waiters, a
    // cap its slots in use.
    pub(super) rate: Option<Arc<Gate>>,
    pub(super) submit_rate: Option<Arc<Gate>>,
    pub(super) read_rate: Option<Arc<Gate>>,
    pub(super) rate_per_key: Option<Arc<KeyedGate>>,
    pub(super) concurrency: Option<Arc<Semaphore>>,
    pub(super) concurrency_per_key: Option<Arc<KeyedSlots>>,
    /// Requests waiting, across reloads (`max_queue` bounds them all).
    pub(super) waiting: Arc<AtomicUsize>,
    pub(super) hasher: std::hash::RandomState,
    pub(super) jitter: Jitter,
    pub(super) clock: TokioClock,
    pub(super) metrics: Arc<LimitMetrics>,
    /// The rate quotas' shared store, when replicas share them.
    #[cfg(feature = "redis")]
    pub(super) remote: Option<Arc<Remote>>,
}

/// The rate quotas and concurrency caps in Redis, and whether it answered last time (so
/// that losing and regaining it is logged once each, not per request).
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(super) struct Remote {
    pub(super) limits: super::SharedLimits,
    pub(super) fallback: super::SharedFallback,
    pub(super) away: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "redis")]
impl Remote {
    /// Redis answered: note it if it had been away.
    fn answered(&self) {
        // A load first: the common case (never away) writes nothing shared.
        if self.away.load(Ordering::Relaxed) && self.away.swap(false, Ordering::AcqRel) {
            tracing::warn!("rate-limit store (Redis) answers again: quotas and caps are shared again");
        }
    }
}

/// Give back the slots taken before a later cap refused.
#[cfg(feature = "redis")]
fn give_back(limits: &super::SharedLimits, holder: String, held: Vec<String>) {
    if !held.is_empty() {
        drop(SharedSlots::hold(limits.clone(), holder, held));
    }
}

/// An API key's name in the state shared with replicas: `key:` and its digest in hex.
#[cfg(feature = "redis")]
fn shared_key_name(digest: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(4 + 2 * digest.len());
    name.push_str("key:");
    for byte in digest {
        let _ = write!(name, "{byte:02x}");
    }
    name
}

/// What a request holds while it is in flight to the upstream.
#[derive(Debug)]
pub(super) struct Permit {
    _global: Option<OwnedSemaphorePermit>,
    _per_key: Option<OwnedSemaphorePermit>,
    #[cfg(feature = "redis")]
    _shared: Option<SharedSlots>,
    _in_flight: GaugeGuard,
}

/// How long a concurrency slot in Redis is leased for: a replica killed mid-request
/// holds its slots this long at most.
#[cfg(feature = "redis")]
pub(super) const SLOT_LEASE: Duration = Duration::from_secs(10);
/// How often a request still in flight renews its leases.
#[cfg(feature = "redis")]
const SLOT_RENEW_EVERY: Duration = Duration::from_secs(3);
/// How often a request waiting for a full shared cap asks again. (Redis can't wake a
/// waiter in another process; a short poll is what a wait costs.)
#[cfg(feature = "redis")]
const SLOT_POLL: Duration = Duration::from_millis(20);

/// Slots held in the concurrency caps shared by replicas. A task renews their leases
/// while the request is in flight and gives them back when this is dropped.
#[cfg(feature = "redis")]
#[derive(Debug)]
struct SharedSlots {
    _held: tokio::sync::oneshot::Sender<()>,
}

#[cfg(feature = "redis")]
impl SharedSlots {
    fn hold(limits: super::SharedLimits, holder: String, names: Vec<String>) -> SharedSlots {
        let (held, mut dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut dropped => break,
                    () = tokio::time::sleep(SLOT_RENEW_EVERY) => {
                        for name in &names {
                            match limits.renew(name, &holder, SLOT_LEASE).await {
                                Ok(true) => {}
                                Ok(false) => tracing::warn!(cap = %name, "a shared concurrency lease lapsed mid-request"),
                                Err(err) => tracing::debug!(error = %err, "cannot renew a shared concurrency lease"),
                            }
                        }
                    }
                }
            }
            for name in &names {
                // Not given back (Redis away): it lapses after the lease.
                let _ = limits.release(name, &holder).await;
            }
        });
        SharedSlots { _held: held }
    }
}

/// Why a request was not let through.
#[derive(Debug)]
pub(super) enum Refusal {
    QueueFull {
        waiting: usize,
        retry_after: Duration,
    },
    MaxWait {
        waited_for: String,
        max_wait: Duration,
        retry_after: Duration,
    },
    /// The shared store did not answer and `redis_fallback` is `refuse`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    SharedUnavailable,
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::MaxWait { .. } => "max_wait",
            Refusal::SharedUnavailable => "shared_unavailable",
        }
    }

    /// The 429 for a request to `path`: nothing was sent, so a retry after `Retry-After`
    /// is safe, and clients are told so.
    pub(super) fn into_response(self, path: &str) -> Response<Body> {
        let status = match self {
            Refusal::SharedUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::TOO_MANY_REQUESTS,
        };
        let (msg, retry_after) = match self {
            Refusal::SharedUnavailable => (
                "runway-proxy cannot reach the rate-limit store it shares with its replicas \
                 (Redis); nothing was sent upstream; try again in 1s"
                    .to_owned(),
                Duration::from_secs(1),
            ),
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
        let mut response = envelope::error_response_for(path, status, &msg);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(retry_after)));
        envelope::should_retry(&mut response, true);
        response
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
pub(super) fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0).max(u64::from(duration.is_zero()))
}

/// Counts a request as waiting for as long as it lives (so a cancelled waiter gives its
/// place back).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.waiting.add(-1);
    }
}

impl Shared {
    /// Whether per-key state (a quota or a concurrency cap) is kept in the store shared
    /// with replicas, which then needs the key's digest.
    pub(super) fn shares_per_key_state(&self) -> bool {
        #[cfg(feature = "redis")]
        if self.remote.is_some() {
            return self.rate_per_key.is_some() || self.concurrency_per_key.is_some();
        }
        false
    }

    /// Wait until every quota that applies lets the request through and a concurrency
    /// slot is free, all within `max_wait`.
    /// `key` names the request's API key for this process's state, `digest` for the
    /// state shared with replicas (present only when per-key state is shared).
    pub(super) async fn wait_turn(
        &self,
        class: RouteClass,
        key: Option<u64>,
        digest: Option<[u8; 16]>,
        started: Instant,
    ) -> Result<Permit, Refusal> {
        let deadline = started + self.settings.max_wait;
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        self.metrics.waiting.add(1);
        let _waiting = Waiting(self);
        if waiting >= self.settings.max_queue {
            let retry_after = self.estimate_wait(waiting);
            return Err(self.refuse(Refusal::QueueFull { waiting, retry_after }));
        }
        if !self.wait_shared(class, digest, deadline).await? {
            self.wait_local(class, key, deadline).await?;
        }
        let global = match &self.concurrency {
            Some(semaphore) => Some(self.acquire(semaphore, deadline, "free upstream slot").await?),
            None => None,
        };
        let per_key = match (self.concurrency_per_key.as_deref(), key) {
            (Some(slots), Some(key)) => match slots.semaphore(key) {
                Some(semaphore) => Some(
                    self.acquire(&semaphore, deadline, "free slot for this API key")
                        .await?,
                ),
                None => None,
            },
            _ => None,
        };
        // This process's slots first: a request that can't have one here asks Redis nothing.
        #[cfg(feature = "redis")]
        let shared = self.acquire_shared(digest, deadline).await?;
        let waited = started.elapsed();
        self.metrics.wait.observe(waited);
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
            #[cfg(feature = "redis")]
            _shared: shared,
            _in_flight: self.metrics.in_flight.track(),
        })
    }

    /// Wait for every rate quota that applies, in this process's memory.
    async fn wait_local(
        &self,
        class: RouteClass,
        key: Option<u64>,
        deadline: Instant,
    ) -> Result<(), Refusal> {
        // Most specific first: a key waiting on its own quota takes no shared capacity
        // and holds no place in a shared line.
        if let (Some(gate), Some(key)) = (self.rate_per_key.as_deref(), key) {
            if gate.prune_if_due(&self.metrics) >= gate.max_keys {
                // Full of keys all active right now: this key goes unlimited rather than
                // grow the map without bound; the shared quotas still apply.
                tracing::warn!(
                    max_keys = gate.max_keys,
                    "per-key rate limit state is full; not limiting a new key"
                );
                self.metrics.refused("keys_overflow");
            } else {
                self.wait_keyed(gate, key, deadline).await?;
            }
        }
        for gate in self.class_gate(class).into_iter().chain(self.rate.as_deref()) {
            self.wait_gate(gate, deadline).await?;
        }
        Ok(())
    }

    /// The quota of the request's route class, if one is set.
    fn class_gate(&self, class: RouteClass) -> Option<&Gate> {
        match class {
            RouteClass::Submission => self.submit_rate.as_deref(),
            RouteClass::Read => self.read_rate.as_deref(),
            RouteClass::Other => None,
        }
    }

    /// Wait for every rate quota that applies, in the store shared with the replicas:
    /// one decision over all of them per round trip. `Ok(false)`: no store is set, or it
    /// did not answer and the fallback is this process's limiter.
    #[cfg(feature = "redis")]
    async fn wait_shared(
        &self,
        class: RouteClass,
        digest: Option<[u8; 16]>,
        deadline: Instant,
    ) -> Result<bool, Refusal> {
        use std::borrow::Cow;

        let Some(remote) = self.remote.as_deref() else {
            return Ok(false);
        };
        let mut quotas: Vec<(Cow<'static, str>, super::QuotaSpec)> = Vec::with_capacity(3);
        if let (Some(gate), Some(digest)) = (&self.rate_per_key, digest) {
            quotas.push((Cow::Owned(shared_key_name(&digest)), gate.spec));
        }
        for gate in self.class_gate(class).into_iter().chain(self.rate.as_deref()) {
            quotas.push((Cow::Borrowed(gate.name), gate.spec));
        }
        if quotas.is_empty() {
            return Ok(true);
        }
        loop {
            match remote.limits.check(&quotas).await {
                Ok(decision) => {
                    remote.answered();
                    let wait = match decision {
                        super::SharedDecision::Allowed => return Ok(true),
                        super::SharedDecision::Wait(wait) => wait,
                    };
                    if Instant::now() + wait > deadline {
                        return Err(self.max_wait("shared quota permit".to_owned(), wait));
                    }
                    tokio::time::sleep(self.jitter + wait).await;
                }
                Err(err) => return self.shared_failed(remote, &err).map(|()| false),
            }
        }
    }

    /// Take a slot of every concurrency cap shared with the replicas that applies, within
    /// `deadline`. `None`: no cap is shared, or Redis did not answer and the fallback is
    /// this process's caps alone.
    #[cfg(feature = "redis")]
    async fn acquire_shared(
        &self,
        digest: Option<[u8; 16]>,
        deadline: Instant,
    ) -> Result<Option<SharedSlots>, Refusal> {
        let Some(remote) = self.remote.as_deref() else {
            return Ok(None);
        };
        let mut caps: Vec<(String, u32, &'static str)> = Vec::with_capacity(2);
        if let Some(cap) = self.settings.max_concurrency {
            caps.push(("global".to_owned(), cap, "free upstream slot"));
        }
        if let (Some(cap), Some(digest)) = (self.settings.max_concurrency_per_key, digest) {
            caps.push((shared_key_name(&digest), cap, "free slot for this API key"));
        }
        if caps.is_empty() {
            return Ok(None);
        }
        let holder = format!("{:032x}", rand::random::<u128>());
        let mut held = Vec::with_capacity(caps.len());
        for (name, cap, what) in caps {
            loop {
                match remote.limits.acquire(&name, cap, &holder, SLOT_LEASE).await {
                    Ok(true) => {
                        remote.answered();
                        held.push(name);
                        break;
                    }
                    Ok(false) if Instant::now() + SLOT_POLL <= deadline => {
                        tokio::time::sleep(self.jitter + SLOT_POLL).await;
                    }
                    Ok(false) => {
                        give_back(&remote.limits, holder, held);
                        return Err(self.max_wait(what.to_owned(), Duration::from_secs(1)));
                    }
                    Err(err) => {
                        give_back(&remote.limits, holder, held);
                        return self.shared_failed(remote, &err).map(|()| None);
                    }
                }
            }
        }
        Ok(Some(SharedSlots::hold(remote.limits.clone(), holder, held)))
    }

    /// Redis did not answer: count and log it (once until it answers again), then go on
    /// with this process's limiter or refuse, as `redis_fallback` says.
    #[cfg(feature = "redis")]
    fn shared_failed(&self, remote: &Remote, err: &super::SharedLimitError) -> Result<(), Refusal> {
        self.metrics.shared_unavailable.inc();
        if !remote.away.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = %err,
                fallback = remote.fallback.as_str(),
                "rate-limit store (Redis) unreachable"
            );
        }
        match remote.fallback {
            super::SharedFallback::Local => Ok(()),
            super::SharedFallback::Refuse => Err(self.refuse(Refusal::SharedUnavailable)),
        }
    }

    /// Without the `redis` feature nothing is shared.
    #[cfg(not(feature = "redis"))]
    async fn wait_shared(
        &self,
        _class: RouteClass,
        _digest: Option<[u8; 16]>,
        _deadline: Instant,
    ) -> Result<bool, Refusal> {
        Ok(false)
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
        self.metrics.refused(refusal.reason());
        refusal
    }

    /// A guess of when a full queue will have room: the waiters ahead, at the pace of the
    /// tightest shared quota.
    fn estimate_wait(&self, waiting: usize) -> Duration {
        let interval = [&self.rate, &self.submit_rate, &self.read_rate]
            .into_iter()
            .flatten()
            .map(|gate| gate.spec.replenish_interval())
            .max()
            .unwrap_or(Duration::from_millis(10));
        interval.saturating_mul(u32::try_from(waiting).unwrap_or(u32::MAX))
    }
}
