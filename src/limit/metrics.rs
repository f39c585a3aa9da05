//! What the rate limiter records.

use std::sync::Arc;

use crate::metrics::{
    Counter, Gauge, Histogram, LATENCY_BUCKETS, LabeledCounters, MetricSet, header, write_one,
};

/// Metrics of [`RateLimit`](super::RateLimit): shared by every service one
/// [`RateLimitLayer`](super::RateLimitLayer) makes.
#[derive(Debug)]
pub struct LimitMetrics {
    /// Time requests spent waiting for the rate limit and concurrency cap.
    pub wait: Histogram,
    /// Requests waiting for their turn now.
    pub waiting: Gauge,
    /// Requests let through the limiter and not yet done (in flight to the upstream).
    pub in_flight: Arc<Gauge>,
    /// API keys with per-key rate-limit state after the last pruning.
    pub tracked_keys: Gauge,
    /// Decisions the shared store (Redis) could not make, so the local limiter made them
    /// (`limit.redis_fallback = "local"`) or the request was refused (`"refuse"`).
    pub shared_unavailable: Counter,
    refusals: LabeledCounters<4>,
}

impl Default for LimitMetrics {
    fn default() -> Self {
        LimitMetrics {
            wait: Histogram::new(LATENCY_BUCKETS),
            waiting: Gauge::default(),
            in_flight: Arc::default(),
            tracked_keys: Gauge::default(),
            shared_unavailable: Counter::default(),
            refusals: LabeledCounters::new(&REASONS),
        }
    }
}

/// Refusal reasons: queue full, waited too long, new keys not limited because the
/// per-key state was full, and the shared store unreachable (with `redis_fallback =
/// "refuse"`).
const REASONS: [&str; 4] = ["queue_full", "max_wait", "keys_overflow", "shared_unavailable"];

impl LimitMetrics {
    /// Count a refusal (`queue_full`, `max_wait`, `keys_overflow`, `shared_unavailable`).
    pub(super) fn refused(&self, reason: &str) {
        self.refusals.inc(reason);
    }

    /// Refusals for `reason` so far.
    pub fn refusals(&self, reason: &str) -> u64 {
        self.refusals.get(reason)
    }
}

impl MetricSet for LimitMetrics {
    fn render(&self, out: &mut String) {
        let name = "runway_proxy_limit_wait_seconds";
        let help = "Time requests waited for the rate limit and concurrency cap.";
        header(out, name, "histogram", help);
        self.wait.render(out, name, "");
        let gauge = |out: &mut String, name, help, value: i64| write_one(out, name, "gauge", help, value);
        gauge(
            out,
            "runway_proxy_limit_waiting",
            "Requests waiting for their turn now.",
            self.waiting.get(),
        );
        gauge(
            out,
            "runway_proxy_upstream_in_flight",
            "Requests let through the limiter and in flight to the upstream.",
            self.in_flight.get(),
        );
        gauge(
            out,
            "runway_proxy_limit_tracked_keys",
            "API keys with per-key rate-limit state after the last pruning.",
            self.tracked_keys.get(),
        );
        self.refusals.render(
            out,
            "runway_proxy_limit_refusals_total",
            "Requests refused by the rate limit, by reason.",
            "reason",
        );
        write_one(
            out,
            "runway_proxy_limit_shared_unavailable_total",
            "counter",
            "Limit decisions the shared store (Redis) could not make.",
            self.shared_unavailable.get(),
        );
    }
}
