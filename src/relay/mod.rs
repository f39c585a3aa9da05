//! The webhook relay: receive CometAPI's callbacks, store them durably, and deliver them,
//! signed, to the original subscriber at least once.
//!
//! [`Relay::builder`] wires the parts from the same [`Callbacks`] the rewrite uses (so the
//! keys and the subscriber policy are given once) and starts the delivery workers:
//!
//! - [`WebhookReceiver`] (a tower `Service`) answers `POST /hooks/runway/{token}`: it
//!   verifies the route token, stores the body in the [`Outbox`] *before* answering 2xx,
//!   and answers 503 when it can't, so the sender tries again.
//! - [`SqliteOutbox`] is the embedded store (WAL, group commit); `PostgresOutbox`
//!   (feature `postgres`) is the one several replicas share; [`Outbox`] is their trait. The same (task, status, update time)
//!   is stored once, and a task's older status is never delivered after its terminal one.
//! - The delivery workers send each webhook with Standard Webhooks headers
//!   ([`WebhookSigner`]), retry on a schedule ([`DeliverySettings`]: honouring
//!   `Retry-After`, stopping at `410 Gone`), check the subscriber's resolved address again
//!   at delivery, and turn exhausted deliveries into dead letters that [`RelayAdmin`]
//!   lists and replays.
//! - Each subscriber (callback URL) is scheduled on its own: a cap of attempts in flight
//!   across workers and replicas, an optional rate, round-robin slots, and a circuit
//!   breaker that pauses one that keeps failing and probes it (see
//!   [`store::Fairness`](crate::store::Fairness) and [`store::Breaker`](crate::store::Breaker));
//!   [`RelayAdmin`] lists subscribers, pauses and resumes them, and replays dead letters
//!   in bulk.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use runway_proxy::callback::{Callbacks, Keyring};
//! use runway_proxy::relay::{DeliverySettings, Relay, SqliteOutbox, WebhookSigner};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let keys: Keyring = "1:a-secret-of-at-least-thirty-two-bytes".parse()?;
//! let callbacks = Callbacks::new("https://hooks.my-app.example", keys)?;
//! let outbox = Arc::new(SqliteOutbox::open("outbox.sqlite3".as_ref())?);
//! let signer = WebhookSigner::from_secret(&std::env::var("RUNWAY_PROXY_WEBHOOK_SECRET")?)?;
//! let relay = Relay::builder(&callbacks, outbox, signer)
//!     .settings(DeliverySettings::default())
//!     .start()?;
//! let receiver = relay.receiver(); // mount at /hooks/runway/{token}
//! // ... serve ...
//! relay.shutdown(std::time::Duration::from_secs(10)).await;
//! # let _ = receiver;
//! # Ok(())
//! # }
//! ```

mod admin;
#[cfg(feature = "archive")]
mod archiving;
mod client;
mod metrics;
mod outcome;
mod receiver;
mod settings;
mod signing;
mod upkeep;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use crate::settings::ServiceUrl;
use crate::trace::Tracer;
pub use admin::{RelayAdmin, redact};
#[cfg(feature = "archive")]
#[cfg_attr(docsrs, doc(cfg(feature = "archive")))]
pub use archiving::{ArchiveAdmin, ArchiveMetrics, Archiving};
pub use metrics::RelayMetrics;
pub use receiver::WebhookReceiver;
pub use settings::DeliverySettings;
pub use signing::{SecretError, TOLERANCE, WebhookSigner};

// The outbox lives on the storage floor; these are its names where the relay's users
// have always found them.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use crate::store::PostgresOutbox;
pub use crate::store::{
    BoxFuture, Completion, DatabaseSettings, Delivery, DeliveryState, Depth, Enqueued, EventSink,
    NewDelivery, Outbox, SqliteOutbox, event_delivery,
};
// The check is made by the task watcher, beside the watch list.
pub use crate::tasks::{CallbackCheck, Confirmation};

use crate::callback::Callbacks;
use crate::settings::InvalidSetting;
use crate::tasks::{TaskStore, Usage};
use crate::upstream::ClientError;
use worker::DeliveryWorkers;

/// What `GET /-/tasks/{id}` shows of a task's archive: implemented by
/// [`ArchiveAdmin`] (feature `archive`).
pub trait TaskArchive: Send + Sync + std::fmt::Debug + 'static {
    /// The archive job of task `task_id` relayed to `subscriber` (its state, attempts,
    /// last error, and each copy with a link minted now), if it has one.
    fn report(
        &self,
        subscriber: String,
        task_id: String,
    ) -> BoxFuture<'_, Result<Option<serde_json::Value>, crate::store::Error>>;

    /// The state of that archive job (`open`, `done`, `failed`...), if it has one: what a
    /// list of tasks shows, without minting links.
    fn state(
        &self,
        subscriber: String,
        task_id: String,
    ) -> BoxFuture<'_, Result<Option<&'static str>, crate::store::Error>>;
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A delivery setting is out of range.
    #[error(transparent)]
    Settings(#[from] InvalidSetting),
    /// The delivery client could not be set up.
    #[error("cannot set up the delivery client: {0}")]
    Client(#[from] ClientError),
}

/// The webhook side of runway-proxy: the receiver to mount, the delivery workers running
/// on the application's runtime, the admin handle, and the means to stop the workers
/// gracefully. See the [module docs](self).
#[derive(Debug)]
pub struct Relay {
    receiver: WebhookReceiver,
    admin: RelayAdmin,
    workers: DeliveryWorkers,
    metrics: Arc<RelayMetrics>,
    events: EventSink,
    callbacks: Callbacks,
    #[cfg(feature = "archive")]
    archive: Option<(archiving::ArchiveWorkers, Arc<ArchiveMetrics>)>,
    /// How the archive reads tasks again for fresh URLs, once set.
    #[cfg(feature = "archive")]
    refresh: Option<Arc<std::sync::OnceLock<Arc<dyn crate::tasks::TaskReader>>>>,
}

/// Settings for [`Relay::builder`]; [`start`](RelayBuilder::start) checks them and starts
/// the workers.
#[derive(Debug)]
#[must_use = "a builder does nothing until started"]
pub struct RelayBuilder {
    callbacks: Callbacks,
    outbox: Arc<dyn Outbox>,
    signer: WebhookSigner,
    settings: DeliverySettings,
    tasks: Option<receiver::WatchList>,
    tracer: Tracer,
    #[cfg(feature = "archive")]
    archiving: Option<Archiving>,
}

impl std::fmt::Debug for dyn Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

impl Relay {
    /// A relay that verifies route tokens with the keys of `callbacks`, delivers only to
    /// subscribers its policy accepts, stores webhooks in `outbox` and signs deliveries
    /// with `signer`.
    pub fn builder(callbacks: &Callbacks, outbox: Arc<dyn Outbox>, signer: WebhookSigner) -> RelayBuilder {
        RelayBuilder {
            callbacks: callbacks.clone(),
            outbox,
            signer,
            settings: DeliverySettings::default(),
            tasks: None,
            tracer: Tracer::off(),
            #[cfg(feature = "archive")]
            archiving: None,
        }
    }

    /// The receiver to mount at `/hooks/runway/{token}` (a tower `Service`; cheap to clone).
    pub fn receiver(&self) -> WebhookReceiver {
        self.receiver.clone()
    }

    /// The admin handle that answers `/-/deliveries` (mount it on a private route).
    pub fn admin(&self) -> RelayAdmin {
        self.admin.clone()
    }

    /// Check every terminal callback with `check` before relaying it (see
    /// [`CallbackCheck`]). Set once; later calls are ignored.
    pub fn confirm_callbacks(&self, check: Arc<dyn CallbackCheck>) {
        self.receiver.confirm_with(check);
    }

    /// Where the proxy's own events go to be delivered.
    pub fn events(&self) -> EventSink {
        self.events.clone()
    }

    /// What the receiver and the workers record.
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The receiver as an axum `Router` answering `POST /hooks/runway/{token}`; merge it
    /// into the application's router.
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        axum::Router::new().route_service("/hooks/runway/{token}", self.receiver.clone())
    }

    /// Put `settings` in force for the delivery workers, with the subscriber policy the
    /// callbacks hold now (see [`Callbacks::set_policy`]): unless both are unchanged, a
    /// new set of workers starts with them, and the ones before finish the deliveries
    /// they hold, so nothing in flight is dropped or sent twice. Returns whether the
    /// workers were restarted.
    pub fn reload(&self, settings: DeliverySettings) -> Result<bool, InvalidSetting> {
        self.workers.reload(settings, (*self.callbacks.policy()).clone())
    }

    /// When an archived output's source answers 403 or 404 (its URL expired), read the
    /// task again with `reader` for fresh URLs (the task watcher's
    /// [`reader`](crate::tasks::TaskWatcher::reader)). Set once; later calls are ignored.
    #[cfg(feature = "archive")]
    #[cfg_attr(docsrs, doc(cfg(feature = "archive")))]
    pub fn refresh_outputs_with(&self, reader: Arc<dyn crate::tasks::TaskReader>) {
        if let Some(cell) = &self.refresh {
            let _ = cell.set(reader);
        }
    }

    /// What the archive workers record, when outputs are archived.
    #[cfg(feature = "archive")]
    #[cfg_attr(docsrs, doc(cfg(feature = "archive")))]
    pub fn archive_metrics(&self) -> Option<Arc<ArchiveMetrics>> {
        self.archive.as_ref().map(|(_, metrics)| Arc::clone(metrics))
    }

    /// Stop the delivery workers (and the archive workers): deliveries in flight get
    /// `grace` to finish, and what is left goes back to pending for the next start.
    pub async fn shutdown(self, grace: Duration) {
        #[cfg(feature = "archive")]
        let archived = async {
            if let Some((workers, _)) = self.archive {
                workers.shutdown(grace).await;
            }
        };
        #[cfg(not(feature = "archive"))]
        let archived = async {};
        tokio::join!(self.workers.shutdown(grace), archived);
    }
}

impl RelayBuilder {
    /// Delivery schedule, timeout, workers and `Retry-After` cap.
    pub fn settings(mut self, settings: DeliverySettings) -> Self {
        self.settings = settings;
        self
    }

    /// Tell the watch list in `store` of every callback received, so a task that called
    /// back is not recovered from the feed before `recover_after` more has passed (and
    /// not at all once its terminal callback came). A callback that ends a task counts
    /// it, and its points, in `usage` (the ledger's counters, which also wake the
    /// submissions waiting for a task slot).
    pub fn watch_list(
        mut self,
        store: Arc<dyn TaskStore>,
        recover_after: Duration,
        usage: Arc<Usage>,
    ) -> Self {
        self.tasks = Some(receiver::WatchList {
            store,
            recover_after,
            usage,
        });
        self
    }

    /// Record a span for each callback received (linked to its task's submission) and
    /// each delivery attempt, and send `traceparent` with each relayed webhook.
    pub fn tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Archive succeeded tasks' outputs: their webhooks wait (at most the deadline) for
    /// the copies, and point at them. The outbox must be the database `archiving` keeps
    /// its jobs in.
    #[cfg(feature = "archive")]
    #[cfg_attr(docsrs, doc(cfg(feature = "archive")))]
    pub fn archive(mut self, archiving: Archiving) -> Self {
        self.archiving = Some(archiving);
        self
    }

    /// Check the settings and start the delivery workers on the current Tokio runtime.
    pub fn start(self) -> Result<Relay, RelayError> {
        self.settings.validate()?;
        let metrics = Arc::new(RelayMetrics::default());
        let wake = Arc::new(Notify::new());
        let outbox = self.outbox;
        // Archiving holds succeeded tasks' webhooks back: every part of the relay sees
        // the outbox through the hold.
        #[cfg(feature = "archive")]
        let refresh = self.archiving.as_ref().map(Archiving::refresh_cell);
        #[cfg(feature = "archive")]
        let (outbox, archive) = match self.archiving {
            Some(archiving) => {
                let held = Arc::new(Notify::new());
                let outbox: Arc<dyn Outbox> = Arc::new(archiving::HoldForArchive::new(
                    outbox,
                    archiving.deadline(),
                    Arc::clone(&held),
                ));
                let archive_metrics = Arc::new(ArchiveMetrics::default());
                let workers = archiving::ArchiveWorkers::start(
                    archiving,
                    held,
                    Arc::clone(&wake),
                    Arc::clone(&archive_metrics),
                    self.tracer.clone(),
                );
                (outbox, Some((workers, archive_metrics)))
            }
            None => (outbox, None),
        };
        let receiver = WebhookReceiver::new(
            &self.callbacks,
            Arc::clone(&outbox),
            Arc::clone(&wake),
            Arc::clone(&metrics),
            self.tasks,
            self.tracer.clone(),
        );
        let admin = RelayAdmin::new(Arc::clone(&outbox), Arc::clone(&wake), Arc::clone(&metrics));
        let events = EventSink::new(Arc::clone(&outbox), Arc::clone(&wake));
        let workers = DeliveryWorkers::start(
            outbox,
            self.signer,
            self.settings,
            (*self.callbacks.policy()).clone(),
            wake,
            Arc::clone(&metrics),
            self.tracer,
        )?;
        Ok(Relay {
            receiver,
            admin,
            workers,
            metrics,
            events,
            callbacks: self.callbacks,
            #[cfg(feature = "archive")]
            archive,
            #[cfg(feature = "archive")]
            refresh,
        })
    }
}
