//! What the watcher records (`/-/metrics`).

use crate::metrics::{Counter, Gauge, MetricSet, write_family, write_one};

/// What the watcher records (`/-/metrics`).
#[derive(Debug, Default)]
pub struct WatchMetrics {
    /// Checks of official-format tasks (`GET /runwayml/v1/tasks/{id}`).
    pub official_checks: Counter,
    /// Feed reads for reverse-format tasks overdue a callback.
    pub recovery_checks: Counter,
    /// Feed reads confirming a final callback (`--confirm-callbacks`).
    pub confirm_checks: Counter,
    /// Checks that got no usable answer (to be tried again).
    pub failed_checks: Counter,
    /// Status events stored for official-format tasks.
    pub events: Counter,
    /// Final results recovered from the feed (their callback never came).
    pub recovered: Counter,
    /// Tasks whose check was given up (no key to check with).
    pub abandoned: Counter,
    /// Tasks on the watch list by state, as the store last reported them.
    pub watching: Gauge,
    /// See `watching`.
    pub done: Gauge,
    /// See `watching`.
    pub unknown: Gauge,
    /// Official-format tasks that failed, by the family of their `failureCode` (in the
    /// order of [`FAILURE_FAMILIES`]).
    failures: [Counter; FAILURE_FAMILIES.len()],
    /// Official-format status events by status, for the queue and end states the
    /// watch list's own states do not name (`THROTTLED`, `CANCELLED`).
    pub throttled: Counter,
    /// See `throttled`.
    pub cancelled: Counter,
}

/// The `family` label of `runway_proxy_task_failures_total`: bounded, whatever codes
/// Runway adds.
pub const FAILURE_FAMILIES: [&str; 6] = [
    "safety_input",
    "safety_output",
    "internal",
    "asset",
    "third_party",
    "other",
];

impl WatchMetrics {
    /// Count a failed task under its `failureCode`'s family (`SAFETY.INPUT.TEXT` is
    /// `safety_input`, `INTERNAL.BAD_OUTPUT.CODE01` is `internal`, an unknown or missing
    /// code is `other`).
    pub fn failed_with(&self, code: Option<&str>) {
        let code = code.unwrap_or_default();
        let family = if code.starts_with("SAFETY.INPUT") {
            "safety_input"
        } else if code.starts_with("SAFETY.OUTPUT") {
            "safety_output"
        } else if code.starts_with("INTERNAL") {
            "internal"
        } else if code.starts_with("ASSET") {
            "asset"
        } else if code.starts_with("THIRD_PARTY") {
            "third_party"
        } else {
            "other"
        };
        if let Some(at) = FAILURE_FAMILIES.iter().position(|f| *f == family) {
            self.failures[at].inc();
        }
    }
}

impl MetricSet for WatchMetrics {
    fn render(&self, out: &mut String) {
        write_family(
            out,
            "runway_proxy_task_checks_total",
            "counter",
            "Checks of watched tasks, by kind: polls of official-format tasks, feed reads of overdue ones and of final callbacks to confirm, failures.",
            "kind",
            [
                ("poll", self.official_checks.get()),
                ("recovery", self.recovery_checks.get()),
                ("confirm", self.confirm_checks.get()),
                ("failed", self.failed_checks.get()),
            ],
        );
        write_one(
            out,
            "runway_proxy_task_events_total",
            "counter",
            "Status events stored for official-format tasks.",
            self.events.get(),
        );
        write_one(
            out,
            "runway_proxy_tasks_recovered_total",
            "counter",
            "Final results recovered from the feed because their callback never came.",
            self.recovered.get(),
        );
        write_family(
            out,
            "runway_proxy_tasks",
            "gauge",
            "Tasks on the watch list by state (refreshed every few seconds).",
            "state",
            [
                ("watching", self.watching.get()),
                ("done", self.done.get()),
                ("unknown", self.unknown.get()),
            ],
        );
        write_family(
            out,
            "runway_proxy_task_failures_total",
            "counter",
            "Official-format tasks that failed, by the family of their failureCode.",
            "family",
            FAILURE_FAMILIES
                .iter()
                .zip(&self.failures)
                .map(|(family, n)| (*family, n.get())),
        );
        write_family(
            out,
            "runway_proxy_task_statuses_total",
            "counter",
            "Official-format status events seen for the states the watch list does not name: queued over the tier's concurrency (THROTTLED), cancelled.",
            "status",
            [
                ("THROTTLED", self.throttled.get()),
                ("CANCELLED", self.cancelled.get()),
            ],
        );
        write_one(
            out,
            "runway_proxy_tasks_abandoned_total",
            "counter",
            "Watched tasks given up: no API key to check them with.",
            self.abandoned.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_are_counted_by_family() {
        let metrics = WatchMetrics::default();
        for code in [
            Some("SAFETY.INPUT.TEXT"),
            Some("SAFETY.OUTPUT.VIDEO"),
            Some("INTERNAL.BAD_OUTPUT.CODE01"),
            Some("INTERNAL"),
            Some("ASSET.INVALID"),
            Some("THIRD_PARTY.UNAVAILABLE"),
            Some("SOMETHING.NEW"),
            None,
        ] {
            metrics.failed_with(code);
        }
        let mut out = String::new();
        metrics.render(&mut out);
        for (family, n) in [
            ("safety_input", 1),
            ("safety_output", 1),
            ("internal", 2),
            ("asset", 1),
            ("third_party", 1),
            ("other", 2),
        ] {
            let line = format!("runway_proxy_task_failures_total{{family=\"{family}\"}} {n}");
            assert!(out.contains(&line), "{line} in\n{out}");
        }
    }
}
