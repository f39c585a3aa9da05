//! What the sidecar records of every request it answers.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Gauge, MetricSet, header, write_one};
use crate::route::RouteClass;

/// Requests answered, by route class and HTTP status: a fixed table of counters, one per
/// class and status from 100 to 599, so counting a request takes no lock and no hash
/// (it runs on every serving thread at once).
pub struct StatusCounts {
    counts: Box<[AtomicU64]>,
}

const STATUSES: usize = 500;

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts {
            counts: (0..RouteClass::ALL.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl std::fmt::Debug for StatusCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

impl StatusCounts {
    fn slot(class: RouteClass, status: u16) -> usize {
        let class = RouteClass::ALL.iter().position(|c| *c == class).unwrap_or(0);
        class * STATUSES + usize::from(status.clamp(100, 599) - 100)
    }

    /// Count one answer.
    pub fn inc(&self, key: &(RouteClass, u16)) {
        self.counts[Self::slot(key.0, key.1)].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for a class and status.
    pub fn get(&self, key: &(RouteClass, u16)) -> u64 {
        self.counts[Self::slot(key.0, key.1)].load(Ordering::Relaxed)
    }

    /// Every class and status seen, with its count, sorted.
    pub fn snapshot(&self) -> Vec<((RouteClass, u16), u64)> {
        let mut out = Vec::new();
        for (c, class) in RouteClass::ALL.iter().enumerate() {
            for status in 0..STATUSES {
                let n = self.counts[c * STATUSES + status].load(Ordering::Relaxed);
                if n > 0 {
                    out.push(((*class, (status + 100) as u16), n));
                }
            }
        }
        out.sort();
        out
    }
}

/// Metrics of [`Sidecar`](super::Sidecar).
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// Requests answered, by route class and HTTP status.
    pub requests: StatusCounts,
    /// Requests being handled now.
    pub in_flight: Arc<Gauge>,
    /// POSTs under `/runwayml/v1/` the proxy does not know, by endpoint (at most
    /// [`UNKNOWN_ENDPOINTS`] names; the rest as `other`). Held only to count.
    unknown_endpoints: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Most endpoint names `runway_proxy_unknown_endpoints_total` names (clients choose them).
pub const UNKNOWN_ENDPOINTS: usize = 32;

impl RequestMetrics {
    /// Count a POST to an official endpoint the proxy does not know (sent as `other`:
    /// once, held to no guard, not watched), so operators see new endpoints.
    pub fn unknown_endpoint(&self, endpoint: &str) {
        let plain = !endpoint.is_empty()
            && endpoint.len() <= 64
            && endpoint
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let mut counts = self.unknown_endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let label = if plain && (counts.contains_key(endpoint) || counts.len() < UNKNOWN_ENDPOINTS) {
            endpoint
        } else {
            "other"
        };
        *counts.entry(label.to_owned()).or_default() += 1;
    }
}

impl MetricSet for RequestMetrics {
    fn render(&self, out: &mut String) {
        let mut unknown: Vec<(String, u64)> = self
            .unknown_endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(endpoint, n)| (endpoint.clone(), *n))
            .collect();
        // A series from the start (`other`), so that rate() sees the first one.
        if !unknown.iter().any(|(endpoint, _)| endpoint == "other") {
            unknown.push(("other".to_owned(), 0));
        }
        crate::metrics::write_family(
            out,
            "runway_proxy_unknown_endpoints_total",
            "counter",
            "POSTs under /runwayml/v1/ the proxy does not know, by endpoint: sent once as class other, held to no task guard, not watched (a new endpoint to classify).",
            "endpoint",
            unknown,
        );
        let name = "runway_proxy_requests_total";
        header(
            out,
            name,
            "counter",
            "Requests answered, by route class and HTTP status.",
        );
        let counted = self.requests.snapshot();
        for class in RouteClass::ALL {
            // A class not answered yet still has a series (at status 200), so that a
            // dashboard's rate() sees its first request.
            let mut seen = false;
            for ((_, status), n) in counted.iter().filter(|((c, _), _)| *c == class) {
                seen = true;
                let _ = writeln!(out, "{name}{{route_class=\"{class}\",status=\"{status}\"}} {n}");
            }
            if !seen {
                let _ = writeln!(out, "{name}{{route_class=\"{class}\",status=\"200\"}} 0");
            }
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
