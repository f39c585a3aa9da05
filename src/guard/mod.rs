//! Spend and task guards: at most so many tasks unfinished, at most so many tasks and
//! points a day, per key and in all, checked before a submission is sent.
//!
//! The rate limiter counts requests; a Runway account is limited and billed by *tasks*.
//! [`TaskGuard`] counts a task from the moment its submission is sent until the watch list
//! sees its terminal status (a callback, a feed read, an official task read), so a team
//! sharing one account never has more generations running than its tier allows (Runway
//! would hold the rest as `THROTTLED`). A submission over a task limit waits its turn,
//! like a rate-limited call (the same `max_wait` and `max_queue`), then gets a 429 that
//! says why; a submission whose outcome is unknown counts until it is resolved or for
//! `watch.recover_after`.
//!
//! Budgets are rolling windows (24 h by default) of tasks, and of points charged less
//! points refunded, as CometAPI reports them in callbacks and the feed. A task's points
//! are known only once it reports them, so the task that crosses a budget is the last
//! one allowed; the next submission is refused before anything is sent: `429` with
//! `Retry-After` when the window frees room, `402` when the budget is 0, and always
//! `x-should-retry: false` (an SDK retrying in a second would only be refused again).
//!
//! Keys are told apart by the hash of their `Authorization` value
//! ([`key_hash`](crate::tasks::key_hash)), never the key itself; [`KeyOverride`]s give a
//! key (or several) a label, which the ledger and the metrics show, and limits of its own.
//! Keys that share a label share its budgets.
//!
//! The counts live in the watch list's store ([`TaskStore::reserve`](crate::store::TaskStore::reserve)): one SQLite file
//! for one process, one PostgreSQL database for every replica, where a reservation is
//! checked and recorded under one lock so two replicas cannot both take the last slot.
//!
//! Put this layer inside [`RewriteCallback`](crate::callback::RewriteCallback) (a
//! submission it refuses takes no slot) and outside
//! [`RecordTasks`](crate::tasks::RecordTasks) (which turns the reservation into the task).
//! [`RunwayLayer`](crate::RunwayLayer) does.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use runway_proxy::guard::{GuardSettings, KeyOverride, TaskGuardLayer};
//! use runway_proxy::relay::SqliteOutbox;
//! use runway_proxy::tasks::{TaskStore, Usage};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let dir = tempfile::tempdir()?;
//! let store: Arc<dyn TaskStore> = Arc::new(SqliteOutbox::open(&dir.path().join("outbox.db"))?);
//! let mut settings = GuardSettings::default();
//! settings.max_tasks_in_flight = Some(5); // Runway tier 3
//! settings.daily_point_budget_per_key = Some(2_000);
//! settings.keys.push(KeyOverride::label("alice", ["0f1e2d3c4b5a69788796a5b4c3d2e1f0"]).daily_point_budget(5_000));
//! let guard = TaskGuardLayer::builder(store, Usage::new()).settings(settings).build()?;
//! # let _ = guard;
//! # Ok(())
//! # }
//! ```

mod budgets;
mod layer;
mod metrics;
mod prices;
mod refusal;
mod service;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

pub use crate::context::ResponseFuture;
pub use budgets::{BudgetReport, BudgetUse, Freed, KeyBudget};
pub use layer::{TaskGuardLayer, TaskGuardLayerBuilder};
pub use metrics::GuardMetrics;
pub use prices::{Estimate, Price, default_prices};
pub use service::{Guard, TaskGuard};

use crate::settings::setters;
use crate::settings::{InvalidSetting, check, parse, settings, show};
use crate::tasks::TaskLimits;

settings! {
    /// Settings of the task guard (`[guard]` in the config file). Every limit is optional;
    /// unset means unlimited. Field names are the config keys.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct GuardSettings in guard {
        /// Most tasks unfinished at once, in all.
        pub max_tasks_in_flight: Option<u32> = None,
        /// Most tasks unfinished at once for one key.
        pub max_tasks_in_flight_per_key: Option<u32> = None,
        /// Most tasks per window, in all.
        pub daily_task_budget: Option<u64> = None,
        /// Most points (charged less refunded) per window, in all.
        pub daily_point_budget: Option<u64> = None,
        /// Most tasks per window for one key.
        pub daily_task_budget_per_key: Option<u64> = None,
        /// Most points per window for one key.
        pub daily_point_budget_per_key: Option<u64> = None,
        /// The budgets' rolling window (default 24 h).
        pub budget_window: Duration = Duration::from_secs(24 * 3600),
        /// Labels and limits of particular keys (`[[guard.keys]]`).
        pub keys: Vec<KeyOverride> = Vec::new(),
        /// What submissions are estimated to cost before CometAPI reports it
        /// (`[[guard.prices]]`; default: Runway's published prices, see [`default_prices`]).
        pub prices: Vec<Price> = default_prices(),
        /// Points a submission whose model (and route) the price table lacks is estimated at.
        pub unknown_model_points: u64 = 100,
    }
    rows {
        max_tasks_in_flight: live, under Limits,
            env: "RUNWAY_PROXY_MAX_TASKS_IN_FLIGHT",
            flag: "max-tasks-in-flight",
            doc: "Most tasks unfinished at once (from submission until the watch list sees their end); more wait their turn.",
            parse: parse::optional_count, show: show::optional;
        max_tasks_in_flight_per_key: live, under Limits,
            env: "RUNWAY_PROXY_MAX_TASKS_IN_FLIGHT_PER_KEY",
            flag: "max-tasks-in-flight-per-key",
            doc: "Most tasks unfinished at once for one API key (or label).",
            parse: parse::optional_count, show: show::optional;
        daily_task_budget: live, under Limits,
            env: "RUNWAY_PROXY_DAILY_TASK_BUDGET",
            flag: "daily-task-budget",
            doc: "Most tasks submitted per budget window, in all; past it submissions are refused before sending.",
            parse: parse::optional_amount, show: show::optional;
        daily_point_budget: live, under Limits,
            env: "RUNWAY_PROXY_DAILY_POINT_BUDGET",
            flag: "daily-point-budget",
            doc: "Most points (charged less refunded, as CometAPI reports them) per budget window, in all.",
            parse: parse::optional_amount, show: show::optional;
        daily_task_budget_per_key: live, under Limits,
            env: "RUNWAY_PROXY_DAILY_TASK_BUDGET_PER_KEY",
            flag: "daily-task-budget-per-key",
            doc: "Most tasks per budget window for one API key (or label); [[guard.keys]] overrides it per key.",
            parse: parse::optional_amount, show: show::optional;
        daily_point_budget_per_key: live, under Limits,
            env: "RUNWAY_PROXY_DAILY_POINT_BUDGET_PER_KEY",
            flag: "daily-point-budget-per-key",
            doc: "Most points per budget window for one API key (or label); [[guard.keys]] overrides it per key.",
            parse: parse::optional_amount, show: show::optional;
        budget_window: live, under Limits,
            env: "RUNWAY_PROXY_BUDGET_WINDOW",
            flag: "budget-window",
            doc: "The budgets' rolling window.",
            parse: parse::positive_duration, show: show::duration;
        unknown_model_points: live, under Limits,
            env: "RUNWAY_PROXY_UNKNOWN_MODEL_POINTS",
            flag: "unknown-model-points",
            doc: "Points a submission is estimated at when [[guard.prices]] has no price for its model or route (counted against point budgets until CometAPI reports the real figure).",
            parse: parse::number, show: show::plain;
    }
}

/// A key (or several, by hash) with a label and limits of its own: one
/// `[[guard.keys]]` table. Its limits replace the `*_per_key` defaults for it; keys
/// sharing a label share them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyOverride {
    /// What the ledger and the metrics call it (letters, digits, `.`, `_`, `-`, `@`).
    pub label: Option<String>,
    /// One key's hash ([`key_hash`](crate::tasks::key_hash)).
    pub hash: Option<String>,
    /// Several keys' hashes (a key and the one replacing it, a team's keys).
    #[serde(default)]
    pub hashes: Vec<String>,
    /// Most tasks unfinished at once for it.
    pub max_tasks_in_flight: Option<u32>,
    /// Most tasks per window for it.
    pub daily_task_budget: Option<u64>,
    /// Most points per window for it (0: none at all).
    pub daily_point_budget: Option<u64>,
}

impl KeyOverride {
    /// The keys hashed `hashes`, labelled `label`.
    pub fn label<H: Into<String>>(label: impl Into<String>, hashes: impl IntoIterator<Item = H>) -> Self {
        KeyOverride {
            label: Some(label.into()),
            hashes: hashes.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    setters! {
        /// Set its own daily point budget.
        daily_point_budget(points: u64) => daily_point_budget = Some(points);
        /// Set its own daily task budget.
        daily_task_budget(tasks: u64) => daily_task_budget = Some(tasks);
        /// Set its own limit of tasks in flight.
        max_tasks_in_flight(tasks: u32) => max_tasks_in_flight = Some(tasks);
    }
}

impl GuardSettings {
    /// Whether any limit is set at all (if not, submissions are only labelled for the
    /// ledger).
    pub fn is_unlimited(&self) -> bool {
        self.max_tasks_in_flight.is_none()
            && self.max_tasks_in_flight_per_key.is_none()
            && self.daily_task_budget.is_none()
            && self.daily_point_budget.is_none()
            && self.daily_task_budget_per_key.is_none()
            && self.daily_point_budget_per_key.is_none()
            && self.keys.iter().all(|k| {
                k.max_tasks_in_flight.is_none()
                    && k.daily_task_budget.is_none()
                    && k.daily_point_budget.is_none()
            })
    }

    /// Check every value; the config and [`TaskGuardLayerBuilder::build`] both call this.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.directory().map(drop)
    }

    /// Who each key is and what it may do, resolved once.
    pub(crate) fn directory(&self) -> Result<Directory, InvalidSetting> {
        for (key, cap) in [
            ("guard.max_tasks_in_flight", self.max_tasks_in_flight),
            (
                "guard.max_tasks_in_flight_per_key",
                self.max_tasks_in_flight_per_key,
            ),
        ] {
            check(cap != Some(0), key, || {
                "0 lets no task through; leave it unset for unlimited".into()
            })?;
        }
        check(
            self.budget_window >= Duration::from_secs(1),
            "guard.budget_window",
            || "must be at least 1s".into(),
        )?;
        let mut directory = Directory::default();
        for (index, entry) in self.keys.iter().enumerate() {
            let problem = |what: String| InvalidSetting::new("guard.keys", format!("entry {index}: {what}"));
            if let Some(label) = &entry.label {
                let fine = !label.is_empty()
                    && label.len() <= 64
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
                if !fine {
                    return Err(problem(format!(
                        "label {label:?} must be 1 to 64 letters, digits, '.', '_', '-' or '@'"
                    )));
                }
                if normal_hash(label).is_some() {
                    return Err(problem(format!(
                        "label {label:?} looks like a key hash; pick a name"
                    )));
                }
            }
            if entry.max_tasks_in_flight == Some(0) {
                return Err(problem("max_tasks_in_flight 0 lets no task through".into()));
            }
            let mut hashes = Vec::new();
            for raw in entry.hash.iter().chain(&entry.hashes) {
                let hash = normal_hash(raw).ok_or_else(|| {
                    problem(format!(
                        "{raw:?} is not a key hash (32 hex digits: printf 'Bearer %s' \"$KEY\" | sha256sum | cut -c1-32)"
                    ))
                })?;
                hashes.push(hash);
            }
            let key = match (&entry.label, hashes.as_slice()) {
                (Some(label), _) => label.clone(),
                (None, [one]) => one.clone(),
                (None, []) => return Err(problem("names no key: give it a label or a hash".into())),
                (None, _) => return Err(problem("several hashes need a label to share".into())),
            };
            for hash in hashes {
                if let Some(other) = directory.labels.insert(hash.clone(), key.clone())
                    && other != key
                {
                    return Err(problem(format!(
                        "key {hash} is labelled both {other:?} and {key:?}"
                    )));
                }
            }
            let own = directory.overrides.entry(key).or_default();
            own.in_flight = entry.max_tasks_in_flight.or(own.in_flight);
            own.tasks = entry.daily_task_budget.or(own.tasks);
            own.points = entry.daily_point_budget.or(own.points);
        }
        directory.defaults = TaskLimits {
            in_flight: self.max_tasks_in_flight,
            in_flight_per_key: self.max_tasks_in_flight_per_key,
            tasks: self.daily_task_budget,
            points: self.daily_point_budget,
            tasks_per_key: self.daily_task_budget_per_key,
            points_per_key: self.daily_point_budget_per_key,
            window: self.budget_window,
            unknown_for: Duration::ZERO,
        };
        Ok(directory)
    }
}

/// A key hash as the ledger writes it: 32 lowercase hex digits (a whole SHA-256, 64
/// digits, is cut to its first 32).
fn normal_hash(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let hex = raw.len() == 32 || raw.len() == 64;
    (hex && raw.bytes().all(|b| b.is_ascii_hexdigit())).then(|| raw[..32].to_ascii_lowercase())
}

/// One key's own limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Own {
    in_flight: Option<u32>,
    tasks: Option<u64>,
    points: Option<u64>,
}

/// Labels by key hash, and limits by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directory {
    labels: HashMap<String, String>,
    overrides: HashMap<String, Own>,
    defaults: TaskLimits,
}

impl Directory {
    /// Keys with a per-key budget of their own (`[[guard.keys]]`).
    pub(crate) fn keys_with_budgets(&self) -> impl Iterator<Item = &str> {
        self.overrides
            .iter()
            .filter(|(_, own)| own.tasks.is_some() || own.points.is_some())
            .map(|(key, _)| key.as_str())
    }

    /// The key a hash is counted as: its label, or itself.
    pub(crate) fn key_of(&self, hash: String) -> String {
        match self.labels.get(&hash) {
            Some(label) => label.clone(),
            None => hash,
        }
    }

    /// The limits that apply to `key`.
    pub(crate) fn limits_for(&self, key: &str) -> TaskLimits {
        let mut limits = self.defaults;
        if let Some(own) = self.overrides.get(key) {
            limits.in_flight_per_key = own.in_flight.or(limits.in_flight_per_key);
            limits.tasks_per_key = own.tasks.or(limits.tasks_per_key);
            limits.points_per_key = own.points.or(limits.points_per_key);
        }
        limits
    }
}
