//! The durable store of webhooks waiting to be relayed: the [`Outbox`] trait.
//!
//! The embedded default is [`SqliteOutbox`](super::SqliteOutbox); replicas share a
//! [`PostgresOutbox`](super::PostgresOutbox) (feature `postgres`). It is built for
//! several concurrent delivery workers: a worker *claims* deliveries with a lease, and a
//! claim whose lease runs out (its worker crashed) can be claimed again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;

use super::subscribers::{Breaker, Fairness, ReplayFilter, Signal, SubscriberReport, Transition};
use super::{Error, StoreFuture};

/// A webhook to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// The Standard Webhooks message id: stable for one (task, status, update time).
    pub webhook_id: String,
    /// What makes two webhooks the same one (stored once).
    pub dedup_key: String,
    /// Which task it belongs to: one task's webhooks are delivered one at a time, in order.
    pub task_key: String,
    /// The task status it reports, if the body has one.
    pub status: Option<String>,
    /// Whether that status is terminal (success or failure).
    pub terminal: bool,
    /// The subscriber URL.
    pub target_url: String,
    /// The body, exactly as received.
    pub body: Bytes,
    /// The `traceparent` of the task's submission, when traces are exported: each
    /// delivery attempt's span links to it.
    pub trace: Option<String>,
    /// Hold the delivery back until its outputs are archived, at most until this time
    /// (Unix milliseconds): it is stored as [`DeliveryState::Archiving`] with an
    /// [`ArchiveJob`](super::ArchiveJob) beside it. `None`: deliver as it is.
    pub hold_until: Option<i64>,
    /// The id of the callback route token it came through, if it came through one: the
    /// token is bound to the first task id recorded for it (at submission, or by its
    /// first webhook), and a webhook naming another task is refused.
    pub token: Option<i64>,
    /// The task id the body names, if it names one.
    pub task_id: Option<String>,
}

/// What happened to an enqueued webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored, to be delivered.
    Stored(i64),
    /// The same webhook was stored before (this id): nothing new to deliver.
    Duplicate(i64),
    /// Stored, but the task's terminal status is already queued or delivered, so this older
    /// status will not be delivered after it.
    Superseded(i64),
    /// Not stored: its token is bound to another task (or it names no task and its token
    /// is bound to one).
    Refused,
}

/// Where a delivery is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Claimed by a worker, being sent.
    InFlight,
    /// The subscriber answered 2xx.
    Delivered,
    /// Out of attempts (or the subscriber answered 410): a dead letter.
    Dead,
    /// An older status of a task whose terminal status came first: not delivered.
    Superseded,
    /// Held back while the task's outputs are copied to the archive.
    Archiving,
}

impl DeliveryState {
    /// The name used in the store and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::InFlight => "in_flight",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Superseded => "superseded",
            DeliveryState::Archiving => "archiving",
        }
    }

    /// Parse a state name.
    pub fn parse(text: &str) -> Option<DeliveryState> {
        Some(match text {
            "pending" => DeliveryState::Pending,
            "in_flight" => DeliveryState::InFlight,
            "delivered" => DeliveryState::Delivered,
            "dead" => DeliveryState::Dead,
            "superseded" => DeliveryState::Superseded,
            "archiving" => DeliveryState::Archiving,
            _ => return None,
        })
    }
}

/// A stored webhook and its delivery record.
#[derive(Clone, Debug, Serialize)]
pub struct Delivery {
    /// Row id.
    pub id: i64,
    /// The Standard Webhooks message id.
    pub webhook_id: String,
    /// The task it belongs to.
    pub task_key: String,
    /// The status it reports.
    pub status: Option<String>,
    /// The subscriber URL.
    pub target_url: String,
    /// The subscriber's id ([`subscriber_id`](super::subscriber_id) of `target_url`).
    pub subscriber: String,
    /// Whether this claim is its paused subscriber's probe.
    pub probe: bool,
    /// The body, exactly as received.
    #[serde(skip)]
    pub body: Bytes,
    /// Its state.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix milliseconds).
    pub next_attempt_at: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was stored (Unix milliseconds).
    pub created_at: i64,
    /// When it was delivered (Unix milliseconds).
    pub delivered_at: Option<i64>,
    /// The `traceparent` of the task's submission, if known.
    #[serde(skip)]
    pub trace: Option<String>,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The subscriber took it.
    Delivered,
    /// Try again at this time (Unix milliseconds).
    RetryAt {
        /// When.
        at: i64,
        /// Why this attempt failed.
        error: String,
    },
    /// Give up: a dead letter.
    Dead {
        /// Why.
        error: String,
    },
}

/// How many deliveries still need attention. (Delivered and superseded ones are left out:
/// they only grow, and counting them would cost more with every webhook ever relayed.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Depth {
    /// Pending.
    pub pending: u64,
    /// In flight.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
}

/// What an attempt said about its subscriber, and the breaker's settings to judge it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// What the attempt said.
    pub signal: Signal,
    /// When the breaker opens, and how often it probes.
    pub breaker: Breaker,
}

impl Health {
    /// What `completion` alone says: 2xx is healthy, anything else tells nothing (the
    /// delivery workers say more: see [`Signal`]).
    pub fn of(completion: &Completion) -> Health {
        Health {
            signal: match completion {
                Completion::Delivered => Signal::Healthy,
                _ => Signal::Neutral,
            },
            breaker: Breaker {
                pause_after: u32::MAX,
                probe_interval: Duration::from_secs(60),
            },
        }
    }
}

/// A durable store of webhooks to relay. See the module docs.
pub trait Outbox: Send + Sync + 'static {
    /// Store a webhook durably. When this resolves `Ok`, it survives a crash.
    fn enqueue(&self, delivery: NewDelivery) -> StoreFuture<'_, Enqueued>;

    /// Claim up to `max` due deliveries for `owner`, leased for `lease`, sharing them
    /// among subscribers by `fairness`: a subscriber gets at most its cap in flight
    /// (counting every owner's live claims) and its rate, free slots go round-robin to
    /// the subscribers least recently served, and a paused subscriber's deliveries wait
    /// (but for one probe per interval, marked [`Delivery::probe`]). At most one delivery
    /// per task is in flight at a time, and a task's deliveries go in order.
    fn claim_within(
        &self,
        owner: String,
        max: usize,
        lease: Duration,
        fairness: Fairness,
    ) -> StoreFuture<'_, Vec<Delivery>>;

    /// [`claim_within`](Outbox::claim_within) without a per-subscriber cap or rate.
    fn claim(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<Delivery>> {
        self.claim_within(owner, max, lease, Fairness::UNLIMITED)
    }

    /// Record how an attempt of a claimed delivery ended, and what it said of its
    /// subscriber's `health`: returns whether that paused or resumed the subscriber. A
    /// probe that fails leaves its delivery waiting with its attempts unspent.
    /// `subscriber` is the delivery's [`Delivery::subscriber`] (the store looks it up
    /// when `None`).
    fn finish_attempt(
        &self,
        id: i64,
        owner: String,
        subscriber: Option<String>,
        completion: Completion,
        health: Health,
    ) -> StoreFuture<'_, Transition>;

    /// [`finish_attempt`](Outbox::finish_attempt), judging the subscriber by `completion` alone.
    fn complete(&self, id: i64, owner: String, completion: Completion) -> StoreFuture<'_, ()> {
        let health = Health::of(&completion);
        let finished = self.finish_attempt(id, owner, None, completion, health);
        Box::pin(async move { finished.await.map(drop) })
    }

    /// Give a claimed delivery back unattempted (on shutdown).
    fn release(&self, id: i64, owner: String) -> StoreFuture<'_, ()>;

    /// Deliveries in `state` with an id above `after`, oldest first, at most `limit`.
    fn list(&self, state: DeliveryState, after: i64, limit: usize) -> StoreFuture<'_, Vec<Delivery>>;

    /// The deliveries of one task to one subscriber (its [`task_key`](super::task_key)),
    /// oldest first, at most `limit`: what a task's page shows of its events' relay.
    fn deliveries_of_task(&self, task_key: String, limit: usize) -> StoreFuture<'_, Vec<Delivery>>;

    /// Make a delivery pending again with a fresh schedule (a dead letter, say). `false`
    /// when there is no such delivery or it is in flight.
    fn replay(&self, id: i64) -> StoreFuture<'_, bool>;

    /// When the next pending delivery is due (Unix milliseconds), if any.
    fn next_due(&self) -> StoreFuture<'_, Option<i64>>;

    /// How many deliveries are pending, in flight and dead (the delivery workers publish
    /// it as `runway_proxy_outbox_depth`).
    fn depth(&self) -> StoreFuture<'_, Depth>;

    /// Every subscriber with its state, backlog, in-flight count and recent health, by id
    /// (at most `limit`, ids after `after`).
    fn subscribers(&self, after: String, limit: usize) -> StoreFuture<'_, Vec<SubscriberReport>>;

    /// Pause subscriber `id` until an operator resumes it (`false`: no such subscriber).
    fn pause_subscriber(&self, id: String) -> StoreFuture<'_, bool>;

    /// Resume subscriber `id`, however it was paused: its failures are forgotten and its
    /// waiting deliveries are due at once (`false`: no such subscriber).
    fn resume_subscriber(&self, id: String) -> StoreFuture<'_, bool>;

    /// Make every dead letter `filter` matches pending again with a fresh schedule, each
    /// once: returns how many.
    fn replay_dead(&self, filter: ReplayFilter) -> StoreFuture<'_, u64>;

    /// Turn pending deliveries stored more than `max_age` ago into dead letters (a paused
    /// subscriber's wait, say): returns how many.
    fn expire(&self, max_age: Duration) -> StoreFuture<'_, u64>;

    /// Whether the store answers now (the sidecar's readiness asks every second). The
    /// default says yes: a store that can't fail apart from its operations needs no probe.
    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Stores events the proxy makes itself (the task watcher's) for delivery, like received
/// webhooks, and wakes the delivery workers. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    outbox: Arc<dyn Outbox>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl EventSink {
    /// Events stored in `outbox`; `wake` is told of each new one (the delivery workers
    /// wait on it).
    pub fn new(outbox: Arc<dyn Outbox>, wake: Arc<Notify>) -> EventSink {
        EventSink { outbox, wake }
    }

    /// Store `delivery` durably (deduped and ordered like a received webhook).
    pub async fn enqueue(&self, delivery: NewDelivery) -> Result<Enqueued, Error> {
        let enqueued = self.outbox.enqueue(delivery).await?;
        if matches!(enqueued, Enqueued::Stored(_)) {
            self.wake.notify_waiters();
        }
        Ok(enqueued)
    }
}
