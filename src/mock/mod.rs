//! A stand-in for CometAPI's Runway routes, for tests, the demo and offline development.
//!
//! [`MockUpstream`] is a real hyper server on a real socket. It accepts submissions on the
//! reverse-format routes (`/runway/pro/generate`, `video2video`, `act_one`) and the
//! official ones (`/runwayml/v1/image_to_video`, `video_to_video`), moves each task
//! through its statuses, POSTs a callback to the task's `callback_url` at each change,
//! and answers reads (`/runway/feed`, `/runwayml/v1/tasks/{id}`). Faults ([`Fault`]) are
//! scripted per route, from Rust or over the control API under `/-/mock/`; it counts
//! every request it receives and every task it accepts.
//!
//! # Example
//!
//! ```
//! use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let mock = MockUpstream::start(([127, 0, 0, 1], 0).into(), MockConfig::default()).await?;
//! // The next submission gets CometAPI's "busy" error inside an HTTP 200.
//! mock.inject("/runway/pro/generate", Fault::busy(), 1);
//! println!("stand-in at {}", mock.url());
//! assert_eq!(mock.stats().received("/runway/pro/generate"), 0);
//! mock.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Control API
//!
//! | method and path | effect |
//! |---|---|
//! | `GET /-/mock/stats` | counts: requests and accepted tasks per route, callbacks sent and failed, peak requests in flight |
//! | `POST /-/mock/faults` | queue a fault: `{"route": "/runway/pro/generate", "fault": {"kind": "envelope", "code": 500, "msg": "system busy"}, "times": 2}` (`times` 0: every request until cleared; `route` may end in `*`) |
//! | `DELETE /-/mock/faults` | clear queued faults |
//! | `POST /-/mock/reset` | clear faults, counters, recorded requests and tasks |

mod fault;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use fault::Fault;
use fault::FaultQueue;

use crate::body::{self, Body, BoxError};
use crate::envelope;

/// Largest request body the stand-in reads (the proxy's pass-through tests send several MB).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Recorded requests kept for inspection; older ones are dropped.
const MAX_RECORDED: usize = 10_000;

/// Settings of the stand-in.
#[derive(Clone, Debug)]
pub struct MockConfig {
    step: Duration,
    feed_delay: Duration,
    api_key: Option<String>,
    callback_timeout: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            step: Duration::from_secs(2),
            feed_delay: Duration::ZERO,
            api_key: None,
            callback_timeout: Duration::from_secs(10),
        }
    }
}

impl MockConfig {
    /// Time between a task's status changes: queued, running, then done (default 2 s).
    pub fn step(mut self, step: Duration) -> Self {
        self.step = step;
        self
    }

    /// How long after creation a task is still unknown to the feed (`task_not_exist`),
    /// as CometAPI's feed is right after a submission (default 0).
    pub fn feed_delay(mut self, delay: Duration) -> Self {
        self.feed_delay = delay;
        self
    }

    /// Accept only this bearer token (by default any non-empty token is accepted).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Time allowed for one callback POST (default 10 s).
    pub fn callback_timeout(mut self, timeout: Duration) -> Self {
        self.callback_timeout = timeout;
        self
    }
}

/// A request the stand-in received, as it arrived.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The body bytes (empty when a fault closed the connection before reading it).
    pub body: Bytes,
    /// When the request's headers arrived.
    pub at: Instant,
}

/// Counts kept by the stand-in.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MockStats {
    /// Requests received and tasks accepted, by path.
    pub routes: BTreeMap<String, RouteStats>,
    /// Callbacks that got a 2xx from their receiver.
    pub callbacks_sent: u64,
    /// Callbacks that failed (connection error, timeout or non-2xx).
    pub callbacks_failed: u64,
    /// The most requests that were being handled at the same time.
    pub max_in_flight: u64,
}

impl MockStats {
    /// Requests received on `path` (counted when the headers arrive, before any fault).
    pub fn received(&self, path: &str) -> u64 {
        self.routes.get(path).map_or(0, |r| r.requests)
    }

    /// Tasks accepted on `path`.
    pub fn accepted(&self, path: &str) -> u64 {
        self.routes.get(path).map_or(0, |r| r.accepted)
    }
}

/// Per-route counts.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RouteStats {
    /// Requests received.
    pub requests: u64,
    /// Tasks accepted.
    pub accepted: u64,
}

/// A callback the stand-in sent (or tried to send).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentCallback {
    /// Where it went.
    pub url: String,
    /// The exact body bytes.
    pub body: Bytes,
    /// Whether the receiver answered 2xx.
    pub accepted: bool,
}

/// A task's state as the feed would report it.
#[derive(Clone, Debug)]
pub struct TaskSnapshot {
    /// The task id.
    pub id: String,
    /// Reverse-format status: "0" queued, "1" running, "2" failed, "3" succeeded.
    pub status: &'static str,
    /// The callback URL the submission carried, if any.
    pub callback_url: Option<String>,
    /// The prompt the submission carried.
    pub prompt: String,
}

#[derive(Debug)]
struct Task {
    id: String,
    prompt: String,
    callback_url: Option<String>,
    created_at: Instant,
    create_time: u64,
    update_time: u64,
    /// 0 queued, 1 running, 2 failed, 3 succeeded.
    status: u8,
    will_fail: bool,
}

impl Task {
    fn snapshot(&self) -> TaskSnapshot {
        TaskSnapshot {
            id: self.id.clone(),
            status: self.status_str(),
            callback_url: self.callback_url.clone(),
            prompt: self.prompt.clone(),
        }
    }

    fn status_str(&self) -> &'static str {
        ["0", "1", "2", "3"][usize::from(self.status.min(3))]
    }

    /// The callback body, in CometAPI's documented shape: flat, every value a string.
    fn callback_payload(&self) -> Value {
        let done = self.status == 3;
        let media = |kind: &str, ext: &str| {
            if done {
                format!("https://cdn.mock.invalid/{kind}/{}.{ext}", self.id)
            } else {
                String::new()
            }
        };
        json!({
            "task_id": self.id,
            "status": self.status_str(),
            "prompt": self.prompt,
            "prompt_en": self.prompt,
            "video_url": media("video", "mp4"),
            "poster": media("poster", "png"),
            "last_frame": media("last_frame", "png"),
            "msg": if self.status == 2 { Value::from("generation failed") } else { Value::Null },
            "point": "320",
            "refund": if self.status == 2 { "320" } else { "0" },
            "create_time": self.create_time.to_string(),
            "update_time": self.update_time.to_string(),
        })
    }

    fn official(&self) -> Value {
        let status = match self.status {
            0 => "PENDING",
            1 => "RUNNING",
            2 => "FAILED",
            _ => "SUCCEEDED",
        };
        json!({
            "id": self.id,
            "status": status,
            "createdAt": self.create_time,
            "output": if self.status == 3 { json!([format!("https://cdn.mock.invalid/video/{}.mp4", self.id)]) } else { json!([]) },
            "failure": if self.status == 2 { Value::from("generation failed") } else { Value::Null },
            "failureCode": if self.status == 2 { Value::from("INTERNAL") } else { Value::Null },
            "progress": match self.status { 0 => 0.0, 1 => 0.5, _ => 1.0 },
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    faults: FaultQueue,
    routes: BTreeMap<String, RouteStats>,
    recorded: VecDeque<RecordedRequest>,
    tasks: HashMap<String, Task>,
    callbacks_sent: u64,
    callbacks_failed: u64,
    sent_callbacks: Vec<SentCallback>,
    in_flight: u64,
    max_in_flight: u64,
}

#[derive(Debug)]
struct State {
    config: MockConfig,
    inner: Mutex<Inner>,
    callback_client: Client<HttpConnector, Full<Bytes>>,
    shutdown: watch::Receiver<bool>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can't leave `Inner` half-updated in a way that
        // matters to a test double; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running stand-in. Dropping it stops the server.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Bind `addr` (port 0 picks a free port) and start serving.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, shutdown) = watch::channel(false);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let state = Arc::new(State {
            config,
            inner: Mutex::new(Inner::default()),
            callback_client: Client::builder(TokioExecutor::new()).build(connector),
            shutdown: shutdown.clone(),
        });
        let service = MockService(Arc::clone(&state));
        let mut signal = shutdown;
        let server = tokio::spawn(crate::server::serve(
            listener,
            service,
            async move {
                let _ = signal.wait_for(|stopped| *stopped).await;
            },
            Duration::from_secs(1),
        ));
        Ok(MockUpstream {
            addr,
            state,
            stop,
            server: Some(server),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Disturb the next `times` requests to `route` (0: every request until cleared).
    /// `route` is a path, a prefix ending in `*`, or `*`.
    pub fn inject(&self, route: &str, fault: Fault, times: u32) {
        self.state.lock().faults.push(route, fault, times);
    }

    /// Drop every queued fault.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        stats(&self.state.lock())
    }

    /// The requests received so far (the most recent 10,000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().recorded.iter().cloned().collect()
    }

    /// Every callback sent so far, in order, with its exact bytes.
    pub fn callbacks(&self) -> Vec<SentCallback> {
        self.state.lock().sent_callbacks.clone()
    }

    /// The state of task `id`, if it exists.
    pub fn task(&self, id: &str) -> Option<TaskSnapshot> {
        self.state.lock().tasks.get(id).map(Task::snapshot)
    }

    /// Every task accepted so far.
    pub fn tasks(&self) -> Vec<TaskSnapshot> {
        self.state.lock().tasks.values().map(Task::snapshot).collect()
    }

    /// Forget faults, counters, recorded requests and tasks.
    pub fn reset(&self) {
        *self.state.lock() = Inner::default();
    }

    /// Stop serving and stop every task's lifecycle.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn stats(inner: &Inner) -> MockStats {
    MockStats {
        routes: inner.routes.clone(),
        callbacks_sent: inner.callbacks_sent,
        callbacks_failed: inner.callbacks_failed,
        max_in_flight: inner.max_in_flight,
    }
}

/// The connection is dropped without an answer (a scripted reset).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by the stand-in's fault script")]
struct Reset;

#[derive(Clone, Debug)]
struct MockService(Arc<State>);

impl tower::Service<Request<Body>> for MockService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            if request.uri().path().starts_with("/-/mock/") {
                return Ok(control(&state, request).await);
            }
            let _in_flight = InFlight::enter(&state);
            handle(&state, request)
                .await
                .map_err(|reset| -> BoxError { Box::new(reset) })
        })
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> Self {
        let mut inner = state.lock();
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

async fn handle(state: &Arc<State>, request: Request<Body>) -> Result<Response<Body>, Reset> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let at = Instant::now();
    let fault = {
        let mut inner = state.lock();
        inner.routes.entry(path.clone()).or_default().requests += 1;
        inner.faults.take(&path)
    };
    let fault = fault.filter(|f| *f != Fault::Pass);
    if fault == Some(Fault::ResetBeforeBody) {
        record(state, &parts, Bytes::new(), at);
        return Err(Reset);
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return Ok(reverse_error(
                StatusCode::BAD_REQUEST,
                400,
                &format!("cannot read request body: {err}"),
            ));
        }
    };
    record(state, &parts, bytes.clone(), at);
    let task_fault = match fault {
        Some(Fault::Delay { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            None
        }
        Some(Fault::Envelope { status, code, msg }) => {
            let body = json!({ "code": code, "msg": msg, "data": null });
            return Ok(json_response(status_or_500(status), &body));
        }
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => {
            let status = status_or_500(status);
            let body = body.map_or_else(
                || envelope::error_body(status, status.canonical_reason().unwrap_or("error")),
                String::into_bytes,
            );
            let mut response = json_response_bytes(status, body);
            if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return Ok(response);
        }
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            let mut response = Response::new(body::full(body));
            *response.status_mut() = status_or_500(status);
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    response.headers_mut().append(name, value);
                }
            }
            return Ok(response);
        }
        other => other,
    };
    let reset_after = task_fault == Some(Fault::ResetAfterBody);
    let task_fault = task_fault.filter(Fault::is_task_fault);
    let response = route(state, &parts, &bytes, task_fault);
    if reset_after { Err(Reset) } else { Ok(response) }
}

fn record(state: &State, parts: &http::request::Parts, body: Bytes, at: Instant) {
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let mut inner = state.lock();
    if inner.recorded.len() == MAX_RECORDED {
        inner.recorded.pop_front();
    }
    inner.recorded.push_back(RecordedRequest {
        method: parts.method.clone(),
        uri,
        headers: parts.headers.clone(),
        body,
        at,
    });
}

fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Dispatch a request that no fault answered.
fn route(
    state: &Arc<State>,
    parts: &http::request::Parts,
    body: &[u8],
    fault: Option<Fault>,
) -> Response<Body> {
    let path = parts.uri.path();
    let method = &parts.method;
    let reverse = matches!(
        path,
        "/runway/pro/generate" | "/runway/pro/video2video" | "/runway/pro/act_one"
    );
    let official = matches!(
        path,
        "/runwayml/v1/image_to_video" | "/runwayml/v1/video_to_video"
    );
    let task_read = path
        .strip_prefix("/runwayml/v1/tasks/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let known = (*method == Method::POST && (reverse || official || path == "/runway/feed"))
        || (*method == Method::GET && task_read.is_some());
    if !known {
        return reverse_error(
            StatusCode::NOT_FOUND,
            404,
            &format!("no route {method} {path} on the CometAPI stand-in"),
        );
    }
    if !authorized(&state.config, &parts.headers) {
        return if official || task_read.is_some() {
            json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "Unauthorized: a valid bearer token is required"}),
            )
        } else {
            reverse_error(
                StatusCode::UNAUTHORIZED,
                401,
                "invalid token: an Authorization: Bearer <key> header is required",
            )
        };
    }
    if let Some(id) = task_read {
        return match state.lock().tasks.get(id) {
            Some(task) => json_response(StatusCode::OK, &task.official()),
            None => json_response(StatusCode::NOT_FOUND, &json!({"error": "Task not found"})),
        };
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return if official {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "the body must be a JSON object"}),
            )
        } else {
            reverse_error(
                StatusCode::BAD_REQUEST,
                400,
                "invalid_request: the body must be a JSON object",
            )
        };
    };
    if path == "/runway/feed" {
        return feed(state, &fields);
    }
    let callback_url = fields
        .get("callback_url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    if reverse && callback_url.is_none() {
        return json_response(
            StatusCode::OK,
            &json!({"code": 400, "msg": "callback_url_empty", "data": null}),
        );
    }
    let prompt = ["prompt", "promptText"]
        .iter()
        .find_map(|k| fields.get(*k).and_then(Value::as_str))
        .unwrap_or_default();
    let id = create_task(state, path, prompt, callback_url.map(str::to_owned), fault);
    if official {
        json_response(StatusCode::OK, &json!({ "id": id }))
    } else {
        json_response(
            StatusCode::OK,
            &json!({"code": 200, "msg": "success", "data": {"task_id": id}, "exec_time": 0.01}),
        )
    }
}

fn authorized(config: &MockConfig, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    config.api_key.as_ref().is_none_or(|key| key.as_bytes() == token)
}

fn feed(state: &State, fields: &serde_json::Map<String, Value>) -> Response<Body> {
    let id = fields.get("task_id").and_then(Value::as_str).unwrap_or_default();
    let inner = state.lock();
    match inner.tasks.get(id) {
        Some(task) if task.created_at.elapsed() >= state.config.feed_delay => {
            let mut data = task.callback_payload();
            let word = match task.status {
                0 => "queued",
                1 => "running",
                2 => "failed",
                _ => "succeeded",
            };
            data["state"] = Value::from(word);
            json_response(
                StatusCode::OK,
                &json!({"code": 200, "msg": "success", "data": data}),
            )
        }
        _ => json_response(
            StatusCode::OK,
            &json!({"code": 404, "msg": "task_not_exist", "data": null}),
        ),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn create_task(
    state: &Arc<State>,
    path: &str,
    prompt: &str,
    callback_url: Option<String>,
    fault: Option<Fault>,
) -> String {
    let id = task_id();
    let now = unix_now();
    {
        let mut inner = state.lock();
        inner.routes.entry(path.to_owned()).or_default().accepted += 1;
        inner.tasks.insert(
            id.clone(),
            Task {
                id: id.clone(),
                prompt: prompt.to_owned(),
                callback_url,
                created_at: Instant::now(),
                create_time: now,
                update_time: now,
                status: 0,
                will_fail: fault == Some(Fault::FailTask),
            },
        );
    }
    let plan = match fault {
        Some(Fault::DuplicateCallbacks) => CallbackPlan::Duplicate,
        Some(Fault::OutOfOrderCallbacks) => CallbackPlan::OutOfOrder,
        _ => CallbackPlan::Normal,
    };
    tokio::spawn(lifecycle(Arc::clone(state), id.clone(), plan));
    id
}

/// A random id in the UUID v4 text form CometAPI uses.
fn task_id() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum CallbackPlan {
    Normal,
    Duplicate,
    OutOfOrder,
}

/// Move a task through running to its end, one step apart, sending a callback per change.
async fn lifecycle(state: Arc<State>, id: String, plan: CallbackPlan) {
    let mut shutdown = state.shutdown.clone();
    let mut held_back = None;
    for _ in 0..2 {
        tokio::select! {
            () = tokio::time::sleep(state.config.step) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
        let (url, payload) = {
            let mut inner = state.lock();
            let Some(task) = inner.tasks.get_mut(&id) else {
                return;
            };
            task.status = match task.status {
                0 => 1,
                _ if task.will_fail => 2,
                _ => 3,
            };
            task.update_time = unix_now();
            (task.callback_url.clone(), task.callback_payload())
        };
        let Some(url) = url else { continue };
        let body = Bytes::from(payload.to_string());
        match plan {
            CallbackPlan::Normal => send_callback(&state, &url, body).await,
            CallbackPlan::Duplicate => {
                send_callback(&state, &url, body.clone()).await;
                send_callback(&state, &url, body).await;
            }
            CallbackPlan::OutOfOrder => match held_back.take() {
                None => held_back = Some(body),
                Some(earlier) => {
                    send_callback(&state, &url, body).await;
                    send_callback(&state, &url, earlier).await;
                }
            },
        }
    }
}

async fn send_callback(state: &State, url: &str, body: Bytes) {
    let request = Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()));
    let outcome = match request {
        Ok(request) => {
            match tokio::time::timeout(
                state.config.callback_timeout,
                state.callback_client.request(request),
            )
            .await
            {
                Ok(Ok(response)) if response.status().is_success() => Ok(()),
                Ok(Ok(response)) => Err(format!("receiver answered {}", response.status())),
                Ok(Err(err)) => Err(body::error_chain(&err)),
                Err(_) => Err("timed out".to_owned()),
            }
        }
        Err(err) => Err(format!("invalid callback URL: {err}")),
    };
    let mut inner = state.lock();
    inner.sent_callbacks.push(SentCallback {
        url: url.to_owned(),
        body,
        accepted: outcome.is_ok(),
    });
    match outcome {
        Ok(()) => inner.callbacks_sent += 1,
        Err(reason) => {
            inner.callbacks_failed += 1;
            tracing::debug!(%reason, "stand-in callback failed");
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    json_response_bytes(status, value.to_string().into_bytes())
}

fn json_response_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, envelope::JSON);
    response
}

/// A reverse-format error: the envelope with `code`, under HTTP `status`.
fn reverse_error(status: StatusCode, code: u16, msg: &str) -> Response<Body> {
    json_response(status, &json!({"code": code, "msg": msg, "data": null}))
}

/// The control API under `/-/mock/`.
async fn control(state: &State, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/-/mock/stats") => {
            let stats = stats(&state.lock());
            json_response(
                StatusCode::OK,
                &serde_json::to_value(stats).unwrap_or(Value::Null),
            )
        }
        (&Method::POST, "/-/mock/faults") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Inject {
                route: String,
                fault: Fault,
                #[serde(default = "one")]
                times: u32,
            }
            fn one() -> u32 {
                1
            }
            let bytes = match Limited::new(body, 64 * 1024).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    return reverse_error(StatusCode::BAD_REQUEST, 400, &format!("cannot read body: {err}"));
                }
            };
            match serde_json::from_slice::<Inject>(&bytes) {
                Ok(inject) => {
                    state
                        .lock()
                        .faults
                        .push(&inject.route, inject.fault, inject.times);
                    json_response(
                        StatusCode::OK,
                        &json!({"code": 200, "msg": "fault queued", "data": null}),
                    )
                }
                Err(err) => reverse_error(StatusCode::BAD_REQUEST, 400, &format!("invalid fault: {err}")),
            }
        }
        (&Method::DELETE, "/-/mock/faults") => {
            state.lock().faults.clear();
            json_response(
                StatusCode::OK,
                &json!({"code": 200, "msg": "faults cleared", "data": null}),
            )
        }
        (&Method::POST, "/-/mock/reset") => {
            *state.lock() = Inner::default();
            json_response(
                StatusCode::OK,
                &json!({"code": 200, "msg": "reset", "data": null}),
            )
        }
        (method, path) => reverse_error(
            StatusCode::NOT_FOUND,
            404,
            &format!("no control route {method} {path}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_look_like_uuids() {
        let id = task_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(id, task_id());
    }
}
