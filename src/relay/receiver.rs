//! The webhook receiver: `POST /hooks/runway/{token}`, stored durably before the 2xx.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use super::RelayMetrics;
use crate::body::{self, Body, BoxError, ReadError};
use crate::callback::{Callbacks, HOOK_PATH, Keyring, token_id};
use crate::envelope;
use crate::settings::Live;
use crate::store::{Enqueued, Outbox, event};
use crate::tasks::{CallbackCheck, Confirmation, Seen, TaskStore, Usage};
use crate::trace::{Span, SpanContext, SpanKind, Tracer};

/// Receives CometAPI's callbacks and stores them in the outbox.
///
/// The token in the path is verified before anything else (a bad or forged one gets a
/// 404 and nothing is stored); the body is bounded (413 past it); the webhook is written
/// durably *before* the 2xx, and a store that fails answers 503 so the sender tries
/// again. A body that is not the documented callback shape is still stored and relayed
/// as it is (the upstream may add fields), and logged.
///
/// It is a tower `Service`, so an application can mount it in its own router at
/// `/hooks/runway/{token}`; [`Relay::receiver`](super::Relay::receiver) hands it out.
#[derive(Clone)]
pub struct WebhookReceiver {
    shared: Arc<Shared>,
}

struct Shared {
    keys: Live<Keyring>,
    token_lifetime: Duration,
    outbox: Arc<dyn Outbox>,
    body_limit: usize,
    wake: Arc<Notify>,
    metrics: Arc<RelayMetrics>,
    /// The watch list, told of each callback.
    tasks: Option<WatchList>,
    /// Checks terminal callbacks before they are relayed, once set.
    confirm: std::sync::OnceLock<Arc<dyn CallbackCheck>>,
    tracer: Tracer,
}

/// The watch list a relay tells of each callback: its store, how long a task may then go
/// silent before the feed is read, and the usage counters a finished task is counted in.
#[derive(Clone, Debug)]
pub(super) struct WatchList {
    pub(super) store: Arc<dyn TaskStore>,
    pub(super) recover_after: Duration,
    pub(super) usage: Arc<Usage>,
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("body_limit", &self.shared.body_limit)
            .finish_non_exhaustive()
    }
}

impl WebhookReceiver {
    /// A receiver that verifies tokens with `keys` and stores into `outbox`, waking the
    /// delivery workers through `wake`.
    pub(super) fn new(
        callbacks: &Callbacks,
        outbox: Arc<dyn Outbox>,
        wake: Arc<Notify>,
        metrics: Arc<RelayMetrics>,
        tasks: Option<WatchList>,
        tracer: Tracer,
    ) -> Self {
        WebhookReceiver {
            shared: Arc::new(Shared {
                keys: callbacks.keys().clone(),
                token_lifetime: callbacks.token_lifetime(),
                body_limit: callbacks.webhook_body_limit(),
                outbox,
                wake,
                metrics,
                tasks,
                confirm: std::sync::OnceLock::new(),
                tracer,
            }),
        }
    }

    /// Check terminal callbacks with `check` from now on.
    pub(super) fn confirm_with(&self, check: Arc<dyn CallbackCheck>) {
        let _ = self.shared.confirm.set(check);
    }
}

impl<B> tower::Service<Request<B>> for WebhookReceiver
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            // A trace of its own (the callback is a request of its own, maybe hours
            // later), linked to the submission's once the task is known, and recorded
            // if the submission was.
            let mut span = shared.tracer.span_to_link("webhook received", SpanKind::Server);
            let response = shared.receive(request, &mut span).await;
            span.set_int("http.response.status_code", i64::from(response.status().as_u16()));
            if !response.status().is_success() {
                span.set_error(format!("answered {}", response.status()));
            }
            Ok(response)
        })
    }
}

impl Shared {
    async fn receive<B>(&self, request: Request<B>, span: &mut Span) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Some(token) = request
            .uri()
            .path()
            .strip_prefix(HOOK_PATH)
            .filter(|t| !t.is_empty() && !t.contains('/'))
        else {
            return envelope::error_response(StatusCode::NOT_FOUND, "not a runway-proxy webhook path");
        };
        if request.method() != Method::POST {
            return envelope::error_response(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed");
        }
        let bound_to = token_id(token);
        let route = match self.keys.get().verify_fresh(token, self.token_lifetime) {
            // Only a callback token routes a webhook: the same keys sign output links
            // (`archive:` and a key), which name no subscriber.
            Ok(route) if route.url.starts_with("https://") || route.url.starts_with("http://") => route,
            Ok(_) => {
                tracing::warn!("webhook refused: the token is not a callback token");
                self.count(|m| m.webhooks_rejected.inc());
                return envelope::error_response(StatusCode::NOT_FOUND, "unknown callback token");
            }
            Err(err) => {
                // Never log the token itself: it is a bearer credential for this route.
                tracing::warn!(error = %err, "webhook refused: bad callback token");
                self.count(|m| m.webhooks_rejected.inc());
                return envelope::error_response(StatusCode::NOT_FOUND, "unknown callback token");
            }
        };
        let bytes = match body::read_to_limit(request.into_body(), self.body_limit).await {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge(limit)) => {
                let msg = format!("webhook body larger than {limit} bytes");
                return envelope::error_response(StatusCode::PAYLOAD_TOO_LARGE, &msg);
            }
            Err(ReadError::Failed(err)) => {
                let msg = format!("could not read the webhook body: {}", body::error_chain(&err));
                return envelope::error_response(StatusCode::BAD_REQUEST, &msg);
            }
        };
        self.count(|m| m.webhooks_received.inc());
        let (mut delivery, task_id, mut report) = event(&route.url, bytes);
        // The token belongs to one task: the store refuses a webhook naming another.
        delivery.token = bound_to;
        delivery.task_id.clone_from(&task_id);
        if let (true, Some(check), Some(id), Some(status)) = (
            delivery.terminal,
            self.confirm.get(),
            task_id.as_deref(),
            delivery.status.as_deref(),
        ) {
            match check.confirm(id.to_owned(), status.to_owned()).await {
                Confirmation::Confirmed => self.count(|m| m.callbacks_confirmed.inc()),
                Confirmation::Unconfirmed(why) => {
                    tracing::warn!(task_id = id, reason = %why, "a final callback could not be confirmed; relaying it as it came");
                    self.count(|m| m.callbacks_unconfirmed.inc());
                }
                Confirmation::Contradicted(upstream) => {
                    self.count(|m| m.callbacks_contradicted.inc());
                    tracing::warn!(
                        task_id = id,
                        status,
                        "a final callback the upstream contradicts: not relayed (the upstream's version is, if it has one)"
                    );
                    match upstream {
                        Some(version) => {
                            let token = delivery.token.take();
                            (delivery, _, report) = event(&route.url, version);
                            delivery.token = token;
                            delivery.task_id.clone_from(&task_id);
                        }
                        // Not finished upstream: nothing to relay yet, and the watch goes
                        // on (its recovery relays the real end).
                        None => return ok_response("not relayed: the upstream contradicts it"),
                    }
                }
            }
        }
        if span.is_recording()
            && let (Some(id), Some(watch)) = (task_id.as_deref(), &self.tasks)
        {
            match watch.store.trace_of(id.to_owned()).await {
                Ok(Some(trace)) => {
                    // Decides whether the receipt is recorded: as its submission was.
                    if let Some(submission) = SpanContext::from_traceparent(&trace) {
                        span.link(submission);
                    }
                    delivery.trace = Some(trace);
                }
                Ok(None) => {}
                Err(err) => tracing::debug!(error = %err, "no trace context for a callback's task"),
            }
        }
        if span.is_recording() {
            if let Some(id) = task_id.as_deref() {
                span.set_str("runway.task_id", id.to_owned());
            }
            if let Some(status) = delivery.status.as_deref() {
                span.set_str("runway.task.status", status.to_owned());
            }
            span.set_str("runway.webhook_id", delivery.webhook_id.clone());
        }
        let (logged_id, logged_task, logged_status) = (
            delivery.webhook_id.clone(),
            delivery.task_key.clone(),
            delivery.status.clone(),
        );
        let (status, terminal) = (delivery.status.clone(), delivery.terminal);
        match self.outbox.enqueue(delivery).await {
            Ok(outcome) => {
                let msg = match outcome {
                    Enqueued::Stored(_) => {
                        self.count(|m| m.webhooks_stored.inc());
                        self.wake.notify_waiters();
                        "stored"
                    }
                    Enqueued::Duplicate(_) => {
                        self.count(|m| m.webhooks_duplicate.inc());
                        "duplicate: already stored"
                    }
                    Enqueued::Superseded(_) => {
                        self.count(|m| m.webhooks_superseded.inc());
                        "stored: superseded by the task's final status"
                    }
                    Enqueued::Refused => {
                        // Never the token, nor the task it belongs to: only what was tried.
                        tracing::warn!(
                            task = %logged_task,
                            "webhook refused: its callback URL belongs to another task"
                        );
                        self.count(|m| m.webhooks_refused_other_task.inc());
                        return envelope::error_response(
                            StatusCode::FORBIDDEN,
                            "this callback URL belongs to another task",
                        );
                    }
                };
                if let (Some(watch), Some(task_id)) = (&self.tasks, task_id) {
                    // The task's watch: a callback came, so no need to recover it yet (or
                    // at all, once terminal). Stored already: a failure here costs at most
                    // a feed read later.
                    report.status = status;
                    report.terminal = terminal;
                    match watch
                        .store
                        .callback_seen(task_id, report, watch.recover_after)
                        .await
                    {
                        Ok(Seen::Finished(finished)) => watch.usage.finished(&finished),
                        Ok(_) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, "could not note a callback on the watch list")
                        }
                    }
                }
                // Never the token: it is a bearer credential for this route.
                tracing::info!(
                    webhook_id = %logged_id,
                    task = %logged_task,
                    status = logged_status.as_deref(),
                    outcome = msg,
                    "webhook received"
                );
                ok_response(msg)
            }
            Err(err) => {
                tracing::error!(error = %err, "webhook not stored; answering 503 so the sender retries");
                envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, "webhook not stored; try again")
            }
        }
    }

    fn count(&self, record: impl FnOnce(&RelayMetrics)) {
        record(&self.metrics);
    }
}

fn ok_response(msg: &str) -> Response<Body> {
    envelope::json_response(http::StatusCode::OK, envelope_ok(msg))
}

fn envelope_ok(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"code": 200, "msg": msg, "data": null})).unwrap_or_default()
}
