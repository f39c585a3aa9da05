//! Counters, gauges and histograms, rendered in the Prometheus text format at `/-/metrics`.
//!
//! Everything is atomics: recording a sample never takes a lock on the hot path except
//! the first time a new label set is seen. A [`Metrics`] is shared by every layer of one
//! proxy through an `Arc`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::route::RouteClass;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Add `n` (which may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Set the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Add one now and subtract it again when the returned guard drops, however the
    /// surrounding future ends (completed, failed or cancelled).
    pub fn track(self: &Arc<Self>) -> GaugeGuard {
        self.add(1);
        GaugeGuard(Arc::clone(self))
    }
}

/// Decrements its [`Gauge`] on drop.
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// A histogram of durations with fixed bucket bounds, in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds for upstream latencies: a Runway submission takes a few hundred
/// milliseconds, a slow one tens of seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds for webhook delivery latency: from immediate to the hours a retry
/// schedule can take.
pub const DELIVERY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0, 1800.0, 7200.0, 36000.0,
];

impl Histogram {
    /// A histogram with the given upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&bound| secs <= bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// A family of counters told apart by a label key `K`.
///
/// Label sets are few (route class by status, retry reason, ...), so a read-locked map is
/// enough; the write lock is taken only the first time a key appears.
#[derive(Debug)]
pub struct CounterVec<K> {
    counters: RwLock<HashMap<K, Arc<Counter>>>,
}

impl<K> Default for CounterVec<K> {
    fn default() -> Self {
        CounterVec {
            counters: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone + Ord> CounterVec<K> {
    /// Add one to the counter for `key`.
    pub fn inc(&self, key: &K) {
        if let Some(counter) = self.read().get(key) {
            counter.inc();
            return;
        }
        let mut map = match self.counters.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key.clone()).or_default().inc();
    }

    /// The count for `key` (0 when never incremented).
    pub fn get(&self, key: &K) -> u64 {
        self.read().get(key).map_or(0, |c| c.get())
    }

    /// Every key and its count, sorted by key.
    pub fn snapshot(&self) -> Vec<(K, u64)> {
        let mut entries: Vec<_> = self.read().iter().map(|(k, c)| (k.clone(), c.get())).collect();
        entries.sort();
        entries
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<K, Arc<Counter>>> {
        // A poisoned lock only means another thread panicked while inserting a counter:
        // the map itself is still consistent.
        match self.counters.read() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// Every metric runway-proxy exports.
#[derive(Debug)]
pub struct Metrics {
    /// Requests answered by the sidecar, by route class and HTTP status.
    pub requests: CounterVec<(RouteClass, u16)>,
    /// Requests currently being handled by the sidecar.
    pub in_flight: Arc<Gauge>,
    /// Time from sending a request upstream to its response headers.
    pub upstream_latency: Histogram,
    /// Failures of the proxy itself talking to the upstream, by kind
    /// (`connect`, `timeout`, `request`).
    pub upstream_errors: CounterVec<&'static str>,
    /// Retries made, by the rule or transport failure that called for them.
    pub retries: CounterVec<String>,
    /// Retries refused because the retry budget was spent.
    pub retry_budget_exhausted: Counter,
    /// Final outcome of each request through the retry layer (`success`, `fail`,
    /// `max-attempts`, `deadline`, `budget`, `outcome-unknown`, ...).
    pub retry_outcomes: CounterVec<&'static str>,
    /// Time requests spent waiting for the rate limit and concurrency cap.
    pub limit_wait: Histogram,
    /// Requests waiting for their turn now.
    pub limit_waiting: Gauge,
    /// Requests let through the limiter and not yet done (in flight to the upstream).
    pub limit_in_flight: Arc<Gauge>,
    /// Requests the limiter refused, by reason (`queue_full`, `max_wait`), and new keys
    /// not limited because the per-key state was full (`keys_overflow`).
    pub limit_refusals: CounterVec<&'static str>,
    /// API keys with per-key rate-limit state after the last pruning.
    pub limit_tracked_keys: Gauge,
    /// Webhooks received with a valid token.
    pub webhooks_received: Counter,
    /// Webhooks stored for delivery.
    pub webhooks_stored: Counter,
    /// Webhooks that were stored before (not stored again).
    pub webhooks_duplicate: Counter,
    /// Webhooks stored but not to be delivered (an older status after the terminal one).
    pub webhooks_superseded: Counter,
    /// Webhooks refused for a bad or forged token.
    pub webhooks_rejected: Counter,
    /// Delivery attempts by result: `delivered`, `retried`, `dead`.
    pub deliveries: CounterVec<&'static str>,
    /// Deliveries pending or in flight, as the outbox last reported (refreshed every second).
    pub outbox_depth: Gauge,
    /// Time from storing a webhook to its delivery.
    pub delivery_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: CounterVec::default(),
            in_flight: Arc::new(Gauge::default()),
            upstream_latency: Histogram::new(LATENCY_BUCKETS),
            upstream_errors: CounterVec::default(),
            retries: CounterVec::default(),
            retry_budget_exhausted: Counter::default(),
            retry_outcomes: CounterVec::default(),
            limit_wait: Histogram::new(LATENCY_BUCKETS),
            limit_waiting: Gauge::default(),
            limit_in_flight: Arc::new(Gauge::default()),
            limit_refusals: CounterVec::default(),
            limit_tracked_keys: Gauge::default(),
            webhooks_received: Counter::default(),
            webhooks_stored: Counter::default(),
            webhooks_duplicate: Counter::default(),
            webhooks_superseded: Counter::default(),
            webhooks_rejected: Counter::default(),
            deliveries: CounterVec::default(),
            outbox_depth: Gauge::default(),
            delivery_latency: Histogram::new(DELIVERY_BUCKETS),
        }
    }
}

impl Metrics {
    /// A fresh set of metrics, ready to share.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Render every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "runway_proxy_requests_total",
            "counter",
            "Requests answered, by route class and HTTP status.",
        );
        for ((class, status), n) in self.requests.snapshot() {
            let _ = writeln!(
                out,
                "runway_proxy_requests_total{{route_class=\"{class}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "runway_proxy_requests_in_flight",
            "gauge",
            "Requests being handled now.",
        );
        let _ = writeln!(out, "runway_proxy_requests_in_flight {}", self.in_flight.get());
        header(
            &mut out,
            "runway_proxy_upstream_latency_seconds",
            "histogram",
            "Time from sending a request upstream to its response headers.",
        );
        self.upstream_latency
            .render(&mut out, "runway_proxy_upstream_latency_seconds", "");
        header(
            &mut out,
            "runway_proxy_upstream_errors_total",
            "counter",
            "Upstream calls that failed in the proxy (connect, timeout, request).",
        );
        for (kind, n) in self.upstream_errors.snapshot() {
            let _ = writeln!(out, "runway_proxy_upstream_errors_total{{kind=\"{kind}\"}} {n}");
        }
        header(
            &mut out,
            "runway_proxy_retries_total",
            "counter",
            "Retries made, by the rule or failure that called for them.",
        );
        for (reason, n) in self.retries.snapshot() {
            let reason = escape_label(&reason);
            let _ = writeln!(out, "runway_proxy_retries_total{{reason=\"{reason}\"}} {n}");
        }
        header(
            &mut out,
            "runway_proxy_retry_budget_exhausted_total",
            "counter",
            "Retries refused because the retry budget was spent.",
        );
        let exhausted = self.retry_budget_exhausted.get();
        let _ = writeln!(out, "runway_proxy_retry_budget_exhausted_total {exhausted}");
        header(
            &mut out,
            "runway_proxy_retry_outcomes_total",
            "counter",
            "Final outcome of requests through the retry layer.",
        );
        for (outcome, n) in self.retry_outcomes.snapshot() {
            let _ = writeln!(
                out,
                "runway_proxy_retry_outcomes_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        header(
            &mut out,
            "runway_proxy_limit_wait_seconds",
            "histogram",
            "Time requests waited for the rate limit and concurrency cap.",
        );
        self.limit_wait
            .render(&mut out, "runway_proxy_limit_wait_seconds", "");
        header(
            &mut out,
            "runway_proxy_limit_waiting",
            "gauge",
            "Requests waiting for their turn now.",
        );
        let _ = writeln!(out, "runway_proxy_limit_waiting {}", self.limit_waiting.get());
        header(
            &mut out,
            "runway_proxy_upstream_in_flight",
            "gauge",
            "Requests let through the limiter and in flight to the upstream.",
        );
        let _ = writeln!(
            out,
            "runway_proxy_upstream_in_flight {}",
            self.limit_in_flight.get()
        );
        header(
            &mut out,
            "runway_proxy_limit_refusals_total",
            "counter",
            "Requests refused by the rate limit, by reason.",
        );
        for (reason, n) in self.limit_refusals.snapshot() {
            let _ = writeln!(
                out,
                "runway_proxy_limit_refusals_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            &mut out,
            "runway_proxy_limit_tracked_keys",
            "gauge",
            "API keys with per-key rate-limit state after the last pruning.",
        );
        let _ = writeln!(
            out,
            "runway_proxy_limit_tracked_keys {}",
            self.limit_tracked_keys.get()
        );
        for (name, help, counter) in [
            (
                "runway_proxy_webhooks_received_total",
                "Webhooks received with a valid token.",
                &self.webhooks_received,
            ),
            (
                "runway_proxy_webhooks_stored_total",
                "Webhooks stored for delivery.",
                &self.webhooks_stored,
            ),
            (
                "runway_proxy_webhooks_duplicate_total",
                "Webhooks stored before, not stored again.",
                &self.webhooks_duplicate,
            ),
            (
                "runway_proxy_webhooks_superseded_total",
                "Webhooks not delivered: an older status after the terminal one.",
                &self.webhooks_superseded,
            ),
            (
                "runway_proxy_webhooks_rejected_total",
                "Webhooks refused for a bad token.",
                &self.webhooks_rejected,
            ),
        ] {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", counter.get());
        }
        header(
            &mut out,
            "runway_proxy_deliveries_total",
            "counter",
            "Delivery attempts by result.",
        );
        for (result, n) in self.deliveries.snapshot() {
            let _ = writeln!(out, "runway_proxy_deliveries_total{{result=\"{result}\"}} {n}");
        }
        header(
            &mut out,
            "runway_proxy_outbox_depth",
            "gauge",
            "Deliveries pending or in flight.",
        );
        let _ = writeln!(out, "runway_proxy_outbox_depth {}", self.outbox_depth.get());
        header(
            &mut out,
            "runway_proxy_delivery_latency_seconds",
            "histogram",
            "Time from storing a webhook to its delivery.",
        );
        self.delivery_latency
            .render(&mut out, "runway_proxy_delivery_latency_seconds", "");
        out
    }
}

/// Escape a label value for the text format (user rule names can hold anything).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.requests.inc(&(RouteClass::Read, 200));
        metrics.requests.inc(&(RouteClass::Read, 200));
        metrics.requests.inc(&(RouteClass::Submission, 502));
        metrics.upstream_latency.observe(Duration::from_millis(30));
        let _guard = metrics.in_flight.track();
        let text = metrics.render();
        assert!(
            text.contains("runway_proxy_requests_total{route_class=\"read\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("runway_proxy_requests_total{route_class=\"submission\",status=\"502\"} 1"));
        assert!(text.contains("runway_proxy_requests_in_flight 1"));
        assert!(text.contains("runway_proxy_upstream_latency_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("runway_proxy_upstream_latency_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("runway_proxy_upstream_latency_seconds_count 1"));
    }

    #[test]
    fn gauge_guard_decrements_on_drop() {
        let gauge = Arc::new(Gauge::default());
        let guard = gauge.track();
        assert_eq!(gauge.get(), 1);
        drop(guard);
        assert_eq!(gauge.get(), 0);
    }
}
