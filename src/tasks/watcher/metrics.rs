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
        write_one(
            out,
            "runway_proxy_tasks_abandoned_total",
            "counter",
            "Watched tasks given up: no API key to check them with.",
            self.abandoned.get(),
        );
    }
}
