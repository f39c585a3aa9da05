//! What the ledger records of a task: its key, model, status and points, the guard's
//! reservations and the limits they are checked against, and the totals read back.

use std::time::Duration;

use serde::Serialize;

use super::{TaskFormat, WatchState};

/// What a callback or a check reported of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskReport {
    /// Its status, as the upstream wrote it.
    pub status: Option<String>,
    /// Whether that status ends the task.
    pub terminal: bool,
    /// Points CometAPI says the task costs (`point`).
    pub points: Option<i64>,
    /// Points CometAPI gave back (`refund`; failed tasks are refunded).
    pub refunded: Option<i64>,
    /// How far along it is, in percent (`progress`: `0.4` in the official format, `"40%"`
    /// in CometAPI's callbacks and feed).
    pub progress: Option<u8>,
}

impl TaskReport {
    /// `point` and `refund` of a reverse-format callback or feed record (strings of
    /// digits, or numbers), if it has them.
    pub fn read_points(&mut self, fields: &serde_json::Value) {
        let amount = |name: &str| -> Option<i64> {
            match fields.get(name)? {
                serde_json::Value::String(s) => s.trim().parse().ok(),
                serde_json::Value::Number(n) => n.as_i64(),
                _ => None,
            }
            .filter(|n| *n >= 0)
        };
        self.points = amount("point");
        self.refunded = amount("refund");
    }

    /// `progress` of a task answer, callback or feed record, if it has a readable one: a
    /// fraction from 0 to 1, or a percentage written `"40%"`.
    pub fn read_progress(&mut self, fields: &serde_json::Value) {
        let percent = match fields.get("progress") {
            Some(serde_json::Value::Number(n)) => n.as_f64().map(|f| if f <= 1.0 { f * 100.0 } else { f }),
            Some(serde_json::Value::String(s)) => {
                let s = s.trim();
                match s.strip_suffix('%') {
                    Some(percent) => percent.trim().parse::<f64>().ok(),
                    None => s
                        .parse::<f64>()
                        .ok()
                        .map(|f| if f <= 1.0 { f * 100.0 } else { f }),
                }
            }
            _ => None,
        };
        self.progress = percent
            .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
            .map(|p| p.round() as u8);
    }
}

/// A task that has just reached its terminal status on the watch list (reported once,
/// by the replica whose report ended it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The key's label, or its hash when it has none.
    pub key: String,
    /// The model submitted, if the submission named one.
    pub model: Option<String>,
    /// How it ended (see [`StatusClass`]).
    pub status: StatusClass,
    /// Points charged, as last reported.
    pub points: i64,
    /// Points refunded, as last reported.
    pub refunded: i64,
}

/// What a callback changed on the watch list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The task is not on the list.
    NotListed,
    /// Noted; the task goes on (or had already ended).
    Listed,
    /// This callback ended the task.
    Finished(Finished),
}

/// How a task ended, in one vocabulary for both API shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusClass {
    /// `"3"`, `SUCCEEDED`.
    Succeeded,
    /// `"2"`, `FAILED`.
    Failed,
    /// `CANCELLED`.
    Cancelled,
    /// Not finished yet (or reserved and on its way).
    Unfinished,
    /// The submission's outcome is unknown (a timeout after sending).
    Unknown,
}

impl StatusClass {
    /// The class of a record in `state` whose last status is `status`.
    pub fn of(state: WatchState, status: Option<&str>) -> StatusClass {
        match (state, status) {
            (WatchState::Unknown, _) => StatusClass::Unknown,
            (_, Some("3" | "SUCCEEDED")) => StatusClass::Succeeded,
            (_, Some("2" | "FAILED")) => StatusClass::Failed,
            (_, Some("CANCELLED")) => StatusClass::Cancelled,
            // Done without a known end: given up (no key to check it with).
            (WatchState::Done, _) => StatusClass::Unknown,
            _ => StatusClass::Unfinished,
        }
    }

    /// The name in the admin API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Succeeded => "succeeded",
            StatusClass::Failed => "failed",
            StatusClass::Cancelled => "cancelled",
            StatusClass::Unfinished => "unfinished",
            StatusClass::Unknown => "unknown",
        }
    }
}

/// A submission about to be sent, held as a `pending` record so that every replica
/// counts it against the limits until its answer turns it into a task (or it is
/// released).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The record's placeholder id (`pending-...`), replaced by the task id on acceptance.
    pub id: String,
    /// The API shape of the submission.
    pub format: TaskFormat,
    /// Its path.
    pub route: String,
    /// Its key's hash ([`key_hash`](crate::tasks::key_hash)).
    pub key_hash: String,
    /// Its key's label, or the hash when it has none: what budgets and usage count by.
    pub key: String,
    /// The model it names, if any.
    pub model: Option<String>,
    /// What it is estimated to cost, in points, before CometAPI reports the real figure:
    /// counted against the point budgets from the reservation on, and replaced by the
    /// reported `point`/`refund` when they arrive.
    pub points: Option<u64>,
}

/// The limits a reservation is checked against, resolved for its key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskLimits {
    /// Most unfinished tasks in all.
    pub in_flight: Option<u32>,
    /// Most unfinished tasks of this key.
    pub in_flight_per_key: Option<u32>,
    /// Most tasks in all per window.
    pub tasks: Option<u64>,
    /// Most points (charged less refunded) in all per window.
    pub points: Option<u64>,
    /// Most tasks of this key per window.
    pub tasks_per_key: Option<u64>,
    /// Most points of this key per window.
    pub points_per_key: Option<u64>,
    /// The budgets' rolling window (24 h).
    pub window: Duration,
    /// How long a submission whose outcome is unknown counts as in flight.
    pub unknown_for: Duration,
}

impl TaskLimits {
    /// Whether there is nothing to check (a reservation is then not needed).
    pub fn is_unlimited(&self) -> bool {
        self.in_flight.is_none()
            && self.in_flight_per_key.is_none()
            && self.tasks.is_none()
            && self.points.is_none()
            && self.tasks_per_key.is_none()
            && self.points_per_key.is_none()
    }
}

/// Which limit refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `max_tasks_in_flight`.
    InFlight,
    /// `max_tasks_in_flight_per_key`.
    InFlightPerKey,
    /// `daily_task_budget`.
    Tasks,
    /// `daily_point_budget`.
    Points,
    /// `daily_task_budget_per_key`.
    TasksPerKey,
    /// `daily_point_budget_per_key`.
    PointsPerKey,
}

impl Limit {
    /// Its setting's name (`guard.` + this is the config key).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::InFlight => "max_tasks_in_flight",
            Limit::InFlightPerKey => "max_tasks_in_flight_per_key",
            Limit::Tasks => "daily_task_budget",
            Limit::Points => "daily_point_budget",
            Limit::TasksPerKey => "daily_task_budget_per_key",
            Limit::PointsPerKey => "daily_point_budget_per_key",
        }
    }

    /// The name a store writes for it.
    pub fn parse(text: &str) -> Option<Limit> {
        [
            Limit::InFlight,
            Limit::InFlightPerKey,
            Limit::Tasks,
            Limit::Points,
            Limit::TasksPerKey,
            Limit::PointsPerKey,
        ]
        .into_iter()
        .find(|limit| limit.as_str() == text)
    }

    /// Whether it limits tasks in flight (a wait helps) rather than a budget.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Limit::InFlight | Limit::InFlightPerKey)
    }

    /// Whether it counts one key's tasks.
    pub fn is_per_key(self) -> bool {
        matches!(
            self,
            Limit::InFlightPerKey | Limit::TasksPerKey | Limit::PointsPerKey
        )
    }
}

/// How a reservation went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Recorded as `pending`: send the submission.
    Granted,
    /// A limit is reached: `used` of it is used (tasks in flight, tasks, or points).
    Refused {
        /// The limit.
        limit: Limit,
        /// How much of it is used.
        used: i64,
    },
}

/// One entry of what a key spent in a window: when a task was submitted and its points
/// charged less refunded (0 while unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spend {
    /// Unix milliseconds.
    pub submitted_at: i64,
    /// Points charged less refunded.
    pub net_points: i64,
}

/// Ledger totals for one group of tasks (a key and model, a status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// The key's label, or its hash.
    pub key: String,
    /// The model, if known.
    pub model: Option<String>,
    /// How its tasks ended.
    pub status: StatusClass,
    /// How many tasks.
    pub tasks: u64,
    /// Points charged.
    pub points: i64,
    /// Points refunded.
    pub refunded: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_read_as_strings_or_numbers() {
        let mut report = TaskReport::default();
        report.read_points(&serde_json::json!({"point": "320", "refund": 160}));
        assert_eq!((report.points, report.refunded), (Some(320), Some(160)));
        report.read_points(&serde_json::json!({"point": "lots", "refund": -1}));
        assert_eq!((report.points, report.refunded), (None, None));
    }

    #[test]
    fn statuses_of_both_shapes_share_one_vocabulary() {
        assert_eq!(
            StatusClass::of(WatchState::Done, Some("3")),
            StatusClass::Succeeded
        );
        assert_eq!(
            StatusClass::of(WatchState::Done, Some("FAILED")),
            StatusClass::Failed
        );
        assert_eq!(
            StatusClass::of(WatchState::Watching, Some("1")),
            StatusClass::Unfinished
        );
        assert_eq!(
            StatusClass::of(WatchState::Pending, None),
            StatusClass::Unfinished
        );
        assert_eq!(StatusClass::of(WatchState::Unknown, None), StatusClass::Unknown);
        assert_eq!(StatusClass::of(WatchState::Done, None), StatusClass::Unknown);
    }
}
