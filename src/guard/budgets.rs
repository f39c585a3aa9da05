//! How much of each key's budgets its tasks have used, read from the ledger every
//! [`REFRESH_EVERY`] and shown as `runway_proxy_guard_budget_used_ratio{key,budget}` (an
//! alert watches for a key past 90%), and answered whole, with what frees up when, at
//! `GET /-/budgets`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

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
pub(super) struct BudgetGauges {
    /// (key, "tasks" or "points", used share). Held only to swap or render.
    shares: std::sync::Mutex<Vec<(String, &'static str, f64)>>,
}

impl BudgetGauges {
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

/// Each key's use of its per-key budgets over the budget window, and what frees up
/// when: what `GET /-/budgets` answers, and what the gauges are set from.
#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    /// The budget window (`guard.budget_window`), as written in the config.
    pub window: String,
    /// Every key with a per-key budget that has tasks in the window, and every key with a
    /// budget of its own, most used first.
    pub keys: Vec<KeyBudget>,
}

/// One key's budgets, used and whole.
#[derive(Clone, Debug, Serialize)]
pub struct KeyBudget {
    /// The key's label, or its hash.
    pub key: String,
    /// Tasks submitted in the window, against `guard.daily_task_budget_per_key`.
    pub tasks: Option<BudgetUse>,
    /// Points charged less refunded in the window, against `guard.daily_point_budget_per_key`.
    pub points: Option<BudgetUse>,
    /// When the key's oldest task in the window leaves it, and what that frees (`None`:
    /// no task in the window, or not asked for).
    pub next_frees: Option<Freed>,
    /// When a spent budget has room for one more task again (`None`: none is spent).
    pub room_at: Option<String>,
}

/// Used of a budget.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BudgetUse {
    /// Used in the window.
    pub used: u64,
    /// The budget.
    pub budget: u64,
    /// `used / budget` (1 for a budget of 0, which allows nothing).
    pub share: f64,
}

impl BudgetUse {
    fn new(used: u64, budget: u64) -> Self {
        BudgetUse {
            used,
            budget,
            share: share(used as f64, budget),
        }
    }
}

/// What leaves the window next.
#[derive(Clone, Debug, Serialize)]
pub struct Freed {
    /// When (RFC 3339).
    pub at: String,
    /// One task, and its points (charged less refunded).
    pub points: i64,
}

impl Guard {
    /// Each key's use of its budgets; with `frees`, also what frees up when (one ledger
    /// read per key: the gauges do without).
    pub(super) async fn budget_report(&self, frees: bool) -> Result<BudgetReport, crate::store::Error> {
        let rules = self.rules.get();
        let directory = rules.directory();
        let defaults = directory.limits_for("");
        let window = defaults.window;
        let mut report = BudgetReport {
            window: crate::duration::format(window),
            keys: Vec::new(),
        };
        let budgeted = defaults.tasks_per_key.is_some()
            || defaults.points_per_key.is_some()
            || directory.keys_with_budgets().next().is_some();
        if !budgeted {
            // No per-key budget: nothing to show, and no reason to sum the ledger.
            return Ok(report);
        }
        let now = unix_millis();
        let since = now - millis(window);
        let rows = self.store.usage(None, since, now).await?;
        let mut used: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for row in rows {
            let entry = used.entry(row.key).or_default();
            entry.0 += row.tasks;
            entry.1 += row.points - row.refunded;
        }
        for key in directory.keys_with_budgets() {
            used.entry(key.to_owned()).or_default();
        }
        for (key, (tasks, points)) in used {
            let limits = directory.limits_for(&key);
            let tasks = limits.tasks_per_key.map(|budget| BudgetUse::new(tasks, budget));
            let points = limits
                .points_per_key
                .map(|budget| BudgetUse::new(points.max(0).unsigned_abs(), budget));
            if tasks.is_none() && points.is_none() {
                continue;
            }
            report.keys.push(KeyBudget {
                key,
                tasks,
                points,
                next_frees: None,
                room_at: None,
            });
        }
        let most = |k: &KeyBudget| {
            [k.tasks, k.points]
                .iter()
                .flatten()
                .map(|b| b.share)
                .fold(0.0, f64::max)
        };
        report
            .keys
            .sort_by(|a, b| most(b).total_cmp(&most(a)).then_with(|| a.key.cmp(&b.key)));
        report.keys.truncate(MOST_KEYS);
        if frees {
            for key in &mut report.keys {
                let spent = self.store.spend(Some(key.key.clone()), since).await?;
                key.next_frees = spent.first().map(|oldest| Freed {
                    at: crate::duration::rfc3339(oldest.submitted_at + millis(window)),
                    points: oldest.net_points,
                });
                let spent_budget = [(key.tasks, false), (key.points, true)]
                    .into_iter()
                    .filter_map(|(use_, points)| use_.map(|u| (u, points)))
                    .filter(|(u, _)| u.used >= u.budget)
                    .filter_map(|(u, points)| super::refusal::frees_at(&spent, u.budget, points, window))
                    .max();
                key.room_at = spent_budget.map(crate::duration::rfc3339);
            }
        }
        Ok(report)
    }

    /// Read the budget window's usage from the ledger and set the gauges.
    pub(super) async fn refresh_budgets(&self) -> Result<(), crate::store::Error> {
        let report = self.budget_report(false).await?;
        let mut shares = Vec::new();
        for key in report.keys {
            if let Some(tasks) = key.tasks {
                shares.push((key.key.clone(), "tasks", tasks.share));
            }
            if let Some(points) = key.points {
                shares.push((key.key, "points", points.share));
            }
        }
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
