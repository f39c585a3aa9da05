//! Archive jobs: the durable record of a succeeded task's outputs still to be copied, kept
//! beside the delivery it holds back.
//!
//! A webhook enqueued with [`NewDelivery::hold_until`](super::NewDelivery::hold_until) is
//! stored as [`DeliveryState::Archiving`](super::DeliveryState::Archiving) (no delivery
//! worker claims it) together with an [`ArchiveJob`], in one transaction. Archive workers
//! (several replicas' included) claim due jobs with a lease, as delivery workers claim
//! deliveries, so each job is worked by one of them at a time and one that dies mid-copy
//! gives it back when its lease runs out. A job ends by putting its delivery back in line,
//! with the body rewritten to point at the copies (or to say why there are none); a job
//! that finishes after its delivery was let go at the deadline adds one more delivery for
//! the task, carrying the archived links.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::StoreFuture;

/// Where an archive job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveState {
    /// Still to be copied (or being copied).
    Open,
    /// Every output is copied.
    Archived,
    /// Given up: the reason is its last error.
    Failed,
}

impl ArchiveState {
    /// The name used in the store and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveState::Open => "open",
            ArchiveState::Archived => "archived",
            ArchiveState::Failed => "failed",
        }
    }

    /// Parse a state name.
    pub fn parse(text: &str) -> Option<ArchiveState> {
        Some(match text {
            "open" => ArchiveState::Open,
            "archived" => ArchiveState::Archived,
            "failed" => ArchiveState::Failed,
            _ => return None,
        })
    }
}

/// One task's outputs to copy, and the delivery waiting for them.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveJob {
    /// Row id.
    pub id: i64,
    /// The delivery it holds back.
    pub delivery_id: i64,
    /// The delivery's task key.
    pub task_key: String,
    /// Random, made when the job was: the unguessable part of its object keys, so a copy
    /// made again (after a crash) lands on the same keys.
    #[serde(skip)]
    pub nonce: String,
    /// The webhook as received, naming the outputs.
    #[serde(skip)]
    pub body: Bytes,
    /// Its state.
    pub state: ArchiveState,
    /// Whether its delivery still waits for it (the deadline has not let it go).
    pub holding: bool,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the held delivery goes out without the copies (Unix milliseconds).
    pub deadline_at: i64,
    /// When the next attempt is due (Unix milliseconds).
    pub next_attempt_at: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// What was copied, as JSON (the webhook's `runway_proxy_archive` entries), once
    /// archived.
    #[serde(skip)]
    pub result: Option<String>,
    /// When it was made (Unix milliseconds): the date in its object keys.
    pub created_at: i64,
    /// The `traceparent` of the task's submission, if known.
    #[serde(skip)]
    pub trace: Option<String>,
}

/// How an attempt at a claimed job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveFinish {
    /// Every output is copied; `body` is the webhook pointing at the copies, `result`
    /// what was copied (JSON).
    Archived {
        /// The rewritten webhook.
        body: Bytes,
        /// The copies, as JSON.
        result: String,
    },
    /// Try again at this time (Unix milliseconds).
    RetryAt {
        /// When.
        at: i64,
        /// Why this attempt failed.
        error: String,
    },
    /// Give up; `body` is the webhook saying so (the original URLs kept).
    Failed {
        /// Why.
        error: String,
        /// The webhook the subscriber gets, if the delivery still waits.
        body: Bytes,
    },
}

/// What finishing a job put in line for delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// Nothing new (the job goes on, or its delivery had gone out already and there is
    /// nothing more to say).
    Nothing,
    /// The held delivery, with its body rewritten.
    Held,
    /// A new delivery announcing the copies (the held one had gone out at the deadline).
    Announcement,
}

/// How many archive jobs are open, and how many of those hold a delivery back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveBacklog {
    /// Open jobs.
    pub open: u64,
    /// Open jobs whose delivery still waits.
    pub holding: u64,
}

/// The durable queue of archive jobs; implemented by the stores that implement
/// [`Outbox`](super::Outbox), in the same database.
pub trait ArchiveJobs: Send + Sync + 'static {
    /// Claim up to `max` due open jobs for `owner`, leased for `lease`.
    fn claim_archive(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<ArchiveJob>>;

    /// Let a claimed job's held delivery go now with `body` (its deadline has passed);
    /// the job stays claimed and open. `false` when it no longer held one.
    fn release_held(&self, job: i64, owner: String, body: Bytes) -> StoreFuture<'_, bool>;

    /// Record how an attempt at a claimed job ended, and put what it made in line.
    fn finish_archive(&self, job: i64, owner: String, finish: ArchiveFinish) -> StoreFuture<'_, Released>;

    /// The newest job of a task (by its delivery's task key), if any.
    fn archive_of(&self, task_key: String) -> StoreFuture<'_, Option<ArchiveJob>>;

    /// How many jobs are open.
    fn archive_backlog(&self) -> StoreFuture<'_, ArchiveBacklog>;

    /// The archive is off: every held delivery goes out as it came, and every open job
    /// is given up with `reason`. How many deliveries were let go.
    fn release_all_held(&self, reason: String) -> StoreFuture<'_, u64>;
}

/// The dedup key of the announcement a late archive makes for `job` (made once).
pub(crate) fn announcement_dedup(job: i64) -> String {
    format!("archived:{job}")
}

/// Appended to the held delivery's Standard Webhooks id to make the announcement's.
pub(crate) const ANNOUNCEMENT_SUFFIX: &str = "_archived";

/// A fresh nonce for a new job's object keys: 16 random hex digits.
pub(crate) fn nonce() -> String {
    let random: [u8; 8] = rand::random();
    random.iter().map(|b| format!("{b:02x}")).collect()
}
