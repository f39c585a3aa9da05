//! What the forwarder records: upstream latency and its own failures.

use crate::metrics::{Histogram, LATENCY_BUCKETS, LabeledCounters, MetricSet, header};

use super::UpstreamError;

/// Metrics of [`Forward`](super::Forward).
#[derive(Debug)]
pub struct UpstreamMetrics {
    /// Time from sending a request upstream to its response headers.
    pub latency: Histogram,
    errors: LabeledCounters<3>,
}

impl Default for UpstreamMetrics {
    fn default() -> Self {
        UpstreamMetrics {
            latency: Histogram::new(LATENCY_BUCKETS),
            errors: LabeledCounters::new(&KINDS),
        }
    }
}

const KINDS: [&str; 3] = super::UpstreamError::KINDS;

impl UpstreamMetrics {
    /// Count a failure.
    pub fn failed(&self, err: &UpstreamError) {
        self.errors.inc(err.kind());
    }

    /// Failures of a kind (`connect`, `timeout`, `request`) so far.
    pub fn errors(&self, kind: &str) -> u64 {
        self.errors.get(kind)
    }
}

impl MetricSet for UpstreamMetrics {
    fn render(&self, out: &mut String) {
        let name = "runway_proxy_upstream_latency_seconds";
        header(
            out,
            name,
            "histogram",
            "Time from sending a request upstream to its response headers.",
        );
        self.latency.render(out, name, "");
        self.errors.render(
            out,
            "runway_proxy_upstream_errors_total",
            "Upstream calls that failed in the proxy (connect, timeout, request).",
            "kind",
        );
    }
}
