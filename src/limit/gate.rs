//! The state behind each quota: shared GCRA gates with a line of waiters, the per-key
//! gate with its bounded map, and per-key concurrency slots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed, keyed::DefaultKeyedStateStore};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{LimitMetrics, QuotaSpec};

/// The clock the GCRA state runs on: Tokio's, so the limiter and the waits it asks for
/// agree, under a paused test clock too. (Outside tests, Tokio's clock is the monotonic
/// system clock.)
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;
pub(super) type KeyedLimiter =
    RateLimiter<u64, DefaultKeyedStateStore<u64>, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// A shared quota: a GCRA limiter and the line of requests waiting for it.
#[derive(Debug)]
pub(super) struct Gate {
    pub(super) name: &'static str,
    pub(super) spec: QuotaSpec,
    pub(super) limiter: DirectLimiter,
    /// A one-permit fair semaphore used as a queue, not to guard data: the holder is the
    /// head of the line, sleeping until GCRA lets it through.
    pub(super) line: Arc<Semaphore>,
    pub(super) in_line: AtomicUsize,
}

impl Gate {
    pub(super) fn new(name: &'static str, spec: QuotaSpec) -> Self {
        Gate {
            name,
            spec,
            limiter: RateLimiter::direct_with_clock(spec.quota(), TokioClock),
            line: Arc::new(Semaphore::new(1)),
            in_line: AtomicUsize::new(0),
        }
    }
}

/// The per-key quota: a keyed GCRA limiter whose map is pruned and capped.
#[derive(Debug)]
pub(super) struct KeyedGate {
    pub(super) spec: QuotaSpec,
    pub(super) limiter: KeyedLimiter,
    pub(super) max_keys: usize,
    /// Milliseconds since `epoch` of the last pruning.
    pub(super) last_prune_ms: AtomicU64,
    pub(super) epoch: Instant,
}

/// How often the keyed state is pruned even when it is below its cap.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

impl KeyedGate {
    /// Drop the state of keys that are back to a full burst (indistinguishable from a new
    /// key), on a schedule or when the map reaches its cap. Returns the number of keys kept.
    pub(super) fn prune_if_due(&self, metrics: &LimitMetrics) -> usize {
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
            metrics.tracked_keys.set(kept as i64);
            return kept;
        }
        len
    }
}

/// Concurrency slots per API key, pruned of idle keys.
#[derive(Debug)]
pub(super) struct KeyedSlots {
    pub(super) permits: u32,
    pub(super) max_keys: usize,
    pub(super) slots: Mutex<HashMap<u64, Arc<Semaphore>>>,
}

impl KeyedSlots {
    pub(super) fn semaphore(&self, key: u64) -> Option<Arc<Semaphore>> {
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

    pub(super) fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
