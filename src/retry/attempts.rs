//! One request's attempts: send, judge the outcome, decide whether and when to go again,
//! and answer. Each step is a small function; [`Attempts::run`] only strings them together.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::time::Instant;
use tower::retry::budget::Budget;
use tower::{Service, ServiceExt};

use super::layer::Shared;
use super::{ATTEMPTS_HEADER, Action, Backoff, OUTCOME_UNKNOWN, RetryOutcome, STOPPED_HEADER};
use crate::body::{self, Body, BodyError, Bounded, BoxError};
use crate::context::SubmissionBody;
use crate::duration;
use crate::envelope::{self, Code, Envelope};
use crate::route::RouteClass;
use crate::trace::{Span, SpanKind};
use crate::upstream::{UpstreamError, retry_after};

/// Less time than this left before the deadline is no time for another attempt.
const MIN_ATTEMPT: Duration = Duration::from_millis(5);

/// How a request's body can be sent again.
enum Replay {
    /// Buffered whole: every attempt sends these bytes.
    Bytes(Bytes),
    /// Not replayable: sent once, then gone.
    Once(Option<Body>),
}

impl Replay {
    /// Buffer what may be retried: submissions and reads within the body limit, and
    /// bodiless idempotent requests on other routes (retried on connect failures only).
    async fn prepare(
        class: RouteClass,
        parts: &http::request::Parts,
        body: Body,
        limit: usize,
    ) -> Result<Replay, BodyError> {
        // The context's buffer, when it has one within this layer's bound: the body is
        // those very bytes, so they are replayed without reading it again.
        if let Some(buffered) = parts.extensions.get::<SubmissionBody>()
            && buffered.bytes().len() <= limit
        {
            return Ok(Replay::Bytes(buffered.bytes().clone()));
        }
        let method = &parts.method;
        match class {
            RouteClass::Submission | RouteClass::Read => match body::read_bounded(body, limit).await? {
                Bounded::Whole(bytes) => Ok(Replay::Bytes(bytes)),
                Bounded::Partial(body) => Ok(Replay::Once(Some(body))),
            },
            RouteClass::Other if is_idempotent(method) && body.is_end_stream() => {
                Ok(Replay::Bytes(Bytes::new()))
            }
            RouteClass::Other => Ok(Replay::Once(Some(body))),
        }
    }

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

/// What one attempt produced.
enum Outcome {
    /// A response, its body read up to the bound.
    Response(http::response::Parts, Bounded),
    /// No response.
    Failed(UpstreamError),
}

/// The verdict on one attempt, with what a retry of it must respect.
#[derive(Debug, PartialEq, Eq)]
struct Judgement<'a> {
    action: Action,
    /// The rule or failure kind that decided, for logs and metrics.
    rule: &'a str,
    /// Wait at least this long before the retry (a rule's delay, a `Retry-After`).
    min_wait: Option<Duration>,
    /// The rule's cap on attempts.
    max_attempts: Option<u32>,
}

/// Why the retry loop stopped while the last outcome still called for a retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    fn outcome(self) -> RetryOutcome {
        match self {
            Stop::MaxAttempts => RetryOutcome::MaxAttempts,
            Stop::Deadline => RetryOutcome::Deadline,
            Stop::Budget => RetryOutcome::Budget,
            Stop::NotReplayable => RetryOutcome::NotReplayable,
        }
    }
}

/// The state of one request's attempts.
pub(super) struct Attempts<S> {
    inner: S,
    shared: Arc<Shared>,
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
    pub(super) fn new(inner: S, shared: Arc<Shared>, class: RouteClass) -> Self {
        Attempts { inner, shared, class }
    }

    pub(super) async fn run(self, request: Request<Body>) -> Response<Body> {
        let settings = &self.shared.settings;
        let (parts, body) = request.into_parts();
        let mut replay = match Replay::prepare(self.class, &parts, body, settings.body_limit).await {
            Ok(replay) => replay,
            Err(err) => {
                let msg = format!("could not read the request body: {}", body::error_chain(&err));
                let refusal = envelope::error_response_for(parts.uri.path(), StatusCode::BAD_REQUEST, &msg);
                return self.finish(refusal, 0, RetryOutcome::ClientError);
            }
        };
        self.shared.budget.deposit();
        let deadline = Instant::now() + settings.deadline;
        let tracer = &self.shared.tracer;
        let parent = if tracer.is_on() {
            crate::trace::parent_of(&parts.extensions, &parts.headers)
        } else {
            None
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let time = settings
                .attempt_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            // Only Runway routes are judged by their body; any other streams through.
            let read_limit = (self.class != RouteClass::Other).then_some(settings.body_limit);
            let mut span = tracer.span("upstream attempt", SpanKind::Client, parent);
            let traceparent = span
                .context()
                .and_then(|context| HeaderValue::try_from(context.traceparent()).ok());
            let outcome = send_attempt(
                self.inner.clone(),
                &parts,
                replay.take(),
                time,
                read_limit,
                traceparent,
            )
            .await;
            let judgement = self.judge(parts.uri.path(), &outcome);
            if span.is_recording() {
                describe_attempt(&mut span, self.class, attempt, &outcome, &judgement);
            }
            // The attempt's span ends here: the wait before the next one is not its.
            drop(span);
            if judgement.action != Action::Retry {
                tracing::debug!(
                    attempt,
                    outcome = judgement.action.as_str(),
                    rule = judgement.rule,
                    "attempt finished"
                );
                return self.respond(parts.uri.path(), outcome, attempt, None, judgement.action);
            }
            let wait = match self.next_wait(&replay, attempt, &judgement, deadline) {
                Ok(wait) => wait,
                Err(stop) => {
                    tracing::info!(
                        route_class = self.class.as_str(),
                        path = parts.uri.path(),
                        attempt,
                        outcome = "retry",
                        rule = judgement.rule,
                        stopped = stop.as_str(),
                        "not retrying"
                    );
                    return self.respond(parts.uri.path(), outcome, attempt, Some(stop), Action::Retry);
                }
            };
            tracing::info!(
                route_class = self.class.as_str(),
                path = parts.uri.path(),
                attempt,
                outcome = "retry",
                rule = judgement.rule,
                wait_ms = wait.as_millis() as u64,
                "retrying"
            );
            self.shared.metrics.retries.inc(&judgement.rule.to_owned());
            tokio::time::sleep(wait).await;
            // A wait that ended late (a busy machine) leaves no time for an attempt: one
            // started now would time out before it was even sent, and would then read as
            // an unknown outcome. Stop here with the last real answer instead.
            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT {
                tracing::info!(
                    route_class = self.class.as_str(),
                    path = parts.uri.path(),
                    attempt,
                    stopped = Stop::Deadline.as_str(),
                    "no time left for another attempt"
                );
                return self.respond(
                    parts.uri.path(),
                    outcome,
                    attempt,
                    Some(Stop::Deadline),
                    Action::Retry,
                );
            }
        }
    }

    /// What an attempt's outcome calls for.
    fn judge<'a>(&'a self, path: &str, outcome: &Outcome) -> Judgement<'a> {
        let settings = &self.shared.settings;
        let decided = |action, rule| Judgement {
            action,
            rule,
            min_wait: None,
            max_attempts: None,
        };
        match outcome {
            // Made by a layer below (the rate limiter, which already waited its bound).
            Outcome::Response(head, _) if head.extensions.get::<envelope::Generated>().is_some() => {
                decided(Action::Fail, "proxy-generated")
            }
            Outcome::Response(..) if self.class == RouteClass::Other => {
                decided(Action::Success, "other-route")
            }
            Outcome::Response(head, bounded) => {
                let envelope = match bounded {
                    Bounded::Whole(bytes) => Envelope::parse(bytes),
                    Bounded::Partial(_) => None,
                };
                let verdict = settings
                    .rules
                    .classify(self.class, path, head.status, envelope.as_ref());
                let retry_after = retry_after(&head.headers, SystemTime::now(), settings.retry_after_cap);
                Judgement {
                    action: verdict.action,
                    rule: verdict.rule,
                    min_wait: retry_after.into_iter().chain(verdict.delay).max(),
                    max_attempts: verdict.max_attempts,
                }
            }
            Outcome::Failed(failure) => {
                let retryable =
                    !failure.may_have_been_sent() || settings.unknown_outcome.contains(&self.class);
                let action = if retryable { Action::Retry } else { Action::Fail };
                decided(action, failure.kind())
            }
        }
    }

    /// How long to wait before the next attempt, or why there will be none.
    fn next_wait(
        &self,
        replay: &Replay,
        attempt: u32,
        judgement: &Judgement<'_>,
        deadline: Instant,
    ) -> Result<Duration, Stop> {
        let settings = &self.shared.settings;
        if !replay.replayable() {
            return Err(Stop::NotReplayable);
        }
        let max_attempts = judgement
            .max_attempts
            .map_or(settings.max_attempts, |m| m.min(settings.max_attempts));
        if attempt >= max_attempts {
            return Err(Stop::MaxAttempts);
        }
        let backoff = Backoff::new(settings.base_delay, settings.max_delay).wait(attempt);
        let wait = judgement
            .min_wait
            .map_or(backoff, |at_least| backoff.max(at_least));
        if Instant::now() + wait + MIN_ATTEMPT > deadline {
            return Err(Stop::Deadline);
        }
        if !self.shared.budget.withdraw() {
            self.shared.metrics.budget_exhausted.inc();
            return Err(Stop::Budget);
        }
        Ok(wait)
    }

    /// The response the client gets for the last outcome, marked with whether the client
    /// itself may retry it.
    fn respond(
        &self,
        path: &str,
        outcome: Outcome,
        attempts: u32,
        stop: Option<Stop>,
        action: Action,
    ) -> Response<Body> {
        let (mut response, label) = match outcome {
            Outcome::Response(head, bounded) => {
                let generated = head.extensions.get::<envelope::Generated>().is_some();
                let label = match (stop, action) {
                    (Some(stop), _) => stop.outcome(),
                    (None, Action::Success) => RetryOutcome::Success,
                    (None, _) => RetryOutcome::Fail,
                };
                let mut response = match bounded {
                    Bounded::Whole(bytes) => {
                        let status = self.surfaced_status(head.status, action, &bytes);
                        let mut response = Response::from_parts(head, body::full(bytes));
                        *response.status_mut() = status;
                        response
                    }
                    Bounded::Partial(body) => Response::from_parts(head, body),
                };
                // A failure the proxy stands behind (a rule said so, or it stopped
                // retrying): a blind retry by the client would only repeat it, and for a
                // submission it could pay twice. What a layer below made (the limiter's
                // 429) carries its own advice.
                if !generated && (stop.is_some() || action != Action::Success) {
                    envelope::should_retry(&mut response, false);
                }
                (response, label)
            }
            Outcome::Failed(failure) => {
                let (mut response, label) = self.failure_response(path, &failure, attempts, stop);
                let outage = matches!(stop, Some(Stop::Budget | Stop::Deadline));
                if !failure.may_have_been_sent() && !outage {
                    // Nothing reached the upstream: trying again later is safe.
                    envelope::should_retry(&mut response, true);
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                } else {
                    envelope::should_retry(&mut response, false);
                }
                (response, label)
            }
        };
        if let Some(stop) = stop {
            response
                .headers_mut()
                .insert(STOPPED_HEADER, HeaderValue::from_static(stop.as_str()));
        }
        self.finish(response, attempts, label)
    }

    /// With `retry.surface_envelope_errors`, a failure reported inside an HTTP 200 is
    /// answered with the HTTP status its envelope code names (502 when the code is not an
    /// HTTP error status), so HTTP clients such as the Runway SDKs raise an error.
    fn surfaced_status(&self, status: StatusCode, action: Action, body: &Bytes) -> StatusCode {
        if !self.shared.settings.surface_envelope_errors
            || status != StatusCode::OK
            || action == Action::Success
        {
            return status;
        }
        let Some(code) = Envelope::parse(body).and_then(|e| e.code) else {
            return status;
        };
        if code.is_success() {
            return status;
        }
        match code {
            Code::Int(n) => u16::try_from(n)
                .ok()
                .filter(|n| (400..=599).contains(n))
                .and_then(|n| StatusCode::from_u16(n).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            Code::Str(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The error for a last attempt that got no response.
    fn failure_response(
        &self,
        path: &str,
        failure: &UpstreamError,
        attempts: u32,
        stop: Option<Stop>,
    ) -> (Response<Body>, RetryOutcome) {
        let (status, msg, label) = match stop {
            None if failure.may_have_been_sent() && self.class == RouteClass::Submission => {
                tracing::warn!(
                    attempts,
                    cause = %failure,
                    "submission outcome unknown: not resubmitting a task the upstream may have accepted"
                );
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("{OUTCOME_UNKNOWN} ({failure})"),
                    RetryOutcome::OutcomeUnknown,
                )
            }
            None => (
                failure.status(),
                failure.to_string(),
                RetryOutcome::TransportError,
            ),
            Some(Stop::Deadline) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "retry deadline of {} reached after {attempts} attempts; last error: {failure}",
                    duration::format(self.shared.settings.deadline),
                ),
                RetryOutcome::Deadline,
            ),
            // Nothing was retried (retries off, or a body too large to replay): the
            // failure speaks for itself.
            Some(stop @ (Stop::MaxAttempts | Stop::NotReplayable)) if attempts == 1 => {
                (failure.status(), failure.to_string(), stop.outcome())
            }
            Some(stop) => {
                let why = match stop {
                    Stop::MaxAttempts => "gave up",
                    Stop::Budget => "retry budget exhausted",
                    _ => "request body too large to replay",
                };
                (
                    failure.status(),
                    format!("{failure} ({why} after {attempts} attempts)"),
                    stop.outcome(),
                )
            }
        };
        (envelope::error_response_for(path, status, &msg), label)
    }

    fn finish(&self, mut response: Response<Body>, attempts: u32, outcome: RetryOutcome) -> Response<Body> {
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER, attempts_value(attempts));
        // For the idempotency record above, which keys submissions only: how this one
        // ended. (Other classes skip it: an insert can allocate the extensions map.)
        if self.class == RouteClass::Submission {
            response.extensions_mut().insert(outcome);
        }
        self.shared.metrics.finished(outcome);
        response
    }
}

/// What an attempt's span says of it: the rule that decided, the status, the envelope
/// code, and how long it waited in the rate limiter.
fn describe_attempt(
    span: &mut Span,
    class: RouteClass,
    attempt: u32,
    outcome: &Outcome,
    judgement: &Judgement<'_>,
) {
    span.set_str("runway.route_class", class.as_str());
    span.set_int("runway.attempt", i64::from(attempt));
    span.set_str("runway.retry.action", judgement.action.as_str());
    span.set_str("runway.retry.rule", judgement.rule.to_owned());
    match outcome {
        Outcome::Response(head, bounded) => {
            span.set_int("http.response.status_code", i64::from(head.status.as_u16()));
            if let Bounded::Whole(bytes) = bounded
                && let Some(code) = Envelope::parse(bytes).and_then(|e| e.code)
            {
                span.set_str("runway.envelope.code", code.to_string());
            }
            if let Some(waited) = head.extensions.get::<crate::trace::LimitWaited>() {
                span.set_millis("runway.limit.wait_ms", waited.0);
            }
            if judgement.action != Action::Success {
                span.set_error(format!("{} ({})", judgement.action.as_str(), judgement.rule));
            }
        }
        Outcome::Failed(failure) => {
            span.set_str("error.type", failure.kind());
            span.set_error(failure.to_string());
        }
    }
}

/// Send one attempt and read its response body up to `body_limit`, all within `time`
/// (the attempt timeout, or what is left of the deadline).
///
/// A free function rather than a method so that its future holds no `&Attempts`, which
/// would require the inner service to be `Sync`.
async fn send_attempt<S, RB>(
    inner: S,
    parts: &http::request::Parts,
    body: Body,
    time: Duration,
    read_limit: Option<usize>,
    traceparent: Option<HeaderValue>,
) -> Outcome
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
    if let Some(traceparent) = traceparent {
        // The upstream's parent is this attempt.
        request
            .headers_mut()
            .insert(crate::trace::TRACEPARENT, traceparent);
    }
    let exchange = async move {
        let response = inner
            .oneshot(request)
            .await
            .map_err(|e| UpstreamError::from_service_error(e.into()))?;
        let (head, body) = response.into_parts();
        let bounded = match read_limit {
            Some(limit) => body::read_bounded(body::boxed(body), limit)
                .await
                .map_err(UpstreamError::response_body)?,
            None => Bounded::Partial(body::boxed(body)),
        };
        Ok::<_, UpstreamError>((head, bounded))
    };
    match tokio::time::timeout(time, exchange).await {
        Ok(Ok((head, bounded))) => Outcome::Response(head, bounded),
        Ok(Err(failure)) => Outcome::Failed(failure),
        Err(_) => Outcome::Failed(UpstreamError::Timeout(time)),
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The attempt count as a header value: a static one for the counts that occur (no
/// allocation), a formatted one past them.
fn attempts_value(attempts: u32) -> HeaderValue {
    const COUNTS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match COUNTS.get(attempts as usize) {
        Some(count) => HeaderValue::from_static(count),
        None => HeaderValue::from(attempts),
    }
}
