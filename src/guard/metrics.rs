//! What the task guard records (`/-/metrics`).

use std::sync::Arc;

use crate::metrics::{Counter, Gauge, MetricSet, write_family, write_one};

/// What [`TaskGuard`] records: shared by every service one [`TaskGuardLayer`] makes.
#[derive(Debug, Default)]
pub struct GuardMetrics {
    /// Submissions waiting for a task slot now.
    pub waiting: Arc<Gauge>,
    /// Reservations granted.
    pub granted: Counter,
    refusals: [Counter; REASONS.len()],
}

/// Refusal reasons: each limit by its setting's name, a full queue, the store unreachable.
const REASONS: [&str; 8] = [
    "max_tasks_in_flight",
    "max_tasks_in_flight_per_key",
    "daily_task_budget",
    "daily_point_budget",
    "daily_task_budget_per_key",
    "daily_point_budget_per_key",
    "queue_full",
    "store_unavailable",
];

impl GuardMetrics {
    pub(super) fn refused(&self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.refusals[i].inc();
        }
    }

    /// Refusals for `reason` (a limit's setting name, `queue_full`, `store_unavailable`).
    pub fn refusals(&self, reason: &str) -> u64 {
        REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.refusals[i].get())
    }
}

impl MetricSet for GuardMetrics {
    fn render(&self, out: &mut String) {
        write_one(
            out,
            "runway_proxy_guard_waiting",
            "gauge",
            "Submissions waiting for a task slot now.",
            self.waiting.get(),
        );
        write_one(
            out,
            "runway_proxy_guard_reservations_total",
            "counter",
            "Submissions the task guard let through with a reservation.",
            self.granted.get(),
        );
        write_family(
            out,
            "runway_proxy_guard_refusals_total",
            "counter",
            "Submissions the task guard refused before sending, by the limit (or reason).",
            "reason",
            REASONS.iter().zip(self.refusals.iter().map(Counter::get)),
        );
    }
}
