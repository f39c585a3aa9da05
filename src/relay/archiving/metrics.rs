//! What the archive workers record.

use crate::metrics::{
    Counter, DELIVERY_BUCKETS, Gauge, Histogram, MetricSet, header, write_family, write_one,
};

/// Why a copy failed, as the `reason` label of `runway_proxy_archive_failures_total`.
pub(super) const REASONS: [&str; 8] = [
    "refused",
    "gone",
    "status",
    "too_large",
    "truncated",
    "download",
    "timeout",
    "store",
];

/// Metrics of the archive workers.
#[derive(Debug)]
pub struct ArchiveMetrics {
    /// Outputs copied.
    pub objects: Counter,
    /// Bytes copied.
    pub bytes: Counter,
    /// Failed copies, by reason (in the order of the reasons list).
    failures: [Counter; REASONS.len()],
    /// Tasks whose archiving was given up.
    pub given_up: Counter,
    /// Webhooks let go at the deadline without their copies.
    pub past_deadline: Counter,
    /// Copies the retention sweep deleted.
    pub swept: Counter,
    /// Time one output's copy took.
    pub copy_duration: Histogram,
    /// Open archive jobs, as the store last reported.
    pub open: Gauge,
    /// Webhooks held back for their copies, as the store last reported.
    pub holding: Gauge,
}

impl Default for ArchiveMetrics {
    fn default() -> Self {
        ArchiveMetrics {
            objects: Counter::default(),
            bytes: Counter::default(),
            failures: Default::default(),
            given_up: Counter::default(),
            past_deadline: Counter::default(),
            swept: Counter::default(),
            copy_duration: Histogram::new(DELIVERY_BUCKETS),
            open: Gauge::default(),
            holding: Gauge::default(),
        }
    }
}

impl ArchiveMetrics {
    /// Count a failed copy under `reason` (one of the reasons list; another is not counted).
    pub(super) fn failed(&self, reason: &str) {
        if let Some(at) = REASONS.iter().position(|r| *r == reason) {
            self.failures[at].inc();
        }
    }
}

impl MetricSet for ArchiveMetrics {
    fn render(&self, out: &mut String) {
        write_one(
            out,
            "runway_proxy_archive_objects_total",
            "counter",
            "Task outputs copied to the archive.",
            self.objects.get(),
        );
        write_one(
            out,
            "runway_proxy_archive_bytes_total",
            "counter",
            "Bytes of task outputs copied to the archive.",
            self.bytes.get(),
        );
        write_family(
            out,
            "runway_proxy_archive_failures_total",
            "counter",
            "Output copies that failed, by reason.",
            "reason",
            REASONS
                .iter()
                .zip(&self.failures)
                .map(|(reason, n)| (*reason, n.get())),
        );
        write_one(
            out,
            "runway_proxy_archive_swept_total",
            "counter",
            "Archived outputs the retention sweep deleted.",
            self.swept.get(),
        );
        write_family(
            out,
            "runway_proxy_archive_outcomes_total",
            "counter",
            "Archive jobs given up, and webhooks let go at the deadline without their copies.",
            "outcome",
            [
                ("given_up", self.given_up.get()),
                ("past_deadline", self.past_deadline.get()),
            ],
        );
        write_family(
            out,
            "runway_proxy_archive_backlog",
            "gauge",
            "Archive jobs open, and webhooks held back for their copies.",
            "state",
            [("open", self.open.get()), ("holding", self.holding.get())],
        );
        let name = "runway_proxy_archive_copy_seconds";
        header(out, name, "histogram", "Time one output's copy took.");
        self.copy_duration.render(out, name, "");
    }
}
