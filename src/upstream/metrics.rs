//! What the forwarder records: upstream latency and its own failures.

use crate::metrics::{Counter, Histogram, LATENCY_BUCKETS, MetricSet, header, write_family};

use super::UpstreamError;

/// Metrics of [`Forward`](super::Forward).
#[derive(Debug)]
pub struct UpstreamMetrics {
    /// Time from sending a request upstream to its response headers.
    pub latency: Histogram,
    errors: [Counter; 3],
}

impl Default for UpstreamMetrics {
    fn default() -> Self {
        UpstreamMetrics {
            latency: Histogram::new(LATENCY_BUCKETS),
            errors: Default::default(),
        }
    }
}

const KINDS: [&str; 3] = super::UpstreamError::KINDS;

impl UpstreamMetrics {
    /// Count a failure.
    pub fn failed(&self, err: &UpstreamError) {
        let index = match err {
            UpstreamError::Connect(_) => 0,
            UpstreamError::Timeout(_) => 1,
            UpstreamError::Request(_) => 2,
        };
        self.errors[index].inc();
    }

    /// Failures of a kind (`connect`, `timeout`, `request`) so far.
    pub fn errors(&self, kind: &str) -> u64 {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.errors[i].get())
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
        write_family(
            out,
            "runway_proxy_upstream_errors_total",
            "counter",
            "Upstream calls that failed in the proxy (connect, timeout, request).",
            "kind",
            KINDS.iter().zip(self.errors.iter().map(Counter::get)),
        );
    }
}
