//! [`RateLimitLayer`] and its builder: settings checked, limiter state made once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{Jitter, RateLimiter};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::Layer;

use super::gate::{Gate, KeyedGate, KeyedSlots, TokioClock};
use super::wait::Shared;
use super::{LimitMetrics, LimitSettings, QuotaSpec, RateLimit};
use crate::settings::setters;
use crate::settings::{InvalidSetting, Live};

/// Every key in the shared store starts with this, so one Redis can serve other uses too.
#[cfg(feature = "redis")]
const SHARED_PREFIX: &str = "runway-proxy";

/// Applies [`RateLimit`] to a service. Clones, and every service it makes, share one set
/// of quotas, slots and metrics, and see the settings [`reload`](RateLimitLayer::reload)
/// puts in force.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    live: Live<Shared>,
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitLayer {
    /// A layer with no limits set: it only passes requests through.
    pub fn new() -> Self {
        RateLimitLayer {
            live: Live::new(state_for(LimitSettings::default(), None)),
        }
    }

    /// A builder starting from no limits.
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            settings: LimitSettings::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> LimitSettings {
        self.live.get().settings.clone()
    }

    /// Check `settings` and put them in force now, for new requests and for those
    /// waiting their turn: a waiting request starts over under the new quotas, its
    /// `max_wait` still counted from when it arrived. A quota or cap whose setting did not
    /// change keeps its state (cells spent, waiters in line, slots in use); a changed one
    /// starts afresh, and requests already in flight finish under the old cap. The Redis
    /// URL and its fallback are read at start only: a change to them is refused here.
    pub fn reload(&self, settings: LimitSettings) -> Result<(), InvalidSetting> {
        settings.validate()?;
        let current = self.live.get();
        crate::settings::check(
            settings.redis_url == current.settings.redis_url,
            "limit.redis_url",
            || "is read at start only: restart to change it".into(),
        )?;
        crate::settings::check(
            settings.redis_fallback == current.settings.redis_fallback,
            "limit.redis_fallback",
            || "is read at start only: restart to change it".into(),
        )?;
        self.live.set(state_for(settings, Some(&current)));
        Ok(())
    }

    /// What the services of this layer record.
    pub fn metrics(&self) -> Arc<LimitMetrics> {
        Arc::clone(&self.live.get().metrics)
    }

    /// How many API keys have rate-limit or concurrency state now.
    pub fn tracked_keys(&self) -> usize {
        let shared = self.live.get();
        let quota = shared.rate_per_key.as_ref().map_or(0, |k| k.limiter.len());
        let slots = shared.concurrency_per_key.as_ref().map_or(0, |s| s.len());
        quota.max(slots)
    }

    /// How many requests are waiting for their turn now.
    pub fn waiting(&self) -> usize {
        self.live.get().waiting.load(Ordering::Relaxed)
    }
}

/// The limiter's state for `settings`: what `previous` holds for a setting that did not
/// change, new state for the rest.
fn state_for(settings: LimitSettings, previous: Option<&Shared>) -> Shared {
    let max_keys = settings.max_keys.max(1);
    let gate = |name: &'static str, spec: Option<QuotaSpec>, old: Option<&Arc<Gate>>| {
        spec.map(|spec| match old {
            Some(old) if old.spec == spec => Arc::clone(old),
            _ => Arc::new(Gate::new(name, spec)),
        })
    };
    let rate_per_key =
        settings
            .rate_per_key
            .map(|spec| match previous.and_then(|p| p.rate_per_key.as_ref()) {
                Some(old) if old.spec == spec && old.max_keys == max_keys => Arc::clone(old),
                _ => Arc::new(KeyedGate {
                    spec,
                    limiter: RateLimiter::new(spec.quota(), Default::default(), TokioClock),
                    max_keys,
                    last_prune_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                }),
            });
    let concurrency =
        settings.max_concurrency.map(
            |n| match previous.filter(|p| p.settings.max_concurrency == Some(n)) {
                Some(p) => p
                    .concurrency
                    .clone()
                    .unwrap_or_else(|| Arc::new(Semaphore::new(n as usize))),
                None => Arc::new(Semaphore::new(n as usize)),
            },
        );
    let concurrency_per_key = settings.max_concurrency_per_key.map(|permits| {
        match previous.and_then(|p| p.concurrency_per_key.as_ref()) {
            Some(old) if old.permits == permits && old.max_keys == max_keys => Arc::clone(old),
            _ => Arc::new(KeyedSlots {
                permits,
                max_keys,
                slots: Mutex::default(),
            }),
        }
    });
    Shared {
        rate: gate("global", settings.rate, previous.and_then(|p| p.rate.as_ref())),
        submit_rate: gate(
            "submission",
            settings.submit_rate,
            previous.and_then(|p| p.submit_rate.as_ref()),
        ),
        read_rate: gate(
            "read",
            settings.read_rate,
            previous.and_then(|p| p.read_rate.as_ref()),
        ),
        rate_per_key,
        concurrency,
        concurrency_per_key,
        waiting: previous.map_or_else(Arc::default, |p| Arc::clone(&p.waiting)),
        // Kept across reloads: the per-key state above is keyed by this hasher's hashes.
        hasher: previous.map_or_else(std::hash::RandomState::new, |p| p.hasher.clone()),
        // Enough to spread waiters that woke for the same instant, small next to a
        // Runway call.
        jitter: Jitter::up_to(Duration::from_millis(5)),
        clock: TokioClock,
        metrics: previous.map_or_else(Arc::default, |p| Arc::clone(&p.metrics)),
        #[cfg(feature = "redis")]
        remote: match previous {
            Some(previous) => previous.remote.clone(),
            None => settings.redis_url.as_ref().and_then(|url| {
                // `validate` has checked the URL; connecting waits for the first request.
                let limits = super::SharedLimits::new(url.expose(), SHARED_PREFIX).ok()?;
                Some(Arc::new(super::wait::Remote {
                    limits,
                    fallback: settings.redis_fallback,
                    away: std::sync::atomic::AtomicBool::new(false),
                }))
            }),
        },
        settings,
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, self.live.clone())
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
    setters! {
        /// Start from these settings (the config's `[limit]`, say) instead of no limits.
        settings(settings: LimitSettings) => settings;
        /// One quota for all requests (`limit.rate`).
        rate(quota: QuotaSpec) => settings.rate = Some(quota);
        /// A quota for each API key (`limit.rate_per_key`).
        rate_per_key(quota: QuotaSpec) => settings.rate_per_key = Some(quota);
        /// A quota for submissions (`limit.submit_rate`).
        submit_rate(quota: QuotaSpec) => settings.submit_rate = Some(quota);
        /// A quota for reads (`limit.read_rate`).
        read_rate(quota: QuotaSpec) => settings.read_rate = Some(quota);
        /// Most requests in flight to the upstream at once.
        max_concurrency(n: u32) => settings.max_concurrency = Some(n);
        /// Most requests in flight to the upstream at once for one API key.
        max_concurrency_per_key(n: u32) => settings.max_concurrency_per_key = Some(n);
        /// Longest a request waits for its turn.
        max_wait(wait: Duration) => settings.max_wait;
        /// Most requests waiting at once.
        max_queue(n: usize) => settings.max_queue;
        /// Most API keys whose state is kept.
        max_keys(n: usize) => settings.max_keys;
    }

    /// Check the settings and make the layer (its quotas, slots and metrics, once).
    pub fn build(self) -> Result<RateLimitLayer, InvalidSetting> {
        self.settings.validate()?;
        Ok(RateLimitLayer {
            live: Live::new(state_for(self.settings, None)),
        })
    }
}
