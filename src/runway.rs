//! One layer for embedders: rate limit, retry and `callback_url` rewrite, composed in the
//! right order.
//!
//! [`RunwayLayer`] wraps any `Service<http::Request<Body>>` whose response body can be
//! read (the hyper-util legacy client first of all, or a `tower::ServiceBuilder` stack)
//! in, from the outside in:
//!
//! 0. [`SubmissionContext`]: buffers a submission's body once, for every layer inside
//!    (see [`crate::context`]);
//! 1. [`Idempotent`] (with a store): a submission with an `Idempotency-Key` is sent once,
//!    its repeats get the first answer;
//! 2. [`RewriteCallback`]: checks the subscriber URL and rewrites `callback_url` once per
//!    request, before anything is sent;
//! 3. [`TaskGuard`] (with a watch list): holds a submission until a task slot is free and
//!    refuses it when a budget is spent, before anything is sent; names its key and model
//!    for the ledger;
//! 4. [`RecordTasks`] (with a watch list): puts each accepted submission on the watch list
//!    before its answer goes back;
//! 5. [`Retry`]: decides from each attempt's body whether to try again, never resubmitting
//!    a task that may have been accepted;
//! 6. [`RateLimit`]: every attempt waits for its own permit, so retries respect the limit.
//!
//! [`RunwayLayer::builder`] collects the settings; [`build`](RunwayLayerBuilder::build)
//! checks them and makes the shared state (the limiter, the retry budget, the metrics)
//! once. Clones of the layer, and every service it makes, share that state.
//! `runway-proxy serve` uses exactly this layer around its forwarding client, so the
//! sidecar and an embedding application behave the same.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use runway_proxy::body::Body;
//! use runway_proxy::callback::{Callbacks, Keyring};
//! use runway_proxy::limit::LimitSettings;
//! use runway_proxy::retry::RetrySettings;
//! use runway_proxy::RunwayLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//!     .build_http::<Body>();
//! let mut limits = LimitSettings::default();
//! limits.submit_rate = Some("5/s".parse()?);
//! limits.max_concurrency = Some(5);
//! let mut retry = RetrySettings::default();
//! retry.max_attempts = 4;
//! let keys: Keyring = "1:a-secret-of-at-least-thirty-two-bytes".parse()?;
//! let layer = RunwayLayer::builder()
//!     .rate_limit(limits)
//!     .retry(retry)
//!     .callbacks(Callbacks::new("https://hooks.example.com", keys)?)
//!     .build()?;
//! let runway = tower::ServiceBuilder::new().layer(layer).service(client);
//! # let _ = runway;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use tower::Layer;

use crate::callback::{Callbacks, RewriteCallback, RewriteCallbackLayer};
use crate::context::{OnSubmission, SubmissionContext, SubmissionContextLayer};
use crate::guard::{GuardSettings, TaskGuard, TaskGuardLayer};
use crate::idempotency::{IdempotencyLayer, IdempotencySettings, IdempotencyStore, Idempotent};
use crate::limit::{LimitSettings, RateLimit, RateLimitLayer};
use crate::retry::{Retry, RetryLayer, RetrySettings};
use crate::settings::{InvalidSetting, setters};
use crate::tasks::{RecordTasks, RecordTasksLayer, TaskStore, Usage, WatchSettings};
use crate::trace::Tracer;

/// The service [`RunwayLayer`] makes around `S`.
pub type Runway<S> =
    SubmissionContext<Idempotent<RewriteCallback<TaskGuard<RecordTasks<Retry<RateLimit<S>>>>>>>;

/// Rate limit, retry and `callback_url` rewrite in one layer. See the module docs.
///
/// Clones, and every service the layer makes, share one retry budget, one set of rate
/// limits and one set of metrics.
#[derive(Clone, Debug, Default)]
pub struct RunwayLayer {
    context: Option<SubmissionContextLayer>,
    retry: RetryLayer,
    limit: RateLimitLayer,
    callbacks: Option<RewriteCallbackLayer>,
    idempotency: Option<IdempotencyLayer>,
    tasks: Option<RecordTasksLayer>,
    guard: Option<TaskGuardLayer>,
    usage: Arc<Usage>,
}

impl RunwayLayer {
    /// Default retries, no rate limits, no callback rewriting.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder starting from the defaults.
    pub fn builder() -> RunwayLayerBuilder {
        RunwayLayerBuilder::default()
    }

    /// The retry layer inside (its settings and metrics).
    pub fn retry(&self) -> &RetryLayer {
        &self.retry
    }

    /// The rate-limit layer inside (its settings, state and metrics).
    pub fn rate_limit(&self) -> &RateLimitLayer {
        &self.limit
    }

    /// The callback rewrite, when it is on.
    pub fn callbacks(&self) -> Option<&Callbacks> {
        self.callbacks.as_ref().map(RewriteCallbackLayer::callbacks)
    }

    /// The task guard, when there is a watch list.
    pub fn guard(&self) -> Option<&TaskGuardLayer> {
        self.guard.as_ref()
    }

    /// The ledger's counters: give them to the relay's
    /// [`watch_list`](crate::relay::RelayBuilder::watch_list) and the
    /// [`TaskWatcher`](crate::tasks::TaskWatcher), which count the tasks that end (and wake
    /// the submissions waiting for a slot).
    pub fn usage(&self) -> Arc<Usage> {
        Arc::clone(&self.usage)
    }

    /// Tell the subscribers of cancelled tasks through `events` (the relay's
    /// [`events`](crate::relay::Relay::events)), with a watch list. Set once.
    pub fn send_events_to(&self, events: crate::store::EventSink) {
        if let Some(tasks) = &self.tasks {
            tasks.send_events_to(events);
        }
    }
}

/// `layer` around `inner`; without one, `inner` alone (a submission passes through).
fn around<L, S, H>(layer: &Option<L>, inner: S) -> OnSubmission<S, H>
where
    L: Layer<S, Service = OnSubmission<S, H>>,
{
    match layer {
        Some(layer) => layer.layer(inner),
        None => OnSubmission::passthrough(inner),
    }
}

impl<S> Layer<S> for RunwayLayer {
    type Service = Runway<S>;

    fn layer(&self, inner: S) -> Runway<S> {
        let retrying = self.retry.layer(self.limit.layer(inner));
        let recording = around(&self.tasks, retrying);
        let guarded = around(&self.guard, recording);
        let rewriting = around(&self.callbacks, guarded);
        let idempotent = around(&self.idempotency, rewriting);
        // `RunwayLayer::default()` has no bounds to take the largest of: the retry
        // layer's default is the one every layer inside then has.
        match &self.context {
            Some(context) => context.layer(idempotent),
            None => SubmissionContextLayer::new(RetrySettings::default().body_limit).layer(idempotent),
        }
    }
}

/// Collects the settings of a [`RunwayLayer`]. Nothing is made until
/// [`build`](Self::build), so the order of the calls does not matter.
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until built"]
pub struct RunwayLayerBuilder {
    retry: RetrySettings,
    limit: LimitSettings,
    callbacks: Option<Callbacks>,
    idempotency: Option<(Arc<dyn IdempotencyStore>, IdempotencySettings)>,
    tasks: Option<(Arc<dyn TaskStore>, WatchSettings)>,
    guard: GuardSettings,
    tracer: Tracer,
}

impl RunwayLayerBuilder {
    setters! {
        /// Record a span for each attempt upstream (see [`crate::trace`]); the watch list
        /// keeps each task's submission span, when the request carries one.
        tracer(tracer: Tracer) => tracer;
        /// Retry settings and rules.
        retry(settings: RetrySettings) => retry;
        /// Rate limits and concurrency caps.
        rate_limit(settings: LimitSettings) => limit;
        /// Rewrite `callback_url` in submissions by `callbacks` (give the relay the same
        /// value, so both check subscribers by one policy).
        callbacks(callbacks: Callbacks) => callbacks = Some(callbacks);
        /// Honour `Idempotency-Key` on submissions, recording them in `store`.
        idempotency(store: Arc<dyn IdempotencyStore>, settings: IdempotencySettings) => idempotency = Some((store, settings));
        /// Put every accepted submission on the watch list (and the ledger) in `store`
        /// (needs [`callbacks`](Self::callbacks): its keys seal the API keys the watcher
        /// polls with). The watcher itself runs beside the relay.
        watch(store: Arc<dyn TaskStore>, settings: WatchSettings) => tasks = Some((store, settings));
        /// Limit tasks in flight and spend per key (needs [`watch`](Self::watch): tasks are
        /// counted on the watch list). With a watch list and no limits, submissions are still
        /// labelled for the ledger.
        guard(settings: GuardSettings) => guard;
    }

    /// Check every setting and make the layers and their shared state, once.
    pub fn build(self) -> Result<RunwayLayer, InvalidSetting> {
        let idempotency = match self.idempotency {
            Some((store, settings)) => Some(IdempotencyLayer::with_settings(store, settings)?),
            None => None,
        };
        self.guard.validate()?;
        let usage = Usage::new();
        for label in self.guard.keys.iter().filter_map(|key| key.label.as_deref()) {
            usage.declare_key(label);
        }
        let mut guard = None;
        let tasks = match (self.tasks, &self.callbacks) {
            (Some((store, settings)), Some(callbacks)) => {
                settings.validate()?;
                check_retention(&settings, &self.guard)?;
                guard = Some(
                    TaskGuardLayer::builder(Arc::clone(&store), Arc::clone(&usage))
                        .settings(self.guard)
                        .waits(self.limit.wait_bounds())
                        .unknown_for(settings.recover_after)
                        .body_limit(callbacks.body_limit())
                        .build()?,
                );
                Some(RecordTasksLayer::new(
                    store,
                    callbacks.keys().clone(),
                    settings,
                    Arc::clone(&usage),
                ))
            }
            (None, _) if !self.guard.is_unlimited() => {
                return Err(InvalidSetting::new(
                    "guard",
                    "task limits and budgets need the watch list (it counts the tasks): set a data dir and callbacks",
                ));
            }
            (Some(_), None) => {
                return Err(InvalidSetting::new(
                    "watch",
                    "watching tasks needs the callback rewrite (its keys seal the API keys polled with)",
                ));
            }
            (None, _) => None,
        };
        // One buffer for a submission, as large as the largest bound of a layer inside.
        let context_limit = [
            Some(self.retry.body_limit),
            self.callbacks.as_ref().map(Callbacks::body_limit),
            idempotency.as_ref().map(IdempotencyLayer::body_limit),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.retry.body_limit);
        Ok(RunwayLayer {
            context: Some(SubmissionContextLayer::new(context_limit)),
            retry: RetryLayer::builder()
                .settings(self.retry)
                .tracer(self.tracer)
                .build()?,
            limit: RateLimitLayer::builder().settings(self.limit).build()?,
            // The watch list reads the subscriber the rewrite checked; nothing else does.
            callbacks: self.callbacks.map(|callbacks| {
                let layer = RewriteCallbackLayer::new(callbacks);
                if tasks.is_some() {
                    layer.naming_subscribers()
                } else {
                    layer
                }
            }),
            idempotency,
            tasks,
            guard,
            usage,
        })
    }
}

/// The ledger must remember a task at least as long as a budget counts it.
fn check_retention(watch: &WatchSettings, guard: &GuardSettings) -> Result<(), InvalidSetting> {
    crate::settings::check(
        watch.ledger_retention >= guard.budget_window,
        "watch.ledger_retention",
        || {
            format!(
                "must be at least guard.budget_window ({}): the budgets count the tasks it keeps",
                crate::duration::format(guard.budget_window)
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::body::{self, Body};

    #[tokio::test(start_paused = true)]
    async fn a_clone_of_the_layer_shares_the_limiter_and_the_retry_budget() {
        let busy = tower::service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(body::full(r#"{"code":500,"msg":"busy"}"#)))
        });
        let limits = LimitSettings {
            submit_rate: Some("2/min".parse().unwrap()),
            max_wait: Duration::ZERO,
            ..Default::default()
        };
        let retry = RetrySettings {
            budget_percent: 50.0,
            budget_min_per_sec: 0,
            ..Default::default()
        };
        let layer = RunwayLayer::builder()
            .rate_limit(limits)
            .retry(retry)
            .build()
            .unwrap();
        let clone = layer.clone();
        let submit = || {
            Request::post("http://upstream.test/runway/pro/generate")
                .body(body::full("{}"))
                .unwrap()
        };

        // Half a retry deposited: no retry, one permit used.
        let first = layer.layer(busy).oneshot(submit()).await.unwrap();
        assert_eq!(first.headers()["x-runway-proxy-retry-stopped"], "budget");
        // Through the clone: the budget now holds a whole retry, and the limiter's second
        // permit goes to the first attempt, so the retry is refused by the shared limiter.
        let second = clone.layer(busy).oneshot(submit()).await.unwrap();
        assert_eq!(
            second.headers()["x-runway-proxy-attempts"],
            "2",
            "the shared budget allowed a retry"
        );
        assert_eq!(
            second.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "the shared quota was spent"
        );
        assert_eq!(layer.retry().metrics().budget_exhausted.get(), 1);
        assert_eq!(layer.rate_limit().metrics().refusals("max_wait"), 1);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_submission_is_read_and_parsed_once_through_every_layer_and_retry() {
        use std::sync::Mutex;

        use http_body_util::BodyExt;

        use crate::callback::{Keyring, SubscriberPolicy};
        use crate::idempotency::MemoryIdempotencyStore;

        // Busy once, then accepted: the rewritten body goes upstream twice.
        let sent: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let upstream = {
            let sent = Arc::clone(&sent);
            tower::service_fn(move |request: Request<Body>| {
                let sent = Arc::clone(&sent);
                async move {
                    let bytes = request.into_body().collect().await.unwrap().to_bytes();
                    let mut sent = sent.lock().unwrap();
                    sent.push(bytes);
                    let answer = if sent.len() == 1 {
                        r#"{"code":500,"msg":"busy"}"#
                    } else {
                        r#"{"code":200,"msg":"success","data":{"task_id":"t1"}}"#
                    };
                    Ok::<_, Infallible>(Response::new(body::full(answer)))
                }
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).unwrap());
        let keys: Keyring = "1:a-secret-of-at-least-thirty-two-bytes".parse().unwrap();
        let callbacks = Callbacks::new("https://proxy.example", keys)
            .unwrap()
            .with_policy(SubscriberPolicy::default().allow_private(true));
        let retry = RetrySettings {
            base_delay: Duration::from_millis(1),
            ..Default::default()
        };
        let layer = RunwayLayer::builder()
            .retry(retry)
            .callbacks(callbacks)
            .idempotency(
                Arc::new(MemoryIdempotencyStore::default()),
                IdempotencySettings::default(),
            )
            // A watch list: the task guard names the submission's model for the ledger.
            .watch(Arc::clone(&store) as Arc<dyn TaskStore>, WatchSettings::default())
            .build()
            .unwrap();
        let request = Request::post("http://upstream.test/runway/pro/generate")
            .header("idempotency-key", "k1")
            .body(body::full(
                r#"{"model":"gen4","callback_url":"http://127.0.0.1:9/hook"}"#,
            ))
            .unwrap();
        let parses_before = crate::context::PARSES.with(std::cell::Cell::get);
        let response = layer.layer(upstream).oneshot(request).await.unwrap();
        assert_eq!(response.headers()["x-runway-proxy-attempts"], "2");
        let parses = crate::context::PARSES.with(std::cell::Cell::get) - parses_before;
        assert_eq!(parses, 1, "the rewrite and the guard share one parse");
        let recorded = store.task("t1".into()).await.unwrap().expect("on the watch list");
        assert_eq!(
            recorded.model.as_deref(),
            Some("gen4"),
            "the guard read the model"
        );
        let sent = sent.lock().unwrap();
        assert_eq!(sent[0], sent[1], "the retry replays the rewritten bytes");
        let text = std::str::from_utf8(&sent[0]).unwrap();
        assert!(
            text.starts_with(r#"{"model":"gen4","callback_url":"https://proxy.example/hooks/runway/"#),
            "{text}"
        );
    }

    #[test]
    fn every_setting_is_checked_at_build() {
        let retry = RetrySettings {
            max_attempts: 0,
            ..Default::default()
        };
        let limits = LimitSettings {
            max_queue: 0,
            ..Default::default()
        };
        for (builder, key) in [
            (RunwayLayer::builder().retry(retry), "retry.max_attempts"),
            (RunwayLayer::builder().rate_limit(limits), "limit.max_queue"),
        ] {
            assert_eq!(builder.build().unwrap_err().key, key);
        }
    }
}
