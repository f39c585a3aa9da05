//! A result row read by column, the same way on every backend, so that each record
//! (a watched task, a delivery, a finished task) is read from its columns in one place.

use bytes::Bytes;

use super::archive::{ArchiveJob, ArchiveState};
use super::journal::{JournalEntry, JournalKind};
use super::ledger::{Finished, StatusClass};
use super::outbox::{Delivery, DeliveryState};
use super::subscribers::{PauseReason, SubscriberReport, SubscriberState, last_hour};
use super::tasks::{TaskFormat, WatchState, WatchedTask};

/// One row of a query's result, by column index. SQLite's and PostgreSQL's rows
/// implement it; their errors stay their own.
pub(crate) trait Columns {
    /// Why a column could not be read as asked.
    type Error;

    /// A text column.
    fn text(&self, at: usize) -> Result<String, Self::Error>;
    /// A text column that may be NULL.
    fn optional_text(&self, at: usize) -> Result<Option<String>, Self::Error>;
    /// A 64-bit integer column (ids, Unix milliseconds, points).
    fn int(&self, at: usize) -> Result<i64, Self::Error>;
    /// A 64-bit integer column that may be NULL.
    fn optional_int(&self, at: usize) -> Result<Option<i64>, Self::Error>;
    /// A small count (attempts, checks); a negative one reads as 0.
    fn count(&self, at: usize) -> Result<u32, Self::Error>;
    /// A boolean column.
    fn flag(&self, at: usize) -> Result<bool, Self::Error>;
    /// A binary column.
    fn bytes(&self, at: usize) -> Result<Vec<u8>, Self::Error>;
}

impl WatchedTask {
    /// A task from a row of the watch list's columns, in their order: id, task_id,
    /// format, route, key_hash, sealed_key, subscriber, state, status, submitted_at,
    /// last_callback_at, next_check_at, checks, recovered, key_label, model, points,
    /// refunded, finished_at, progress.
    pub(crate) fn from_columns<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(WatchedTask {
            id: row.int(0)?,
            task_id: row.text(1)?,
            format: TaskFormat::parse(&row.text(2)?).unwrap_or(TaskFormat::Reverse),
            route: row.text(3)?,
            key_hash: row.text(4)?,
            sealed_key: row.optional_text(5)?,
            subscriber: row.optional_text(6)?,
            state: WatchState::parse(&row.text(7)?).unwrap_or(WatchState::Unknown),
            status: row.optional_text(8)?,
            submitted_at: row.int(9)?,
            last_callback_at: row.optional_int(10)?,
            next_check_at: row.int(11)?,
            checks: row.count(12)?,
            recovered: row.flag(13)?,
            key: row.text(14)?,
            model: row.optional_text(15)?,
            points: row.optional_int(16)?,
            refunded: row.optional_int(17)?,
            finished_at: row.optional_int(18)?,
            progress: row
                .optional_int(19)?
                .and_then(|p| u8::try_from(p.clamp(0, 100)).ok()),
        })
    }
}

impl JournalEntry {
    /// An entry from the columns at, last_at, repeats, kind, status, progress, detail.
    pub(crate) fn from_columns<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(JournalEntry {
            at: row.int(0)?,
            last_at: row.int(1)?,
            repeats: row.count(2)?,
            kind: JournalKind::parse(&row.text(3)?).unwrap_or(JournalKind::Check),
            status: row.optional_text(4)?,
            progress: row
                .optional_int(5)?
                .and_then(|p| u8::try_from(p.clamp(0, 100)).ok()),
            detail: row.optional_text(6)?,
        })
    }
}

impl Finished {
    /// A task that just ended, from the columns key_label, model, state, status, points
    /// (0 when unknown), refunded (likewise).
    pub(crate) fn from_columns<R: Columns>(row: &R) -> Result<Self, R::Error> {
        let state = WatchState::parse(&row.text(2)?).unwrap_or(WatchState::Done);
        Ok(Finished {
            key: row.text(0)?,
            model: row.optional_text(1)?,
            status: StatusClass::of(state, row.optional_text(3)?.as_deref()),
            points: row.int(4)?,
            refunded: row.int(5)?,
        })
    }
}

impl Delivery {
    /// A delivery from the outbox's columns, in their order: id, webhook_id, task_key,
    /// status, target_url, body, state, attempts, next_attempt_at, last_error,
    /// created_at, delivered_at, trace, subscriber.
    pub(crate) fn from_columns<R: Columns>(row: &R) -> Result<Self, R::Error> {
        let target_url = row.text(4)?;
        Ok(Delivery {
            id: row.int(0)?,
            webhook_id: row.text(1)?,
            task_key: row.text(2)?,
            status: row.optional_text(3)?,
            subscriber: row
                .optional_text(13)?
                .unwrap_or_else(|| super::subscriber_id(&target_url)),
            probe: false,
            target_url,
            body: Bytes::from(row.bytes(5)?),
            state: DeliveryState::parse(&row.text(6)?).unwrap_or(DeliveryState::Dead),
            attempts: row.count(7)?,
            next_attempt_at: row.int(8)?,
            last_error: row.optional_text(9)?,
            created_at: row.int(10)?,
            delivered_at: row.optional_int(11)?,
            trace: row.optional_text(12)?,
        })
    }
}

impl SubscriberReport {
    /// A subscriber from its record's columns, in their order: id, url, state, reason,
    /// paused_at, next_probe_at, probe_until, failures, last_success_at, last_error,
    /// last_error_at, window_start, window_attempts, window_failures, prev_attempts,
    /// prev_failures, then its pending, in-flight and dead counts; `now` decides whether
    /// its probe is in flight and what the last hour is.
    pub(crate) fn from_columns<R: Columns>(row: &R, now: i64) -> Result<Self, R::Error> {
        let paused = row.text(2)? == "paused";
        let probing = paused && row.optional_int(6)?.is_some_and(|until| until > now);
        let counts = [row.int(12)?, row.int(13)?, row.int(14)?, row.int(15)?];
        let (attempts_last_hour, failure_rate) = last_hour(now, row.int(11)?, counts);
        let count = |at| row.int(at).map(|n| u64::try_from(n).unwrap_or(0));
        Ok(SubscriberReport {
            id: row.text(0)?,
            url: row.text(1)?,
            state: match (paused, probing) {
                (false, _) => SubscriberState::Active,
                (true, false) => SubscriberState::Paused,
                (true, true) => SubscriberState::Probing,
            },
            paused_reason: row.optional_text(3)?.as_deref().and_then(PauseReason::parse),
            paused_at: row.optional_int(4)?,
            next_probe_at: row.optional_int(5)?,
            consecutive_failures: row.count(7)?,
            last_success_at: row.optional_int(8)?,
            last_error: row.optional_text(9)?,
            last_error_at: row.optional_int(10)?,
            attempts_last_hour,
            failure_rate,
            backlog: count(16)?,
            in_flight: count(17)?,
            dead: count(18)?,
        })
    }
}

impl ArchiveJob {
    /// A job from the archive queue's columns, in their order: id, delivery_id, task_key,
    /// nonce, body, state, holding, attempts, deadline_at, next_attempt_at, last_error,
    /// result, created_at, trace.
    pub(crate) fn from_columns<R: Columns>(row: &R) -> Result<Self, R::Error> {
        Ok(ArchiveJob {
            id: row.int(0)?,
            delivery_id: row.int(1)?,
            task_key: row.text(2)?,
            nonce: row.text(3)?,
            body: Bytes::from(row.bytes(4)?),
            state: ArchiveState::parse(&row.text(5)?).unwrap_or(ArchiveState::Failed),
            holding: row.flag(6)?,
            attempts: row.count(7)?,
            deadline_at: row.int(8)?,
            next_attempt_at: row.int(9)?,
            last_error: row.optional_text(10)?,
            result: row.optional_text(11)?,
            created_at: row.int(12)?,
            trace: row.optional_text(13)?,
        })
    }
}
