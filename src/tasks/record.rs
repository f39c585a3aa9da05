//! [`RecordTasks`]: put every accepted submission on the watch list before its answer
//! goes back to the client.

use std::sync::{Arc, OnceLock};

use http::{HeaderValue, Method, Request, Response, header};
use tower::{Layer, ServiceExt};

use super::{NewTask, TaskFormat, TaskStore, Usage, WatchSettings};
use crate::body::{self, Body, Bounded};
use crate::callback::{CallbackToken, Keyring, TaskSubscriber};
use crate::context::{self, BytesBody, Inner, OnSubmission, SubmissionHandler};
use crate::retry::RetryOutcome;
use crate::route::RouteClass;
use crate::settings::Live;
use crate::store::{EventSink, event_delivery};

/// What a sealed API key is sealed for ([`Keyring::seal`]).
pub const SEALED_KEY_PURPOSE: &str = "runway-proxy/task-api-key";

/// Largest submission answer read for its task id (CometAPI's are under 200 bytes).
const ANSWER_LIMIT: usize = 64 * 1024;

/// What the task guard learned of a submission before it was sent (a request extension):
/// [`RecordTasks`] records the task under this key and model, in place of the guard's
/// reservation, and records it whether or not it names a subscriber (the ledger counts
/// every task; one without a subscriber is watched for its end, and nothing relayed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// The key's hash ([`key_hash`](super::key_hash)).
    pub key_hash: String,
    /// The key's label, or its hash.
    pub key: String,
    /// The model the submission names.
    pub model: Option<String>,
    /// The guard's reservation, if it made one.
    pub reservation: Option<String>,
}

/// Marks the answer of a submission that [`RecordTasks`] recorded (a response extension):
/// its reservation, if any, became the task (or its outcome-unknown record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded;

/// Applies [`RecordTasks`]. Goes inside [`RewriteCallback`](crate::callback::RewriteCallback)
/// (which names the subscriber) and outside [`Retry`](crate::retry::Retry) (which says
/// whether the submission was accepted).
#[derive(Clone, Debug)]
pub struct RecordTasksLayer {
    shared: Arc<Recorder>,
}

/// The handler of [`RecordTasks`]: the watch list, the keys API keys are sealed with,
/// and the watch settings. Made by [`RecordTasksLayer`].
#[derive(Debug)]
pub struct Recorder {
    store: Arc<dyn TaskStore>,
    keys: Live<Keyring>,
    settings: WatchSettings,
    /// Counts a task that ends (a cancelled one), and wakes submissions waiting for a slot.
    usage: Arc<Usage>,
    /// Where a cancelled task's event goes: the relay's, once it runs.
    events: Arc<OnceLock<EventSink>>,
}

impl RecordTasksLayer {
    /// Record into `store`, sealing API keys with `keys`; a task that ends here (is
    /// cancelled) is counted in `usage`.
    pub fn new(
        store: Arc<dyn TaskStore>,
        keys: Live<Keyring>,
        settings: WatchSettings,
        usage: Arc<Usage>,
    ) -> Self {
        RecordTasksLayer {
            shared: Arc::new(Recorder {
                store,
                keys,
                settings,
                usage,
                events: Arc::default(),
            }),
        }
    }

    /// Tell subscribers of cancelled tasks through `events` (the relay's
    /// [`events`](crate::relay::Relay::events)). Set once; later calls are ignored.
    pub fn send_events_to(&self, events: EventSink) {
        let _ = self.shared.events.set(events);
    }
}

impl<S> Layer<S> for RecordTasksLayer {
    type Service = RecordTasks<S>;

    fn layer(&self, inner: S) -> RecordTasks<S> {
        OnSubmission::new(inner, Arc::clone(&self.shared))
    }
}

/// Records every accepted submission that names a subscriber on the watch list, before
/// its answer goes back; a submission whose outcome is unknown is recorded as such.
/// Other requests pass through untouched. A store that fails is logged and the answer
/// still goes back: the task exists upstream, and failing its answer would only invite
/// the client to pay for it again.
pub type RecordTasks<S> = OnSubmission<S, Recorder>;

/// What is known of a submission before it is sent.
pub struct Pending {
    format: TaskFormat,
    route: String,
    key_hash: String,
    key: String,
    model: Option<String>,
    reservation: Option<String>,
    sealed_key: Option<String>,
    subscriber: Option<String>,
    trace: Option<String>,
    callback_token: Option<i64>,
}

/// A request the recorder acts on.
pub enum Taken {
    /// A submission: recorded once accepted.
    Submission(Pending),
    /// `DELETE /runwayml/v1/tasks/{id}`: the task ends, cancelled, once it succeeds.
    Cancel(String),
}

impl SubmissionHandler for Recorder {
    type Ticket = Taken;

    fn take<B>(&self, request: &Request<B>) -> Option<Taken> {
        if request.method() == Method::DELETE {
            return request
                .uri()
                .path()
                .strip_prefix("/runwayml/v1/tasks/")
                .filter(|id| !id.is_empty() && !id.contains('/'))
                .map(|id| Taken::Cancel(id.to_owned()));
        }
        self.pending(request).map(Taken::Submission)
    }

    async fn handle<S: Inner<RB>, RB: BytesBody>(
        self: Arc<Self>,
        taken: Taken,
        inner: S,
        request: Request<Body>,
    ) -> Result<Response<Body>, S::Error> {
        let response = inner.oneshot(request).await?.map(body::boxed);
        Ok(match taken {
            Taken::Submission(pending) => self.record(pending, response).await,
            Taken::Cancel(task_id) => {
                if response.status().is_success() {
                    self.cancelled(task_id).await;
                }
                response
            }
        })
    }
}

impl Recorder {
    /// A task was cancelled upstream: it ends now (its slot free at once, the submissions
    /// waiting for one woken), and its subscriber is told `CANCELLED`, signed, like any
    /// other status. A store that fails is logged: the watcher's next poll finds the end.
    async fn cancelled(&self, task_id: String) {
        let (task, finished) = match self.store.cancelled(task_id.clone()).await {
            Ok(Some(ended)) => ended,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, task_id, "a cancelled task could not be ended on the watch list");
                return;
            }
        };
        self.usage.finished(&finished);
        tracing::info!(task_id, "task cancelled");
        let (Some(subscriber), Some(events)) = (task.subscriber.as_deref(), self.events.get()) else {
            return;
        };
        let event = serde_json::json!({
            "id": task.task_id,
            "status": "CANCELLED",
            "runway_proxy_source": "cancel",
        });
        let mut delivery = event_delivery(subscriber, bytes::Bytes::from(event.to_string()));
        delivery.trace = self.store.trace_of(task.task_id.clone()).await.ok().flatten();
        if let Err(err) = events.enqueue(delivery).await {
            tracing::warn!(error = %err, task_id = %task.task_id, "cannot store a cancelled task's event");
        }
    }

    /// The submission's details, if it is one to watch.
    fn pending<B>(&self, request: &Request<B>) -> Option<Pending> {
        let path = request.uri().path();
        if context::class_of(request) != RouteClass::Submission {
            return None;
        }
        let format = if path.starts_with("/runwayml/") {
            TaskFormat::Official
        } else {
            TaskFormat::Reverse
        };
        let submission = request.extensions().get::<Submission>();
        let subscriber = match request.extensions().get::<TaskSubscriber>() {
            Some(TaskSubscriber(url)) => Some(url.clone()),
            None if format == TaskFormat::Official => self.settings.official_callback_url.clone(),
            // No callback_url that came through the rewrite: nobody to relay to (the
            // ledger may still count it, watched through the feed).
            None => None,
        };
        if subscriber.is_none() && submission.is_none() {
            // Nobody to tell, and no ledger to count it in.
            return None;
        }
        let authorization = request.headers().get(header::AUTHORIZATION);
        let (key_hash, key, model, reservation) = match submission {
            Some(known) => (
                known.key_hash.clone(),
                known.key.clone(),
                known.model.clone(),
                known.reservation.clone(),
            ),
            None => {
                let hash = super::key_hash(authorization.map_or(&b""[..], HeaderValue::as_bytes));
                (hash.clone(), hash, None, None)
            }
        };
        Some(Pending {
            format,
            route: path.to_owned(),
            key_hash,
            key,
            model,
            reservation,
            sealed_key: authorization.map(|value| {
                self.keys
                    .with(|keys| keys.seal(SEALED_KEY_PURPOSE, value.as_bytes()))
            }),
            subscriber,
            callback_token: request
                .extensions()
                .get::<CallbackToken>()
                .map(|CallbackToken(id)| *id),
            // The submission's span, when the sidecar records one.
            trace: request
                .extensions()
                .get::<crate::trace::SpanContext>()
                .map(crate::trace::SpanContext::traceparent),
        })
    }

    async fn record(&self, pending: Pending, response: Response<Body>) -> Response<Body> {
        let (task_id, mut response) = match response.extensions().get::<RetryOutcome>().copied() {
            Some(RetryOutcome::Success) => {
                let (parts, body) = response.into_parts();
                match body::read_bounded(body, ANSWER_LIMIT).await {
                    Ok(Bounded::Whole(bytes)) => {
                        let id = accepted_task_id(pending.format, parts.status, &bytes);
                        (id, Response::from_parts(parts, body::full(bytes)))
                    }
                    Ok(Bounded::Partial(body)) => (None, Response::from_parts(parts, body)),
                    Err(err) => {
                        tracing::warn!(error = %body::error_chain(&err), "a submission's answer broke off");
                        (None, Response::from_parts(parts, body::empty()))
                    }
                }
            }
            Some(RetryOutcome::OutcomeUnknown) => {
                // No id to watch by: kept for the record (`/-/tasks?status=unknown`).
                let id = format!("unknown-{:032x}", rand::random::<u128>());
                let mut response = response;
                if self.store(pending, id, true).await {
                    response.extensions_mut().insert(Recorded);
                }
                return response;
            }
            _ => return response,
        };
        if let Some(task_id) = task_id
            && self.store(pending, task_id, false).await
        {
            response.extensions_mut().insert(Recorded);
        }
        response
    }

    /// Whether the task is on the list now.
    async fn store(&self, pending: Pending, task_id: String, outcome_unknown: bool) -> bool {
        let check_after = match pending.format {
            TaskFormat::Official => self.settings.poll_interval,
            TaskFormat::Reverse => self.settings.recover_after,
        };
        let task = NewTask {
            task_id,
            format: pending.format,
            route: pending.route,
            key_hash: pending.key_hash,
            key: pending.key,
            model: pending.model,
            reservation: pending.reservation,
            sealed_key: pending.sealed_key,
            subscriber: pending.subscriber,
            outcome_unknown,
            trace: pending.trace,
            callback_token: pending.callback_token,
        };
        match self.store.record(task, check_after).await {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(error = %err, "an accepted task could not be put on the watch list");
                false
            }
        }
    }
}

/// The id of the task an accepted submission created: `data.task_id` of a reverse-format
/// envelope whose `code` is 200, `id` of an official-format 2xx answer.
fn accepted_task_id(format: TaskFormat, status: http::StatusCode, body: &[u8]) -> Option<String> {
    if !status.is_success() {
        return None;
    }
    // Only the fields it needs, borrowed where the text has no escapes: no map of the
    // whole answer is built.
    let id = match format {
        TaskFormat::Reverse => {
            let answer: ReverseAnswer<'_> = serde_json::from_slice(body).ok()?;
            if !answer.code?.is_200() {
                return None;
            }
            answer.data?.task_id?
        }
        TaskFormat::Official => serde_json::from_slice::<OfficialAnswer<'_>>(body).ok()?.id?,
    };
    (!id.is_empty()).then(|| id.into_owned())
}

/// What [`accepted_task_id`] reads of a reverse-format envelope.
#[derive(serde::Deserialize)]
struct ReverseAnswer<'a> {
    code: Option<AnswerCode<'a>>,
    #[serde(borrow)]
    data: Option<ReverseData<'a>>,
}

#[derive(serde::Deserialize)]
struct ReverseData<'a> {
    #[serde(borrow)]
    task_id: Option<std::borrow::Cow<'a, str>>,
}

/// The envelope's `code`: 200 or `"200"` is success (anything else, or another type,
/// is not).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AnswerCode<'a> {
    Number(u64),
    #[serde(borrow)]
    Text(std::borrow::Cow<'a, str>),
    Other(serde::de::IgnoredAny),
}

impl AnswerCode<'_> {
    fn is_200(&self) -> bool {
        match self {
            AnswerCode::Number(code) => *code == 200,
            AnswerCode::Text(code) => code == "200",
            AnswerCode::Other(_) => false,
        }
    }
}

/// What [`accepted_task_id`] reads of an official-format answer.
#[derive(serde::Deserialize)]
struct OfficialAnswer<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_read_from_both_formats_only_when_accepted() {
        let ok = http::StatusCode::OK;
        let reverse = br#"{"code":200,"msg":"success","data":{"task_id":"t-1"}}"#;
        assert_eq!(
            accepted_task_id(TaskFormat::Reverse, ok, reverse).as_deref(),
            Some("t-1")
        );
        let busy = br#"{"code":500,"msg":"busy","data":{"task_id":"t-1"}}"#;
        assert_eq!(accepted_task_id(TaskFormat::Reverse, ok, busy), None);
        assert_eq!(
            accepted_task_id(TaskFormat::Official, ok, br#"{"id":"o-1"}"#).as_deref(),
            Some("o-1")
        );
        let created = http::StatusCode::CREATED;
        assert_eq!(
            accepted_task_id(TaskFormat::Official, created, br#"{"id":"o-1"}"#).as_deref(),
            Some("o-1")
        );
        let bad = http::StatusCode::BAD_REQUEST;
        assert_eq!(
            accepted_task_id(TaskFormat::Official, bad, br#"{"id":"o-1"}"#),
            None
        );
        assert_eq!(accepted_task_id(TaskFormat::Official, ok, br#"{"id":""}"#), None);
        assert_eq!(accepted_task_id(TaskFormat::Reverse, ok, b"not json"), None);
    }
}
