//! How much of each key's budgets its tasks have used, read from the ledger every
//! [`REFRESH_EVERY`] and shown as `runway_proxy_guard_budget_used_ratio{key,budget}` (an
//! alert watches for a key past 90%).

use std::collections::BTreeMap;
use std::time::Duration;

use super::service::Guard;
use crate::duration::{millis, unix_millis};
use crate::metrics::escape_label;

/// How often the gauges are read again from the ledger.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// How long after tasks end their points are read (several ending make one read).
pub(super) const AFTER_TASKS_END: Duration = Duration::from_secs(5);

/// Most keys the gauge names (the most used first): keys known only by their hash are
/// as many as the clients' keys.
const MOST_KEYS: usize = 100;

/// The share of each key's budget used, as last read.
#[derive(Debug, Default)]
pub(super) struct BudgetUse {
    /// (key, "tasks" or "points", used share). Held only to swap or render.
    shares: std::sync::Mutex<Vec<(String, &'static str, f64)>>,
}

impl BudgetUse {
    pub(super) fn render(&self, out: &mut String) {
        let shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        if shares.is_empty() {
            return;
        }
        let name = "runway_proxy_guard_budget_used_ratio";
        crate::metrics::header(
            out,
            name,
            "gauge",
            "Share of each key's per-key budget (tasks, points) its tasks used over the budget window.",
        );
        for (key, budget, share) in shares.iter() {
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "{name}{{key=\"{}\",budget=\"{budget}\"}} {share}",
                escape_label(key)
            );
        }
    }
}

/// `used` of `budget`, 0 to any (a budget of 0 allows nothing: fully used).
fn share(used: f64, budget: u64) -> f64 {
    if budget == 0 { 1.0 } else { used / budget as f64 }
}

impl Guard {
    /// Read the budget window's usage from the ledger and set the gauges: every key with
    /// a per-key budget (its own, or the default) that has tasks in the window, and every
    /// key with a budget of its own, used or not.
    pub(super) async fn refresh_budgets(&self) -> Result<(), crate::store::Error> {
        let rules = self.rules.get();
        let directory = rules.directory();
        let defaults = directory.limits_for("");
        let budgeted = defaults.tasks_per_key.is_some()
            || defaults.points_per_key.is_some()
            || directory.keys_with_budgets().next().is_some();
        if !budgeted {
            // No per-key budget: nothing to show, and no reason to sum the ledger.
            self.metrics
                .budgets
                .shares
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            return Ok(());
        }
        let window = defaults.window;
        let now = unix_millis();
        let rows = self.store.usage(None, now - millis(window), now).await?;
        let mut used: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for row in rows {
            let entry = used.entry(row.key).or_default();
            entry.0 += row.tasks;
            entry.1 += row.points - row.refunded;
        }
        for key in directory.keys_with_budgets() {
            used.entry(key.to_owned()).or_default();
        }
        let mut shares = Vec::new();
        for (key, (tasks, points)) in used {
            let limits = directory.limits_for(&key);
            if let Some(budget) = limits.tasks_per_key {
                shares.push((key.clone(), "tasks", share(tasks as f64, budget)));
            }
            if let Some(budget) = limits.points_per_key {
                shares.push((key, "points", share(points.max(0) as f64, budget)));
            }
        }
        shares.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        shares.truncate(MOST_KEYS * 2);
        *self
            .metrics
            .budgets
            .shares
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = shares;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_of_a_budget() {
        assert_eq!(share(45.0, 50), 0.9);
        assert_eq!(share(0.0, 0), 1.0, "a budget of 0 allows nothing");
        assert_eq!(share(60.0, 50), 1.2);
    }
}
