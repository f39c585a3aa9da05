//! What the sidecar records of every request it answers.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::metrics::{CounterVec, Gauge, MetricSet, header, write_one};
use crate::route::RouteClass;

/// Metrics of [`Sidecar`](super::Sidecar).
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// Requests answered, by route class and HTTP status.
    pub requests: CounterVec<(RouteClass, u16)>,
    /// Requests being handled now.
    pub in_flight: Arc<Gauge>,
}

impl MetricSet for RequestMetrics {
    fn render(&self, out: &mut String) {
        let name = "runway_proxy_requests_total";
        header(
            out,
            name,
            "counter",
            "Requests answered, by route class and HTTP status.",
        );
        for ((class, status), n) in self.requests.snapshot() {
            let _ = writeln!(out, "{name}{{route_class=\"{class}\",status=\"{status}\"}} {n}");
        }
        let in_flight = self.in_flight.get();
        write_one(
            out,
            "runway_proxy_requests_in_flight",
            "gauge",
            "Requests being handled now.",
            in_flight,
        );
    }
}
