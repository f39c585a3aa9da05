//! Retry middleware that decides from the response body, and never resubmits a paid task
//! that may have been accepted.
//!
//! CometAPI often reports an error inside an HTTP 200 (`{"code": 500, "msg": "system
//! busy"}`), so [`Retry`] reads each attempt's outcome from the transport result, the
//! HTTP status and the envelope's `code` and `msg` (the body is collected up to a bound),
//! and looks it up in a rule table ([`Rules`]): success, retry or fail. The semantics
//! follow Envoy's router retries, keyed on the body:
//!
//! - **Submissions** (`POST /runway/pro/*`, task-creating `POST /runwayml/v1/*`) are
//!   retried only when the outcome proves the task was not created: a connect failure
//!   (nothing was sent) or a response whose rule says retry. A timeout or a reset after
//!   the request was written leaves the outcome unknown: the client gets a 504 envelope
//!   saying so, and the task is not submitted again (unless turned on per route class).
//! - **Reads** (`POST /runway/feed`, `GET /runwayml/v1/tasks/{id}`) retry on every
//!   transient fault, and on `task_not_exist` shortly after creation.
//! - **Other** requests are retried only on a connect failure, only for idempotent
//!   methods without a body.
//!
//! Waits use full-jitter exponential backoff and honour `Retry-After` (up to a cap). Each
//! attempt has a timeout, all attempts and waits share one deadline, and a retry budget
//! shared by every clone of the service keeps retries to a fraction of recent requests.
//! The client gets the upstream's last response unchanged, plus `x-runway-proxy-attempts`.
//! Compose a rate limiter *inside* this layer, so each attempt takes its own permit.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use runway_proxy::retry::RetryLayer;
//! use tower::ServiceBuilder;
//!
//! # fn wrap(client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, runway_proxy::body::Body>) {
//! let retrying = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::new()
//!             .max_attempts(5)
//!             .backoff(Duration::from_secs(1), Duration::from_secs(30))
//!             .deadline(Duration::from_secs(120)),
//!     )
//!     .service(client);
//! # let _ = retrying;
//! # }
//! ```

mod backoff;
mod policy;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

pub use backoff::{Backoff, retry_after};
pub use policy::{Action, CLIENT_ERRORS, RETRYABLE, Rule, RuleSpec, Rules, Verdict, default_rules};

use crate::body::{self, Body, BodyError, BoxError};
use crate::duration;
use crate::envelope::{self, Envelope};
use crate::metrics::Metrics;
use crate::proxy::UpstreamError;
use crate::route::RouteClass;

/// Response header with the number of attempts made.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-runway-proxy-attempts");
/// Response header saying why retrying stopped while the last outcome still called for
/// a retry: `max-attempts`, `deadline`, `budget` or `not-replayable`.
pub const STOPPED_HEADER: HeaderName = HeaderName::from_static("x-runway-proxy-retry-stopped");

/// The message of the error returned when a submission's outcome is unknown.
pub const OUTCOME_UNKNOWN: &str =
    "outcome unknown: the upstream may have created this task; check the feed before resubmitting";

/// Settings of the retry middleware, with CometAPI's recommended defaults.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Attempts in all, counting the first (default 5).
    pub max_attempts: u32,
    /// Backoff base: the first retry waits up to this long (default 1 s).
    pub base_delay: Duration,
    /// Backoff cap (default 30 s).
    pub max_delay: Duration,
    /// One deadline covering every attempt and wait (default 2 min).
    pub deadline: Duration,
    /// Time allowed for one attempt, response body included (default 60 s).
    pub attempt_timeout: Duration,
    /// The most a `Retry-After` may make us wait (default 60 s).
    pub retry_after_cap: Duration,
    /// Retries may add at most this share of recent requests (default 0.2).
    pub budget_ratio: f32,
    /// ...plus this many retries per second regardless (default 1).
    pub budget_min_per_sec: u32,
    /// Largest request or response body buffered to replay or classify (default 1 MiB).
    pub body_limit: usize,
    /// Route classes on which a timeout or reset after the request was written is retried
    /// (default: reads only; a submission so retried may be paid for twice).
    pub retry_unknown_outcome: Vec<RouteClass>,
    /// The rule table.
    pub rules: Rules,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(60),
            retry_after_cap: Duration::from_secs(60),
            budget_ratio: 0.2,
            budget_min_per_sec: 1,
            body_limit: 1024 * 1024,
            retry_unknown_outcome: vec![RouteClass::Read],
            rules: Rules::default(),
        }
    }
}

/// Less time than this left before the deadline is no time for another attempt.
const MIN_ATTEMPT: Duration = Duration::from_millis(5);

/// How far back the retry budget remembers requests.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Applies [`Retry`] to a service. Clones share one retry budget.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
    metrics: Option<Arc<Metrics>>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::from_settings(RetrySettings::default())
    }
}

impl RetryLayer {
    /// A layer with the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer with these settings.
    pub fn from_settings(settings: RetrySettings) -> Self {
        let budget = Arc::new(new_budget(&settings));
        RetryLayer {
            settings: Arc::new(settings),
            budget,
            metrics: None,
        }
    }

    fn update(mut self, change: impl FnOnce(&mut RetrySettings)) -> Self {
        change(Arc::make_mut(&mut self.settings));
        self
    }

    /// Attempts in all, counting the first (at least 1).
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.update(|s| s.max_attempts = attempts.max(1))
    }

    /// Backoff base and cap.
    pub fn backoff(self, base: Duration, max: Duration) -> Self {
        self.update(|s| {
            s.base_delay = base;
            s.max_delay = max;
        })
    }

    /// One deadline covering every attempt and wait.
    pub fn deadline(self, deadline: Duration) -> Self {
        self.update(|s| s.deadline = deadline)
    }

    /// Time allowed for one attempt.
    pub fn attempt_timeout(self, timeout: Duration) -> Self {
        self.update(|s| s.attempt_timeout = timeout)
    }

    /// The rule table.
    pub fn rules(self, rules: Rules) -> Self {
        self.update(|s| s.rules = rules)
    }

    /// Retry (or not) a timeout or reset after the request was written, for `class`.
    pub fn retry_unknown_outcome(self, class: RouteClass, retry: bool) -> Self {
        self.update(|s| {
            s.retry_unknown_outcome.retain(|c| *c != class);
            if retry {
                s.retry_unknown_outcome.push(class);
            }
        })
    }

    /// Retries may add at most `ratio` of recent requests plus `min_per_sec` per second.
    pub fn budget(mut self, ratio: f32, min_per_sec: u32) -> Self {
        self = self.update(|s| {
            s.budget_ratio = ratio;
            s.budget_min_per_sec = min_per_sec;
        });
        self.budget = Arc::new(new_budget(&self.settings));
        self
    }

    /// Record retries and outcomes in `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

fn new_budget(settings: &RetrySettings) -> TpsBudget {
    // TpsBudget asserts its ranges; the config validates them, the builder clamps here.
    TpsBudget::new(
        BUDGET_WINDOW,
        settings.budget_min_per_sec.min(1_000_000),
        settings.budget_ratio.clamp(0.0, 1000.0),
    )
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            settings: Arc::clone(&self.settings),
            budget: Arc::clone(&self.budget),
            metrics: self.metrics.clone(),
        }
    }
}

/// Retries requests to `S` by the rules of its [`RetryLayer`]. See the module docs.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
    metrics: Option<Arc<Metrics>>,
}

/// Response future of [`Retry`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl<S, B, RB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt waits for readiness of its own clone of `inner`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let class = RouteClass::of(request.method(), request.uri().path());
        let span = tracing::info_span!("retry", route_class = class.as_str(), path = request.uri().path());
        let attempt = Attempts {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
            budget: Arc::clone(&self.budget),
            metrics: self.metrics.clone(),
            class,
        };
        let request = request.map(body::boxed);
        Box::pin(async move { Ok(attempt.run(request).await) }.instrument(span))
    }
}

/// How a request's body can be sent again.
enum Replay {
    /// Buffered whole: every attempt sends these bytes.
    Bytes(Bytes),
    /// Not replayable: sent once, then gone.
    Once(Option<Body>),
}

impl Replay {
    fn take(&mut self) -> Body {
        match self {
            Replay::Bytes(bytes) => body::full(bytes.clone()),
            Replay::Once(body) => body.take().unwrap_or_else(body::empty),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Replay::Bytes(_))
    }
}

/// A body read up to a bound.
enum Bounded {
    /// The whole body, within the bound.
    Whole(Bytes),
    /// Over the bound (or with trailers): what was read, followed by the rest, unread.
    Partial(Body),
}

/// Read `body` until it ends or passes `limit` bytes, without losing anything.
async fn read_bounded(mut body: Body, limit: usize) -> Result<Bounded, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Ok(Bounded::Partial(body));
    }
    // Most bodies arrive in one frame: keep it as it is, and copy only when a second
    // frame has to be joined to it.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    loop {
        let Some(frame) = body.frame().await.transpose()? else {
            let whole = match first {
                Some(bytes) if joined.is_empty() => bytes,
                _ => joined.freeze(),
            };
            return Ok(Bounded::Whole(whole));
        };
        let read_so_far = first.as_ref().map_or(0, Bytes::len) + joined.len();
        match frame.into_data() {
            Ok(data) if read_so_far + data.len() <= limit => match first.take() {
                None if joined.is_empty() => first = Some(data),
                earlier => {
                    if let Some(earlier) = earlier {
                        joined.extend_from_slice(&earlier);
                    }
                    joined.extend_from_slice(&data);
                }
            },
            Ok(data) => {
                let read = [Frame::data(take_read(first, joined)), Frame::data(data)];
                return Ok(Bounded::Partial(chain(read.into(), body)));
            }
            Err(trailers) => {
                let read = [Frame::data(take_read(first, joined)), trailers];
                return Ok(Bounded::Partial(chain(read.into(), body)));
            }
        }
    }
}

fn take_read(first: Option<Bytes>, joined: BytesMut) -> Bytes {
    first.unwrap_or_else(|| joined.freeze())
}

/// A body that yields `read` and then whatever is left of `rest`.
fn chain(read: VecDeque<Frame<Bytes>>, rest: Body) -> Body {
    let head = futures_util::stream::iter(read.into_iter().map(Ok::<_, BodyError>));
    let tail = http_body_util::BodyStream::new(rest);
    body::boxed(StreamBody::new(futures_util::StreamExt::chain(head, tail)))
}

/// A transport failure of one attempt.
#[derive(Debug)]
struct Failure {
    /// Whether the request may have reached the upstream.
    maybe_sent: bool,
    status: StatusCode,
    message: String,
    /// `connect`, `timeout` or `broken`, for logs and metrics.
    kind: &'static str,
}

impl Failure {
    fn from_error(err: BoxError) -> Failure {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        while let Some(e) = source {
            if let Some(upstream) = e.downcast_ref::<UpstreamError>() {
                return Failure {
                    maybe_sent: upstream.may_have_been_sent(),
                    status: upstream.status(),
                    message: upstream.to_string(),
                    kind: match upstream {
                        UpstreamError::Connect(_) => "connect",
                        UpstreamError::Timeout(_) => "timeout",
                        UpstreamError::Request(_) => "broken",
                    },
                };
            }
            if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                let cause = body::error_chain(client.source_or_self());
                return if client.is_connect() {
                    Failure::connect(format!("upstream connect failed: {cause}"))
                } else {
                    Failure::broken(format!("upstream request failed: {cause}"))
                };
            }
            source = e.source();
        }
        Failure::broken(format!(
            "upstream request failed: {}",
            body::error_chain(err.as_ref())
        ))
    }

    fn connect(message: String) -> Failure {
        Failure {
            maybe_sent: false,
            status: StatusCode::BAD_GATEWAY,
            message,
            kind: "connect",
        }
    }

    fn broken(message: String) -> Failure {
        Failure {
            maybe_sent: true,
            status: StatusCode::BAD_GATEWAY,
            message,
            kind: "broken",
        }
    }

    fn timeout(after: Duration) -> Failure {
        Failure {
            maybe_sent: true,
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!("upstream timed out after {}", duration::format(after)),
            kind: "timeout",
        }
    }
}

trait SourceOrSelf {
    fn source_or_self(&self) -> &(dyn std::error::Error + 'static);
}

impl SourceOrSelf for hyper_util::client::legacy::Error {
    fn source_or_self(&self) -> &(dyn std::error::Error + 'static) {
        std::error::Error::source(self).unwrap_or(self)
    }
}

/// What one attempt produced.
enum Outcome<RB> {
    /// A response, its body read up to the bound.
    Response(http::response::Parts, Bounded, std::marker::PhantomData<RB>),
    Failed(Failure),
}

/// Why the retry loop stopped while the last outcome still called for a retry.
#[derive(Clone, Copy, Debug)]
enum Stop {
    MaxAttempts,
    Deadline,
    Budget,
    NotReplayable,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Stop::MaxAttempts => "max-attempts",
            Stop::Deadline => "deadline",
            Stop::Budget => "budget",
            Stop::NotReplayable => "not-replayable",
        }
    }
}

/// The state of one request's attempts.
struct Attempts<S> {
    inner: S,
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
    metrics: Option<Arc<Metrics>>,
    class: RouteClass,
}

impl<S, RB> Attempts<S>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    async fn run(self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let settings = &*self.settings;
        let mut replay = match self.class {
            RouteClass::Submission | RouteClass::Read => {
                match read_bounded(body, settings.body_limit).await {
                    Ok(Bounded::Whole(bytes)) => Replay::Bytes(bytes),
                    Ok(Bounded::Partial(body)) => Replay::Once(Some(body)),
                    Err(err) => {
                        let msg = format!("could not read the request body: {}", body::error_chain(&err));
                        return self.finish(
                            envelope::error_response(StatusCode::BAD_REQUEST, &msg),
                            0,
                            "client-error",
                        );
                    }
                }
            }
            // Other routes retry only on connect failures of idempotent, bodiless requests.
            RouteClass::Other if is_idempotent(&parts.method) && body.is_end_stream() => {
                Replay::Bytes(Bytes::new())
            }
            RouteClass::Other => Replay::Once(Some(body)),
        };
        self.budget.deposit();
        let deadline = Instant::now() + settings.deadline;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let budget = settings
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let outcome = send_attempt(
                self.inner.clone(),
                &parts,
                replay.take(),
                budget,
                settings.body_limit,
            )
            .await;
            let (verdict_action, rule, rule_delay, rule_max, retry_after) = match &outcome {
                Outcome::Response(head, bounded, _) => {
                    if head.extensions.get::<envelope::Generated>().is_some() {
                        // Made by a layer below (the rate limiter), which has decided.
                        (Action::Fail, "proxy-generated", None, None, None)
                    } else if self.class == RouteClass::Other {
                        (Action::Success, "other-route", None, None, None)
                    } else {
                        let envelope = match bounded {
                            Bounded::Whole(bytes) => Envelope::parse(bytes),
                            Bounded::Partial(_) => None,
                        };
                        let verdict = settings.rules.classify(
                            self.class,
                            parts.uri.path(),
                            head.status,
                            envelope.as_ref(),
                        );
                        let retry_after =
                            retry_after(&head.headers, SystemTime::now(), settings.retry_after_cap);
                        (
                            verdict.action,
                            verdict.rule,
                            verdict.delay,
                            verdict.max_attempts,
                            retry_after,
                        )
                    }
                }
                Outcome::Failed(failure) => {
                    let retryable =
                        !failure.maybe_sent || settings.retry_unknown_outcome.contains(&self.class);
                    (
                        if retryable { Action::Retry } else { Action::Fail },
                        failure.kind,
                        None,
                        None,
                        None,
                    )
                }
            };
            if verdict_action != Action::Retry {
                tracing::debug!(
                    attempt,
                    outcome = verdict_action.as_str(),
                    rule,
                    "attempt finished"
                );
                return self.respond(outcome, attempt, None, verdict_action);
            }
            // The outcome calls for a retry: see whether one may be made.
            let stop = if !replay.replayable() {
                Some(Stop::NotReplayable)
            } else if attempt >= rule_max.map_or(settings.max_attempts, |m| m.min(settings.max_attempts)) {
                Some(Stop::MaxAttempts)
            } else {
                None
            };
            let backoff = Backoff::new(settings.base_delay, settings.max_delay);
            let mut wait = backoff.wait(attempt);
            if let Some(at_least) = retry_after.into_iter().chain(rule_delay).max() {
                wait = wait.max(at_least);
            }
            let stop =
                stop.or_else(|| (Instant::now() + wait + MIN_ATTEMPT > deadline).then_some(Stop::Deadline));
            let stop = stop.or_else(|| {
                if self.budget.withdraw() {
                    None
                } else {
                    if let Some(metrics) = &self.metrics {
                        metrics.retry_budget_exhausted.inc();
                    }
                    Some(Stop::Budget)
                }
            });
            if let Some(stop) = stop {
                tracing::info!(
                    attempt,
                    outcome = "retry",
                    rule,
                    stopped = stop.as_str(),
                    "not retrying"
                );
                return self.respond(outcome, attempt, Some(stop), Action::Retry);
            }
            tracing::info!(
                attempt,
                outcome = "retry",
                rule,
                wait_ms = wait.as_millis() as u64,
                "retrying"
            );
            if let Some(metrics) = &self.metrics {
                metrics.retries.inc(&rule.to_owned());
            }
            tokio::time::sleep(wait).await;
            // A wait that ended late (a busy machine) leaves no time for an attempt: one
            // started now would time out before it was even sent, and would then read as
            // an unknown outcome. Stop here with the last real answer instead.
            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT {
                tracing::info!(
                    attempt,
                    stopped = Stop::Deadline.as_str(),
                    "no time left for another attempt"
                );
                return self.respond(outcome, attempt, Some(Stop::Deadline), Action::Retry);
            }
        }
    }

    /// The response the client gets for the last outcome.
    fn respond(
        &self,
        outcome: Outcome<RB>,
        attempts: u32,
        stop: Option<Stop>,
        action: Action,
    ) -> Response<Body> {
        match outcome {
            Outcome::Response(head, bounded, _) => {
                let body = match bounded {
                    Bounded::Whole(bytes) => body::full(bytes),
                    Bounded::Partial(body) => body,
                };
                let mut response = Response::from_parts(head, body);
                if let Some(stop) = stop {
                    response
                        .headers_mut()
                        .insert(STOPPED_HEADER, HeaderValue::from_static(stop.as_str()));
                }
                let label = match (stop, action) {
                    (Some(stop), _) => stop.as_str(),
                    (None, action) => action.as_str(),
                };
                self.finish(response, attempts, label)
            }
            Outcome::Failed(failure) => {
                let (status, msg, label) = match stop {
                    _ if failure.maybe_sent && self.class == RouteClass::Submission && stop.is_none() => {
                        tracing::warn!(
                            attempts,
                            cause = %failure.message,
                            "submission outcome unknown: not resubmitting a task the upstream may have accepted"
                        );
                        (
                            StatusCode::GATEWAY_TIMEOUT,
                            format!("{OUTCOME_UNKNOWN} ({})", failure.message),
                            "outcome-unknown",
                        )
                    }
                    Some(Stop::Deadline) => (
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "retry deadline of {} reached after {attempts} attempts; last error: {}",
                            duration::format(self.settings.deadline),
                            failure.message
                        ),
                        "deadline",
                    ),
                    // Nothing was retried (retries off, or a body too large to replay):
                    // the failure speaks for itself.
                    Some(stop @ (Stop::MaxAttempts | Stop::NotReplayable)) if attempts == 1 => {
                        (failure.status, failure.message.clone(), stop.as_str())
                    }
                    Some(stop @ (Stop::MaxAttempts | Stop::Budget | Stop::NotReplayable)) => {
                        let why = match stop {
                            Stop::MaxAttempts => "gave up",
                            Stop::Budget => "retry budget exhausted",
                            _ => "request body too large to replay",
                        };
                        (
                            failure.status,
                            format!("{} ({why} after {attempts} attempts)", failure.message),
                            stop.as_str(),
                        )
                    }
                    None => (failure.status, failure.message.clone(), "transport-error"),
                };
                let mut response = envelope::error_response(status, &msg);
                if let Some(stop) = stop {
                    response
                        .headers_mut()
                        .insert(STOPPED_HEADER, HeaderValue::from_static(stop.as_str()));
                }
                self.finish(response, attempts, label)
            }
        }
    }

    fn finish(&self, mut response: Response<Body>, attempts: u32, outcome: &'static str) -> Response<Body> {
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
        if let Some(metrics) = &self.metrics {
            metrics.retry_outcomes.inc(&outcome);
        }
        response
    }
}

/// Send one attempt and read its response body up to `body_limit`, all within `budget`
/// (the attempt timeout, or what is left of the deadline).
///
/// A free function rather than a method so that its future holds no `&Attempts`, which
/// would require the inner service to be `Sync`.
async fn send_attempt<S, RB>(
    inner: S,
    parts: &http::request::Parts,
    body: Body,
    budget: Duration,
    body_limit: usize,
) -> Outcome<RB>
where
    S: Service<Request<Body>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    let exchange = async move {
        let response = inner
            .oneshot(request)
            .await
            .map_err(|e| Failure::from_error(e.into()))?;
        let (head, body) = response.into_parts();
        let bounded = read_bounded(body::boxed(body), body_limit).await.map_err(|e| {
            Failure::broken(format!(
                "upstream response body failed: {}",
                body::error_chain(&e)
            ))
        })?;
        Ok::<_, Failure>((head, bounded))
    };
    match tokio::time::timeout(budget, exchange).await {
        Ok(Ok((head, bounded))) => Outcome::Response(head, bounded, std::marker::PhantomData),
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(_) => Outcome::Failed(Failure::timeout(budget)),
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
