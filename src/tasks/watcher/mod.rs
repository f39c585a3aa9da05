//! The task watcher: makes sure every task on the watch list ends with its final result
//! delivered, whether or not CometAPI calls back.
//!
//! [`TaskWatcher`] claims due tasks from the [`TaskStore`] (with a lease, so with several
//! replicas each task is checked by one at a time, and a watcher that dies gives its tasks
//! back) and checks each through the same stack as the application's own calls (so its
//! reads count in the read quota and are retried like theirs), with the API key that
//! submitted it:
//!
//! - **Official-format tasks** (`/runwayml/v1/*`, which have no webhooks) are polled with
//!   `GET /runwayml/v1/tasks/{id}` every [`WatchSettings::poll_interval`], and each status
//!   change becomes a signed event for the subscriber: the task as Runway shows it, plus
//!   `"runway_proxy_source": "poll"`.
//! - **Reverse-format tasks** whose terminal callback has not come within
//!   [`WatchSettings::recover_after`] (of the submission or the last callback) are read
//!   from `POST /runway/feed`; once the feed shows them finished, their final status is
//!   relayed in the flat shape of CometAPI's callbacks, plus
//!   `"runway_proxy_source": "recovered"`. It is deduped against the real callback
//!   (the same task, status and update time is stored once, and nothing is delivered after
//!   a task's terminal status), so a callback that arrives late is not delivered twice.
//!
//! Events go through the relay's outbox ([`EventSink`]): durable, deduped, ordered per
//! task, retried, signed.
//!
//! With `--confirm-callbacks`, the watcher is also the relay's [`CallbackCheck`]: a
//! reverse-format task's final callback is relayed only once one feed read agrees; when
//! the feed says otherwise the feed's version is relayed instead (marked
//! `"runway_proxy_source": "feed"`), or nothing until the task really ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

mod found;
mod metrics;

use found::{CheckFailed, Found, feed_found, official_found};
pub use metrics::WatchMetrics;

use crate::body::{self, Body, Bounded};
use crate::callback::Keyring;
use crate::duration::jittered;
use crate::settings::Live;
use crate::store::{BoxFuture, Enqueued, EventSink, event_delivery};
use crate::tasks::{
    Checked, SEALED_KEY_PURPOSE, TaskFormat, TaskReport, TaskStore, Usage, WatchSettings, WatchedTask,
};

/// Tasks one claim takes at most.
const BATCH: usize = 16;
/// How often the watcher looks for due tasks.
const TICK: Duration = Duration::from_millis(500);
/// Longest a check may hold its claim: a watcher that dies frees its tasks after this.
const LEASE: Duration = Duration::from_secs(120);
/// How often the task counts are refreshed from the store.
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// How often finished tasks past `watch.ledger_retention` are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Largest task answer read.
const ANSWER_LIMIT: usize = 1024 * 1024;

/// What a check of a terminal callback against the upstream found
/// ([`CallbackCheck`], `--confirm-callbacks`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// The upstream agrees: relay the callback.
    Confirmed,
    /// The upstream says otherwise: do not relay the callback; relay this instead (the
    /// upstream's own version, in the callback's shape), if anything.
    Contradicted(Option<Bytes>),
    /// It could not be checked (why): relay the callback as it came.
    Unconfirmed(String),
}

/// Checks a terminal callback against the upstream before it is relayed: CometAPI's
/// callbacks are not signed, so the route token proves the URL but not the content. The
/// task watcher implements it with one feed read.
pub trait CallbackCheck: Send + Sync + 'static {
    /// Check that task `task_id` ended with `status`.
    fn confirm(&self, task_id: String, status: String) -> BoxFuture<'_, Confirmation>;
}

/// Reads a watched task's current state from the upstream, in the shape its events have
/// (the feed's result for a reverse-format task, `GET /v1/tasks/{id}` for an official
/// one), with the key it was submitted with: fresh output URLs for the archive when the
/// ones it was given have expired.
pub trait TaskReader: Send + Sync + 'static {
    /// Task `task_id` as the upstream shows it now; `None` when it is not on the watch
    /// list, has no key to read it with, or the read failed.
    fn current(&self, task_id: String) -> BoxFuture<'_, Option<Bytes>>;
}

impl std::fmt::Debug for dyn TaskReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskReader")
    }
}

/// The running watcher. See the [module docs](crate::tasks).
#[derive(Debug)]
pub struct TaskWatcher {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    confirmer: Arc<dyn CallbackCheck>,
    reader: Arc<dyn TaskReader>,
}

impl std::fmt::Debug for dyn CallbackCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackCheck")
    }
}

/// What one check needs.
struct Watcher<S> {
    poller: S,
    store: Arc<dyn TaskStore>,
    events: EventSink,
    keys: Live<Keyring>,
    settings: WatchSettings,
    metrics: Arc<WatchMetrics>,
    usage: Arc<Usage>,
    owner: String,
}

impl TaskWatcher {
    /// Start watching the tasks in `store`, checking them through `poller`, storing
    /// their events in `events`, and counting each task that ends (and its points) in
    /// `usage`.
    pub fn start<S>(
        poller: S,
        store: Arc<dyn TaskStore>,
        events: EventSink,
        keys: Live<Keyring>,
        settings: WatchSettings,
        metrics: Arc<WatchMetrics>,
        usage: Arc<Usage>,
    ) -> TaskWatcher
    where
        S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        S::Error: std::fmt::Display + Send,
        S::Future: Send,
    {
        let (stop, stopped) = watch::channel(false);
        let watcher = Arc::new(Watcher {
            poller,
            store,
            events,
            keys,
            settings,
            metrics,
            usage,
            owner: format!("watcher-{:08x}", rand::random::<u32>()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(Arc::clone(&watcher).run(stopped));
        TaskWatcher {
            stop,
            tasks,
            confirmer: Arc::clone(&watcher) as Arc<dyn CallbackCheck>,
            reader: watcher,
        }
    }

    /// Confirms final callbacks with one feed read each, for
    /// [`Relay::confirm_callbacks`](crate::relay::Relay::confirm_callbacks).
    pub fn confirmer(&self) -> Arc<dyn CallbackCheck> {
        Arc::clone(&self.confirmer)
    }

    /// Reads tasks' current state from the upstream, for the archive's fresh URLs.
    pub fn reader(&self) -> Arc<dyn TaskReader> {
        Arc::clone(&self.reader)
    }

    /// Stop claiming; checks in progress end with the runtime (their claims lapse).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

impl<S> Watcher<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
{
    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut counted_at: Option<tokio::time::Instant> = None;
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            if *stopped.borrow() {
                return;
            }
            if counted_at.is_none_or(|at| at.elapsed() >= COUNT_EVERY) {
                counted_at = Some(tokio::time::Instant::now());
                self.publish_counts().await;
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                self.prune_ledger().await;
            }
            match self.store.claim_due(self.owner.clone(), BATCH, LEASE).await {
                Ok(claimed) if !claimed.is_empty() => {
                    let checks = claimed.into_iter().map(|task| {
                        let this = Arc::clone(&self);
                        async move { this.check(task).await }
                    });
                    futures_util::future::join_all(checks).await;
                    continue;
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "cannot claim watched tasks"),
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = stopped.changed() => {}
            }
        }
    }

    /// Forget finished tasks older than `watch.ledger_retention` (every replica may: the
    /// delete is the same whoever runs it).
    async fn prune_ledger(&self) {
        let before = crate::duration::unix_millis() - crate::duration::millis(self.settings.ledger_retention);
        match self.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                tasks = n,
                "forgot ledger records older than watch.ledger_retention"
            ),
            Err(err) => tracing::warn!(error = %err, "cannot prune the ledger"),
        }
    }

    /// Keep `runway_proxy_tasks{state}` equal to what the store holds (every replica's).
    async fn publish_counts(&self) {
        if let Ok(counts) = self.store.count_tasks().await {
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.metrics.watching.set(gauge(counts.watching));
            self.metrics.done.set(gauge(counts.done));
            self.metrics.unknown.set(gauge(counts.unknown));
        }
    }

    /// Count an official-format status event the watch list's states do not name, and a
    /// failure by its code's family.
    fn count_status(&self, status: &str, event: Option<&[u8]>) {
        match status {
            "THROTTLED" => self.metrics.throttled.inc(),
            "CANCELLED" => self.metrics.cancelled.inc(),
            "FAILED" => {
                let code = event
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
                    .and_then(|event| {
                        event
                            .get("failureCode")
                            .and_then(|c| c.as_str())
                            .map(str::to_owned)
                    });
                self.metrics.failed_with(code.as_deref());
            }
            _ => {}
        }
    }

    /// The `Authorization` the task was submitted with, unsealed.
    fn authorization(&self, task: &WatchedTask) -> Option<HeaderValue> {
        let keys = self.keys.get();
        task.sealed_key
            .as_deref()
            .and_then(|sealed| keys.open(SEALED_KEY_PURPOSE, sealed))
            .and_then(|key| HeaderValue::from_bytes(&key).ok())
    }

    /// Check one claimed task and record what came of it.
    async fn check(&self, task: WatchedTask) {
        let Some(authorization) = self.authorization(&task) else {
            // Sealed with a key since retired, or never given: nothing can check it.
            tracing::warn!(task_id = %task.task_id, "a watched task has no API key to check it with; giving it up");
            self.metrics.abandoned.inc();
            let note = Some("given up: no API key to check it with".to_owned());
            self.record(&task, None, true, false, TaskReport::default(), note)
                .await;
            return;
        };
        let found = match task.format {
            TaskFormat::Official => {
                self.metrics.official_checks.inc();
                self.poll_official(&task, authorization).await
            }
            TaskFormat::Reverse => {
                self.metrics.recovery_checks.inc();
                self.read_feed(&task, authorization, "recovered").await
            }
        };
        match found {
            Found::Status {
                status,
                terminal,
                event,
                points,
            } => {
                if task.format == TaskFormat::Official && event.is_some() {
                    self.count_status(&status, event.as_deref());
                }
                // A task no one subscribed to is watched for the ledger only.
                if let (Some(event), Some(subscriber)) = (event, task.subscriber.as_deref()) {
                    let mut delivery = event_delivery(subscriber, event);
                    // Its delivery attempts link to the submission's span, as a callback's
                    // would (a read per event, not per check: events are status changes).
                    delivery.trace = self.store.trace_of(task.task_id.clone()).await.ok().flatten();
                    match self.events.enqueue(delivery).await {
                        Ok(enqueued) => {
                            if task.format == TaskFormat::Official {
                                self.metrics.events.inc();
                            } else if terminal && matches!(enqueued, Enqueued::Stored(_)) {
                                self.metrics.recovered.inc();
                                tracing::info!(task_id = %task.task_id, status, "recovered a final result from the feed");
                            }
                        }
                        Err(err) => {
                            // Not stored: keep the task as it was, and try again.
                            tracing::error!(error = %err, task_id = %task.task_id, "cannot store a task's event");
                            self.metrics.failed_checks.inc();
                            let note = Some(format!("its event could not be stored: {err}"));
                            self.record(&task, None, false, false, TaskReport::default(), note)
                                .await;
                            return;
                        }
                    }
                }
                let recovered = terminal && task.format == TaskFormat::Reverse && task.subscriber.is_some();
                self.record(&task, Some(status), terminal, recovered, points, None)
                    .await;
            }
            Found::NotYet => {
                let note = Some("no status yet (not known upstream, or not finished)".to_owned());
                self.record(&task, None, false, false, TaskReport::default(), note)
                    .await
            }
            Found::Failed(why) => {
                tracing::warn!(task_id = %task.task_id, error = %why, "a watched task's check failed");
                self.metrics.failed_checks.inc();
                let note = Some(format!("failed: {why}"));
                self.record(&task, None, false, false, TaskReport::default(), note)
                    .await;
            }
        }
    }

    async fn record(
        &self,
        task: &WatchedTask,
        status: Option<String>,
        done: bool,
        recovered: bool,
        points: TaskReport,
        note: Option<String>,
    ) {
        let checked = Checked {
            status,
            done,
            recovered,
            again_after: jittered(self.settings.poll_interval),
            points: points.points,
            refunded: points.refunded,
            progress: points.progress,
            note,
        };
        match self
            .store
            .checked(task.task_id.clone(), self.owner.clone(), checked)
            .await
        {
            Ok(Some(finished)) => self.usage.finished(&finished),
            Ok(None) => {}
            // The claim lapses and the task is checked again: nothing is lost.
            Err(err) => tracing::warn!(error = %err, task_id = %task.task_id, "cannot record a task's check"),
        }
    }

    /// Send `request` through the poller and read its answer.
    async fn ask(&self, request: Request<Body>) -> Result<(http::StatusCode, Bytes), CheckFailed> {
        let response = self
            .poller
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| CheckFailed::Poller(e.to_string()))?;
        let (parts, body) = response.into_parts();
        match body::read_bounded(body, ANSWER_LIMIT).await {
            Ok(Bounded::Whole(bytes)) => Ok((parts.status, bytes)),
            Ok(Bounded::Partial(_)) => Err(CheckFailed::TooLarge),
            Err(err) => Err(CheckFailed::Body(body::error_chain(&err))),
        }
    }

    async fn poll_official(&self, task: &WatchedTask, authorization: HeaderValue) -> Found {
        // A workflow run is read as a workflow invocation; every other task as a task.
        let collection = if task.route.starts_with("/runwayml/v1/workflows/") {
            "workflow_invocations"
        } else {
            "tasks"
        };
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("/runwayml/v1/{collection}/{}", task.task_id))
            .header(header::AUTHORIZATION, authorization)
            .body(body::empty());
        let Ok(request) = request else {
            return Found::Failed(CheckFailed::BadTaskId);
        };
        match self.ask(request).await {
            Ok((status, bytes)) if status.is_success() => official_found(&bytes, task.status.as_deref()),
            Ok((status, _)) if status == http::StatusCode::NOT_FOUND => Found::NotYet,
            Ok((status, _)) => Found::Failed(CheckFailed::Status(status)),
            Err(why) => Found::Failed(why),
        }
    }

    async fn read_feed(&self, task: &WatchedTask, authorization: HeaderValue, source: &str) -> Found {
        let query = serde_json::json!({ "task_id": task.task_id }).to_string();
        let request = Request::builder()
            .method(Method::POST)
            .uri("/runway/feed")
            .header(header::AUTHORIZATION, authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body::full(query));
        let Ok(request) = request else {
            return Found::Failed(CheckFailed::FeedRequest);
        };
        match self.ask(request).await {
            Ok((status, bytes)) if status.is_success() => feed_found(&bytes, source),
            Ok((status, _)) => Found::Failed(CheckFailed::Status(status)),
            Err(why) => Found::Failed(why),
        }
    }
}

impl<S> CallbackCheck for Watcher<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
{
    fn confirm(&self, task_id: String, status: String) -> BoxFuture<'_, Confirmation> {
        Box::pin(async move {
            let task = match self.store.task(task_id).await {
                Ok(Some(task)) if task.format == TaskFormat::Reverse => task,
                Ok(Some(_)) => return Confirmation::Unconfirmed("not a reverse-format task".into()),
                Ok(None) => return Confirmation::Unconfirmed("not on the watch list".into()),
                Err(err) => return Confirmation::Unconfirmed(err.to_string()),
            };
            let Some(authorization) = self.authorization(&task) else {
                return Confirmation::Unconfirmed("no API key to read the feed with".into());
            };
            self.metrics.confirm_checks.inc();
            match self.read_feed(&task, authorization, "feed").await {
                Found::Status { status: upstream, .. } if upstream == status => Confirmation::Confirmed,
                Found::Status { event, .. } => Confirmation::Contradicted(event),
                // The feed has it unfinished (or unknown): the callback's end is not true yet.
                Found::NotYet => Confirmation::Contradicted(None),
                Found::Failed(why) => {
                    self.metrics.failed_checks.inc();
                    Confirmation::Unconfirmed(why.to_string())
                }
            }
        })
    }
}

impl<S> TaskReader for Watcher<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    S::Error: std::fmt::Display + Send,
    S::Future: Send,
{
    fn current(&self, task_id: String) -> BoxFuture<'_, Option<Bytes>> {
        Box::pin(async move {
            let task = self.store.task(task_id).await.ok().flatten()?;
            let authorization = self.authorization(&task)?;
            let found = match task.format {
                // Asked with no status known, so the answer is always an event.
                TaskFormat::Official => {
                    let mut unknown = task.clone();
                    unknown.status = None;
                    self.poll_official(&unknown, authorization).await
                }
                TaskFormat::Reverse => self.read_feed(&task, authorization, "refreshed").await,
            };
            match found {
                Found::Status { event, .. } => event,
                Found::NotYet | Found::Failed(_) => None,
            }
        })
    }
}
