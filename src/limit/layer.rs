//! [`RateLimitLayer`] and its builder: settings checked, limiter state made once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{Jitter, RateLimiter};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::Layer;

use super::gate::{Gate, KeyedGate, KeyedSlots, TokioClock};
use super::wait::Shared;
use super::{LimitMetrics, LimitSettings, QuotaSpec, RateLimit};
use crate::settings::InvalidSetting;

/// Every key in the shared store starts with this, so one Redis can serve other uses too.
#[cfg(feature = "redis")]
const SHARED_PREFIX: &str = "runway-proxy";

/// Applies [`RateLimit`] to a service. Clones, and every service it makes, share one set
/// of quotas, slots and metrics.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitLayer {
    /// A layer with no limits set: it only passes requests through.
    pub fn new() -> Self {
        Self::from_valid(LimitSettings::default())
    }

    /// A builder starting from no limits.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            settings: LimitSettings::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimitSettings {
        &self.shared.settings
    }

    /// What the services of this layer record.
    pub fn metrics(&self) -> Arc<LimitMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// How many API keys have rate-limit or concurrency state now.
    pub fn tracked_keys(&self) -> usize {
        let quota = self.shared.rate_per_key.as_ref().map_or(0, |k| k.limiter.len());
        let slots = self
            .shared
            .concurrency_per_key
            .as_ref()
            .map_or(0, KeyedSlots::len);
        quota.max(slots)
    }

    /// How many requests are waiting for their turn now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }

    fn from_valid(settings: LimitSettings) -> Self {
        let max_keys = settings.max_keys.max(1);
        let keyed = |spec: QuotaSpec| KeyedGate {
            spec,
            limiter: RateLimiter::new(spec.quota(), Default::default(), TokioClock),
            max_keys,
            last_prune_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        let shared = Shared {
            rate: settings.rate.map(|q| Gate::new("global", q)),
            submit_rate: settings.submit_rate.map(|q| Gate::new("submission", q)),
            read_rate: settings.read_rate.map(|q| Gate::new("read", q)),
            rate_per_key: settings.rate_per_key.map(keyed),
            concurrency: settings
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            concurrency_per_key: settings.max_concurrency_per_key.map(|permits| KeyedSlots {
                permits,
                max_keys,
                slots: Mutex::default(),
            }),
            waiting: AtomicUsize::new(0),
            hasher: std::hash::RandomState::new(),
            // Enough to spread waiters that woke for the same instant, small next to a
            // Runway call.
            jitter: Jitter::up_to(Duration::from_millis(5)),
            clock: TokioClock,
            metrics: Arc::default(),
            #[cfg(feature = "redis")]
            remote: settings.redis_url.as_ref().and_then(|url| {
                // `validate` has checked the URL; connecting waits for the first request.
                let limits = super::SharedLimits::new(url.expose(), SHARED_PREFIX).ok()?;
                Some(super::wait::Remote {
                    limits,
                    fallback: settings.redis_fallback,
                    away: std::sync::atomic::AtomicBool::new(false),
                })
            }),
            settings,
        };
        RateLimitLayer {
            shared: Arc::new(shared),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Collects the settings of a [`RateLimitLayer`]; [`build`](Self::build) checks them and
/// makes the limiter state.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until built"]
pub struct RateLimitLayerBuilder {
    settings: LimitSettings,
}

impl RateLimitLayerBuilder {
    /// Start from these settings (the config's `[limit]`, say) instead of no limits.
    pub fn settings(mut self, settings: LimitSettings) -> Self {
        self.settings = settings;
        self
    }

    /// One quota for all requests (`limit.rate`).
    pub fn rate(mut self, quota: QuotaSpec) -> Self {
        self.settings.rate = Some(quota);
        self
    }

    /// A quota for each API key (`limit.rate_per_key`).
    pub fn rate_per_key(mut self, quota: QuotaSpec) -> Self {
        self.settings.rate_per_key = Some(quota);
        self
    }

    /// A quota for submissions (`limit.submit_rate`).
    pub fn submit_rate(mut self, quota: QuotaSpec) -> Self {
        self.settings.submit_rate = Some(quota);
        self
    }

    /// A quota for reads (`limit.read_rate`).
    pub fn read_rate(mut self, quota: QuotaSpec) -> Self {
        self.settings.read_rate = Some(quota);
        self
    }

    /// Most requests in flight to the upstream at once.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.settings.max_concurrency = Some(n);
        self
    }

    /// Most requests in flight to the upstream at once for one API key.
    pub fn max_concurrency_per_key(mut self, n: u32) -> Self {
        self.settings.max_concurrency_per_key = Some(n);
        self
    }

    /// Longest a request waits for its turn.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.settings.max_wait = wait;
        self
    }

    /// Most requests waiting at once.
    pub fn max_queue(mut self, n: usize) -> Self {
        self.settings.max_queue = n;
        self
    }

    /// Most API keys whose state is kept.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.settings.max_keys = n;
        self
    }

    /// Check the settings and make the layer (its quotas, slots and metrics, once).
    pub fn build(self) -> Result<RateLimitLayer, InvalidSetting> {
        self.settings.validate()?;
        Ok(RateLimitLayer::from_valid(self.settings))
    }
}
