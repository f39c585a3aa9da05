//! The watch list: every task the proxy submitted, until its final result has been
//! relayed, in the same durable store as the outbox.
//!
//! A [`TaskStore`] keeps one record per accepted task: which API format and route made
//! it, a hash of the API key that paid for it (and the key itself, sealed with the
//! callback token keys, so the task can still be polled after a restart), the subscriber
//! its events go to, the last status known, and when it is next to be checked. Watchers
//! (several replicas' included) *claim* due records with a lease, as delivery workers
//! claim deliveries, so each task is checked by one of them at a time, and a watcher
//! that dies mid-check gives its tasks back when the lease runs out.
//!
//! Implemented by [`SqliteOutbox`](crate::store::SqliteOutbox) and, with the `postgres`
//! feature, `PostgresOutbox` (the [`store`](crate::store) floor).

mod ledger;
mod record;
mod watcher;

use std::time::Duration;

pub use crate::context::ResponseFuture;
pub use ledger::{Totals, Usage, UsageReport, key_hash};
pub use record::{
    Pending, RecordTasks, RecordTasksLayer, Recorded, Recorder, SEALED_KEY_PURPOSE, Submission,
};
pub use watcher::{CallbackCheck, Confirmation, TaskReader, TaskWatcher, WatchMetrics};

use crate::settings::{InvalidSetting, check, longer_than_zero, parse, settings, show};
// The records live on the storage floor; these are their names where the watch list's
// users have always found them.
pub use crate::store::{
    Checked, Finished, JournalEntry, JournalKind, Limit, NewTask, Reservation, Reserved, Seen, Spend,
    StatusClass, TaskCounts, TaskFilter, TaskFormat, TaskLimits, TaskReport, TaskStore, UsageRow, WatchState,
    WatchedTask,
};

settings! {
    /// How accepted tasks are watched (`[watch]` in the config file).
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct WatchSettings in watch {
        /// How often an official-format task is polled (`GET /runwayml/v1/tasks/{id}`), with
        /// ±20% jitter, and a reverse-format one's feed read once it is overdue (default 5 s,
        /// the least Runway advises).
        pub poll_interval: Duration = Duration::from_secs(5),
        /// How long a reverse-format task may go without its terminal callback, after its
        /// submission or its last callback, before the feed is read for it (default 15 min).
        pub recover_after: Duration = Duration::from_secs(15 * 60),
        /// Where the events of official-format submissions that name no subscriber (with
        /// `x-runway-proxy-callback-url`) go; `None`: their events are not relayed (they are still followed to their end, for the ledger and the task guard).
        pub official_callback_url: Option<String> = None,
        /// Relay a reverse-format task's final callback only once a feed read agrees with it
        /// (CometAPI's callbacks are not signed; default off: it costs a read per task).
        pub confirm_callbacks: bool = false,
        /// How long the ledger keeps a finished task's record, for `/-/usage` and the
        /// budgets (default 90 days; at least the guard's `budget_window`).
        pub ledger_retention: Duration = Duration::from_secs(90 * 86_400),
    }
    rows {
        poll_interval: restart, under Callbacks,
            env: "RUNWAY_PROXY_TASK_POLL_INTERVAL",
            flag: "task-poll-interval",
            doc: "How often an official-format task is polled for its status, and an overdue reverse-format one read from the feed (with jitter).",
            parse: parse::positive_duration, show: show::duration;
        recover_after: restart, under Callbacks,
            env: "RUNWAY_PROXY_RECOVER_AFTER",
            flag: "recover-after",
            doc: "How long a reverse-format task may go without its final callback before its result is read from the feed.",
            parse: parse::positive_duration, show: show::duration;
        official_callback_url: restart, under Callbacks,
            env: "RUNWAY_PROXY_OFFICIAL_CALLBACK_URL",
            flag: "official-callback-url",
            doc: "Subscriber of official-format tasks whose submission names none with x-runway-proxy-callback-url (none: their events are not relayed; they are still followed to their end for the ledger).",
            parse: parse::optional_text, show: show::optional_text;
        confirm_callbacks: restart, under Callbacks,
            env: "RUNWAY_PROXY_CONFIRM_CALLBACKS",
            flag: "confirm-callbacks",
            doc: "Relay a reverse-format task's final callback only once a feed read agrees (callbacks are not signed).",
            parse: parse::boolean, show: show::plain;
        ledger_retention: restart, under Callbacks,
            env: "RUNWAY_PROXY_LEDGER_RETENTION",
            flag: "ledger-retention",
            doc: "How long the ledger keeps a finished task's record (for /-/usage and the budgets; at least guard.budget_window).",
            parse: parse::positive_duration, show: show::duration;
    }
}

impl WatchSettings {
    /// Check every value (the subscriber URL is checked against the callback policy
    /// where the watcher is built).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(
            self.poll_interval >= Duration::from_millis(100),
            "watch.poll_interval",
            || "must be at least 100ms (Runway asks for 5s or more)".into(),
        )?;
        longer_than_zero(self.recover_after, "watch.recover_after")?;
        check(
            self.ledger_retention >= Duration::from_secs(60),
            "watch.ledger_retention",
            || "must be at least 1m".into(),
        )
    }
}
