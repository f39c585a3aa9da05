//! A task's journal: what happened to it after its submission (each callback, each check,
//! each failed delivery attempt of its events), for the console's task page and
//! `GET /-/tasks/{id}`.
//!
//! Entries are written by the statements that record the event itself (one more insert in
//! the same transaction), never on the request path: the submission is the task's own
//! record, and a delivery that succeeds is its own (`delivered_at`), so the relay's
//! everyday path writes nothing more. A check that finds what the one before it found (a task polled every 5 s for
//! ten minutes) bumps that entry's `repeats` instead of adding one, so a long task keeps a
//! journal of its changes, not of its polls. Entries older than [`JOURNAL_RETENTION`] are
//! pruned with the ledger.

use std::time::Duration;

use serde::Serialize;

/// How long journal entries are kept (the ledger keeps the task's totals far longer).
pub const JOURNAL_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Most entries one task's journal answers with (the newest).
pub const JOURNAL_PAGE: usize = 500;

/// What a journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    /// A callback from the upstream arrived for the task.
    Callback,
    /// The watcher checked the task (a poll of the official API, a read of the feed).
    Check,
    /// An attempt to deliver one of the task's events to its subscriber that failed (one
    /// that succeeded is on the delivery: [`Outbox::deliveries_of_task`](super::Outbox::deliveries_of_task)).
    Delivery,
    /// The task was cancelled through the proxy.
    Cancelled,
}

impl JournalKind {
    /// Every kind.
    pub const ALL: [JournalKind; 4] = [
        JournalKind::Callback,
        JournalKind::Check,
        JournalKind::Delivery,
        JournalKind::Cancelled,
    ];

    /// The stored (and serialized) name.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Callback => "callback",
            JournalKind::Check => "check",
            JournalKind::Delivery => "delivery",
            JournalKind::Cancelled => "cancelled",
        }
    }

    /// The kind a stored name names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// One entry of a task's journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    /// When it happened (Unix milliseconds); the first of its repeats.
    pub at: i64,
    /// When it last happened again (the same as `at` unless `repeats > 1`).
    pub last_at: i64,
    /// How many times it happened in a row, alike (checks that found the same thing).
    pub repeats: u32,
    /// What happened.
    pub kind: JournalKind,
    /// The task's status it reported (a callback's, a check's), or the status of the event
    /// a delivery carried.
    pub status: Option<String>,
    /// The task's progress it reported, in percent.
    pub progress: Option<u8>,
    /// What came of it, in words: why a check found nothing, how a delivery attempt ended.
    pub detail: Option<String>,
}

/// How a delivery attempt ended, as its journal entry says it.
pub(crate) fn delivery_detail(completion: &super::Completion, attempt_spent: bool) -> String {
    match completion {
        super::Completion::Delivered => "delivered".to_owned(),
        super::Completion::RetryAt { error, .. } if attempt_spent => format!("failed, will retry: {error}"),
        super::Completion::RetryAt { error, .. } => format!("probe failed (attempt not spent): {error}"),
        super::Completion::Dead { error } => format!("dead letter: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in JournalKind::ALL {
            assert_eq!(JournalKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JournalKind::parse("poll"), None);
    }
}
