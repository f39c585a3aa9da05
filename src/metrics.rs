//! Counters, gauges and histograms, rendered in the Prometheus text format at `/-/metrics`.
//!
//! Everything is atomics: recording a sample never takes a lock on the hot path except
//! the first time a new label set is seen. Each layer keeps its own [`MetricSet`]; the
//! sidecar renders the sets it was given.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
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

    /// Append the histogram's buckets, sum and count as `name` with extra `labels`
    /// (`key="value",...`, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
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

/// Counters for a set of label values fixed when the family is declared (refusal
/// reasons, failure kinds): no lock and no map, and every value is exported from the
/// start, 0 included, so `rate()` sees each series' first event.
#[derive(Debug)]
pub struct LabeledCounters<const N: usize> {
    labels: &'static [&'static str; N],
    counts: [Counter; N],
}

impl<const N: usize> LabeledCounters<N> {
    /// A counter for each of `labels`, at 0.
    pub fn new(labels: &'static [&'static str; N]) -> Self {
        LabeledCounters {
            labels,
            counts: std::array::from_fn(|_| Counter::default()),
        }
    }

    /// Add one for `label`; a label not in the set is not counted.
    pub fn inc(&self, label: &str) {
        if let Some(at) = self.position(label) {
            self.counts[at].inc();
        }
    }

    /// The count for `label` (0 for a label not in the set).
    pub fn get(&self, label: &str) -> u64 {
        self.position(label).map_or(0, |at| self.counts[at].get())
    }

    /// Write the family: `name{label_name="value"} count` for every value.
    pub fn render(&self, out: &mut String, name: &str, help: &str, label_name: &str) {
        let samples = self.labels.iter().zip(self.counts.iter().map(Counter::get));
        write_family(out, name, "counter", help, label_name, samples);
    }

    fn position(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|known| *known == label)
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
        self.add(key, 1);
    }

    /// Add `n` to the counter for `key`.
    pub fn add(&self, key: &K, n: u64) {
        if let Some(counter) = self.read().get(key) {
            counter.add(n);
            return;
        }
        let mut map = match self.counters.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key.clone()).or_default().add(n);
    }

    /// Export `key` at 0 until its first event: a series that exists from the start, so
    /// that `rate()` and `increase()` see its first increment.
    pub fn declare(&self, key: K) {
        let mut map = match self.counters.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key).or_default();
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

/// A group of metrics one part of the proxy records (the retry layer's, the limiter's,
/// the relay's, ...), rendered together at `/-/metrics`.
///
/// Each layer owns its set and records into it; the binary composes the sets it wires
/// (the app's `Metrics`), so no layer knows about another's metrics.
pub trait MetricSet: Send + Sync + std::fmt::Debug {
    /// Append this set in the Prometheus text exposition format (version 0.0.4).
    fn render(&self, out: &mut String);
}

/// Render `sets` in the Prometheus text exposition format, one after the other.
pub fn render_all(sets: &[&dyn MetricSet]) -> String {
    let mut out = String::with_capacity(8192);
    for set in sets {
        set.render(&mut out);
    }
    out
}

/// Escape a label value for the text format (user rule names can hold anything).
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write a metric with one sample and no labels.
pub fn write_one(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Write a metric family whose samples differ by one label, `label="value"`.
pub fn write_family<L, V>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) where
    L: std::fmt::Display,
    V: std::fmt::Display,
{
    header(out, name, kind, help);
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Write the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// What every Prometheus scrape of a process expects beside its own metrics:
/// `runway_proxy_build_info{version} 1`, and the standard `process_*` metrics (resident
/// memory, open file descriptors, CPU seconds, start time), read from `/proc` at each
/// scrape (so, on Linux; elsewhere only the build and the start time).
#[derive(Debug)]
pub struct ProcessMetrics {
    started: f64,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        ProcessMetrics {
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
        }
    }
}

/// The kernel's unit of `/proc/self/stat` times: `USER_HZ`, 100 on every Linux
/// architecture the proxy builds for (it is not the scheduler's tick rate).
const USER_HZ: f64 = 100.0;

impl ProcessMetrics {
    /// Resident memory in bytes (`VmRSS` of `/proc/self/status`).
    fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// User and system CPU time in seconds (fields 14 and 15 of `/proc/self/stat`, read
    /// after the command name, which may hold spaces and parentheses).
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        let mut fields = after_name.split_whitespace().skip(11);
        let user: f64 = fields.next()?.parse().ok()?;
        let system: f64 = fields.next()?.parse().ok()?;
        Some((user + system) / USER_HZ)
    }

    fn open_fds() -> Option<usize> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
    }
}

impl MetricSet for ProcessMetrics {
    fn render(&self, out: &mut String) {
        header(
            out,
            "runway_proxy_build_info",
            "gauge",
            "The running build: always 1, its version in the labels.",
        );
        let _ = writeln!(
            out,
            "runway_proxy_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            out,
            "process_start_time_seconds",
            "gauge",
            "When the process started, in Unix seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {:.3}", self.started);
        if let Some(bytes) = Self::resident_bytes() {
            header(out, "process_resident_memory_bytes", "gauge", "Resident memory.");
            let _ = writeln!(out, "process_resident_memory_bytes {bytes}");
        }
        if let Some(fds) = Self::open_fds() {
            header(out, "process_open_fds", "gauge", "Open file descriptors.");
            let _ = writeln!(out, "process_open_fds {fds}");
        }
        if let Some(seconds) = Self::cpu_seconds() {
            header(
                out,
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time.",
            );
            let _ = writeln!(out, "process_cpu_seconds_total {seconds:.2}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_name_the_build_and_read_proc() {
        let mut out = String::new();
        ProcessMetrics::default().render(&mut out);
        assert!(
            out.contains(&format!(
                "runway_proxy_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{out}"
        );
        assert!(out.contains("process_start_time_seconds 1"), "{out}");
        if cfg!(target_os = "linux") {
            let value = |name: &str| -> f64 {
                let line = out
                    .lines()
                    .find(|l| l.starts_with(&format!("{name} ")))
                    .unwrap_or_else(|| panic!("{name} missing: {out}"));
                line.rsplit(' ').next().unwrap().parse().unwrap()
            };
            assert!(value("process_resident_memory_bytes") > 1_000_000.0);
            assert!(value("process_open_fds") >= 3.0);
            assert!(value("process_cpu_seconds_total") >= 0.0);
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let requests: CounterVec<(&str, u16)> = CounterVec::default();
        requests.inc(&("read", 200));
        requests.inc(&("read", 200));
        let latency = Histogram::new(LATENCY_BUCKETS);
        latency.observe(Duration::from_millis(30));
        let mut text = String::new();
        header(&mut text, "x_total", "counter", "X.");
        for ((class, status), n) in requests.snapshot() {
            let _ = writeln!(text, "x_total{{route_class=\"{class}\",status=\"{status}\"}} {n}");
        }
        latency.render(&mut text, "x_seconds", "");
        assert!(text.contains("# TYPE x_total counter"), "{text}");
        assert!(
            text.contains("x_total{route_class=\"read\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("x_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("x_seconds_count 1"));
        assert_eq!(escape_label("a\"b\\"), "a\\\"b\\\\");
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
