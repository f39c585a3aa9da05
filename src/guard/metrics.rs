//! What the task guard records (`/-/metrics`).

use std::sync::Arc;

use crate::metrics::{Counter, Gauge, LabeledCounters, MetricSet, write_one};

/// What [`TaskGuard`](super::TaskGuard) records: shared by every service one
/// [`TaskGuardLayer`](super::TaskGuardLayer) makes.
#[derive(Debug)]
pub struct GuardMetrics {
    /// Submissions waiting for a task slot now.
    pub waiting: Arc<Gauge>,
    /// Reservations granted.
    pub granted: Counter,
    refusals: LabeledCounters<8>,
    /// The share of each key's budgets used, as last read from the ledger.
    pub(super) budgets: super::budgets::BudgetGauges,
    /// Submissions estimated at `guard.unknown_model_points`, by the model they named
    /// (the first [`UNPRICED_NAMES`] names; the rest as `other`). Held only to count.
    unpriced: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Most model names `runway_proxy_guard_unpriced_total` names (clients choose them).
pub const UNPRICED_NAMES: usize = 32;

impl Default for GuardMetrics {
    fn default() -> Self {
        GuardMetrics {
            waiting: Arc::default(),
            granted: Counter::default(),
            refusals: LabeledCounters::new(&REASONS),
            budgets: Default::default(),
            unpriced: std::sync::Mutex::default(),
        }
    }
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
        self.refusals.inc(reason);
    }

    /// Count a submission the price table had no price for.
    pub(super) fn unpriced(&self, model: Option<&str>) {
        let mut unpriced = self.unpriced.lock().unwrap_or_else(|p| p.into_inner());
        let named = model.unwrap_or("none");
        let label = if unpriced.contains_key(named) || unpriced.len() < UNPRICED_NAMES {
            named
        } else {
            "other"
        };
        *unpriced.entry(label.to_owned()).or_default() += 1;
    }

    /// Refusals for `reason` (a limit's setting name, `queue_full`, `store_unavailable`).
    pub fn refusals(&self, reason: &str) -> u64 {
        self.refusals.get(reason)
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
        self.refusals.render(
            out,
            "runway_proxy_guard_refusals_total",
            "Submissions the task guard refused before sending, by the limit (or reason).",
            "reason",
        );
        let mut unpriced: Vec<(String, u64)> = self
            .unpriced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(model, n)| (model.clone(), *n))
            .collect();
        // A series from the start (`other`), so that rate() sees the first one.
        if !unpriced.iter().any(|(model, _)| model == "other") {
            unpriced.push(("other".to_owned(), 0));
        }
        crate::metrics::write_family(
            out,
            "runway_proxy_guard_unpriced_total",
            "counter",
            "Submissions whose model [[guard.prices]] has no price for, estimated at guard.unknown_model_points (a warning: add a price).",
            "model",
            unpriced,
        );
        self.budgets.render(out);
    }
}
