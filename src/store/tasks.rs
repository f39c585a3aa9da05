//! The watch list's records and the [`TaskStore`] that keeps them (with the ledger, in
//! the same database).

use std::time::Duration;

use serde::Serialize;

use super::StoreFuture;
use super::journal::JournalEntry;
use super::ledger::{Finished, Reservation, Reserved, Seen, Spend, TaskLimits, TaskReport, UsageRow};

/// Which of CometAPI's two API shapes a task was submitted through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskFormat {
    /// `POST /runway/pro/*`: `{"code", "msg", "data": {"task_id"}}`, results by callback
    /// and `POST /runway/feed`.
    Reverse,
    /// `POST /runwayml/v1/*`: the official shape, results by `GET /runwayml/v1/tasks/{id}`
    /// only.
    Official,
}

impl TaskFormat {
    /// The name used in the store and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskFormat::Reverse => "reverse",
            TaskFormat::Official => "official",
        }
    }

    /// Parse a format name.
    pub fn parse(text: &str) -> Option<TaskFormat> {
        match text {
            "reverse" => Some(TaskFormat::Reverse),
            "official" => Some(TaskFormat::Official),
            _ => None,
        }
    }
}

/// Where a watched task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    /// Reserved by the task guard: the submission is on its way upstream.
    Pending,
    /// Not finished as far as the proxy knows: it is checked when due.
    Watching,
    /// Its final status has been relayed (or stored to be).
    Done,
    /// The submission's outcome is unknown (a timeout after sending): there is no task id
    /// to check, so it is kept for the record only.
    Unknown,
}

impl WatchState {
    /// The name used in the store and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchState::Pending => "pending",
            WatchState::Watching => "watching",
            WatchState::Done => "done",
            WatchState::Unknown => "unknown",
        }
    }

    /// Parse a state name.
    pub fn parse(text: &str) -> Option<WatchState> {
        match text {
            "pending" => Some(WatchState::Pending),
            "watching" => Some(WatchState::Watching),
            "done" => Some(WatchState::Done),
            "unknown" => Some(WatchState::Unknown),
            _ => None,
        }
    }
}

/// An accepted submission, to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask {
    /// CometAPI's task id (for an outcome-unknown submission, an id of the proxy's own).
    pub task_id: String,
    /// The API shape it was submitted in.
    pub format: TaskFormat,
    /// The submission's path (`/runway/pro/generate`, `/runwayml/v1/image_to_video`).
    pub route: String,
    /// Hex SHA-256 prefix of the bearer token that submitted it (never the token).
    pub key_hash: String,
    /// The key's label, or its hash when it has none (what usage is counted by).
    pub key: String,
    /// The model the submission named, if any.
    pub model: Option<String>,
    /// The task guard's reservation for this submission, which the task replaces.
    pub reservation: Option<String>,
    /// The bearer token, sealed with the token keys ([`Keyring::seal`](crate::callback::Keyring::seal)),
    /// to check the task with after a restart.
    pub sealed_key: Option<String>,
    /// Where its events go, if anywhere.
    pub subscriber: Option<String>,
    /// Whether the submission's outcome is unknown (see [`WatchState::Unknown`]).
    pub outcome_unknown: bool,
    /// The submission's span (`traceparent`), when traces are exported: the callback's
    /// receipt and every delivery attempt link to it.
    pub trace: Option<String>,
    /// The id of the callback route token the submission was given
    /// ([`token_id`](crate::callback::token_id)): recorded with the task id, a webhook
    /// through that token naming another task is refused.
    pub callback_token: Option<i64>,
}

/// A watched task and what is known of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchedTask {
    /// Row id (the admin API pages by it).
    pub id: i64,
    /// CometAPI's task id.
    pub task_id: String,
    /// The API shape it was submitted in.
    pub format: TaskFormat,
    /// The submission's path.
    pub route: String,
    /// Hex SHA-256 prefix of the bearer token that submitted it.
    pub key_hash: String,
    /// The key's label, or its hash.
    pub key: String,
    /// The model the submission named.
    pub model: Option<String>,
    /// The bearer token, sealed.
    #[serde(skip)]
    pub sealed_key: Option<String>,
    /// Where its events go.
    #[serde(skip)]
    pub subscriber: Option<String>,
    /// Where it is.
    pub state: WatchState,
    /// The last status known (from a callback or a check), as the upstream wrote it.
    pub status: Option<String>,
    /// When it was submitted (Unix milliseconds).
    pub submitted_at: i64,
    /// When its last callback arrived (Unix milliseconds).
    pub last_callback_at: Option<i64>,
    /// When it is next due to be checked (Unix milliseconds).
    pub next_check_at: i64,
    /// Checks made so far.
    pub checks: u32,
    /// Whether its final status was recovered by a check rather than called back.
    pub recovered: bool,
    /// Points charged, as CometAPI last reported them.
    pub points: Option<i64>,
    /// Points refunded, as CometAPI last reported them.
    pub refunded: Option<i64>,
    /// When its terminal status was seen (Unix milliseconds).
    pub finished_at: Option<i64>,
    /// How far along it was last reported, in percent.
    pub progress: Option<u8>,
}

/// Which tasks [`TaskStore::list_tasks`] lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskFilter {
    /// Only tasks in this state (every state: `None`).
    pub state: Option<WatchState>,
    /// Only tasks of this key: its label or its hash (every key: `None`).
    pub key: Option<String>,
}

impl TaskFilter {
    /// Only tasks of `key` (its label or hash).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

impl From<Option<WatchState>> for TaskFilter {
    /// Tasks in this state (every state: `None`), of every key.
    fn from(state: Option<WatchState>) -> Self {
        TaskFilter { state, key: None }
    }
}

/// How many tasks the watch list holds in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TaskCounts {
    /// Reserved: submissions on their way.
    pub pending: u64,
    /// Being watched.
    pub watching: u64,
    /// Final result relayed.
    pub done: u64,
    /// Outcome unknown.
    pub unknown: u64,
}

/// How a check of a claimed task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The status the check found, if it found one.
    pub status: Option<String>,
    /// The task is final and its last event is stored: stop watching it.
    pub done: bool,
    /// Its final event was recovered by this check (not called back).
    pub recovered: bool,
    /// Otherwise, check again after this long.
    pub again_after: Duration,
    /// Points charged, if the check read them.
    pub points: Option<i64>,
    /// Points refunded, if the check read them.
    pub refunded: Option<i64>,
    /// Its progress, if the check read it (percent).
    pub progress: Option<u8>,
    /// Why the check found no status (it failed, or the task is not known upstream yet),
    /// for the task's journal.
    pub note: Option<String>,
}

/// The watch list's store. See the module docs.
pub trait TaskStore: Send + Sync + 'static {
    /// Record an accepted submission, first due `check_after` from now: in place of its
    /// reservation when it has one. Recording a task id twice keeps the first record.
    fn record(&self, task: NewTask, check_after: Duration) -> StoreFuture<'_, ()>;

    /// A callback for `task_id` arrived with `report`: remember its status and points,
    /// and push the next check back to `check_after` from now; a terminal status ends
    /// the watch.
    fn callback_seen(
        &self,
        task_id: String,
        report: TaskReport,
        check_after: Duration,
    ) -> StoreFuture<'_, Seen>;

    /// Claim up to `max` watched tasks that are due, for `owner`, leased for `lease`.
    fn claim_due(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<WatchedTask>>;

    /// Record how `owner`'s check of a claimed task ended, and give the claim back. A
    /// claim whose lease has passed to another owner is not touched. The task, when this
    /// check ended it.
    fn checked(&self, task_id: String, owner: String, checked: Checked) -> StoreFuture<'_, Option<Finished>>;

    /// Task `task_id` was cancelled (`DELETE /v1/tasks/{id}` answered 2xx): it ends now,
    /// status `CANCELLED`, whoever holds it. The task and what it ended as, unless it had
    /// ended already (or is not on the list).
    fn cancelled(&self, task_id: String) -> StoreFuture<'_, Option<(WatchedTask, Finished)>>;

    /// How many tasks are in each state (the watcher publishes it as
    /// `runway_proxy_tasks{state}`).
    fn count_tasks(&self) -> StoreFuture<'_, TaskCounts>;

    /// The record of `task_id`, if it is on the list.
    fn task(&self, task_id: String) -> StoreFuture<'_, Option<WatchedTask>>;

    /// The `traceparent` of task `task_id`'s submission, if one was recorded.
    fn trace_of(&self, task_id: String) -> StoreFuture<'_, Option<String>>;

    /// Tasks that pass `filter` with a row id above `after`, oldest first, at most `limit`.
    fn list_tasks(&self, filter: TaskFilter, after: i64, limit: usize) -> StoreFuture<'_, Vec<WatchedTask>>;

    /// Task `task_id`'s journal, oldest first: its newest [`JOURNAL_PAGE`](super::JOURNAL_PAGE) entries.
    fn journal(&self, task_id: String) -> StoreFuture<'_, Vec<JournalEntry>>;

    /// Check `limits` and, when none is reached, record `reservation` as `pending`, in
    /// one step no other reservation (of any replica) interleaves with. Tasks in flight
    /// are those `pending` or `watching`, and those whose outcome is unknown for
    /// `limits.unknown_for` after submission; a budget counts every task submitted in the
    /// last `limits.window`, and its points charged less refunded.
    fn reserve(&self, reservation: Reservation, limits: TaskLimits) -> StoreFuture<'_, Reserved>;

    /// Drop a reservation whose submission was not accepted (nothing is charged for it).
    /// A reservation already turned into a task is not touched.
    fn cancel_reservation(&self, reservation: String) -> StoreFuture<'_, ()>;

    /// What `key` (every key: `None`) spent since `since` (Unix milliseconds): one entry
    /// per task, oldest first (in submission order).
    fn spend(&self, key: Option<String>, since: i64) -> StoreFuture<'_, Vec<Spend>>;

    /// Ledger totals of tasks submitted in `[from, to)` (Unix milliseconds), of `key` (a
    /// label or a key hash; every key: `None`), by key, model and how they ended.
    /// Reservations not yet answered are not tasks and are left out.
    fn usage(&self, key: Option<String>, from: i64, to: i64) -> StoreFuture<'_, Vec<UsageRow>>;

    /// Forget finished tasks (and stale reservations) submitted before `before` (Unix
    /// milliseconds); how many were forgotten.
    fn prune(&self, before: i64) -> StoreFuture<'_, u64>;
}

impl std::fmt::Debug for dyn TaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskStore")
    }
}
