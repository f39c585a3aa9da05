//! A stand-in for CometAPI's Runway routes, for tests, the demo and offline development.
//!
//! [`MockUpstream`] is a real hyper server on a real socket. It accepts submissions on the
//! reverse-format routes (`/runway/pro/generate`, `video2video`, `act_one`) and the
//! official ones (`/runwayml/v1/image_to_video`, `video_to_video`), moves each task
//! through its statuses, POSTs a callback to the task's `callback_url` at each change,
//! and answers reads (`/runway/feed`, `/runwayml/v1/tasks/{id}`). A succeeded task's
//! outputs are real bytes it serves itself under `/cdn/` (see
//! [`MockConfig::output_bytes`]), and can expire. Faults ([`Fault`]) are
//! scripted per route, from Rust or over the control API under `/-/mock/`; it counts
//! every request it receives and every task it accepts. Available with the `mock`
//! feature (on in the default `cli` build and in this crate's own tests).
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

mod answer;
mod control;
mod fault;
mod lifecycle;
mod outputs;
mod resources;
mod routes;
mod service;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::settings::setters;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use fault::Fault;
use service::MockService;
use state::{Inner, State, Task};

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
    max_running: Option<usize>,
    pub(super) output_bytes: u64,
    pub(super) outputs_expire_after: Option<Duration>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            step: Duration::from_secs(2),
            feed_delay: Duration::ZERO,
            api_key: None,
            callback_timeout: Duration::from_secs(10),
            max_running: None,
            output_bytes: 256 * 1024,
            outputs_expire_after: None,
        }
    }
}

impl MockConfig {
    setters! {
        /// Time between a task's status changes: queued, running, then done (default 2 s).
        step(step: Duration) => step;
        /// How long after creation a task is still unknown to the feed (`task_not_exist`),
        /// as CometAPI's feed is right after a submission (default 0).
        feed_delay(delay: Duration) => feed_delay;
        /// Accept only this bearer token (by default any non-empty token is accepted).
        api_key(key: impl Into<String>) => api_key = Some(key.into());
        /// Time allowed for one callback POST (default 10 s).
        callback_timeout(timeout: Duration) => callback_timeout;
        /// Run at most `tasks` generations at once, as a Runway account's tier does: a task
        /// accepted past it waits as `THROTTLED` (reverse format: still `"0"`, queued) until
        /// one ends, then starts its steps (default: no limit).
        max_running(tasks: usize) => max_running = Some(tasks);
        /// Size of each output a succeeded task's URLs serve (default 256 KiB): generated
        /// as it is sent, so any size costs no memory.
        output_bytes(bytes: u64) => output_bytes;
        /// Sign output URLs with an expiry this long after they are handed out (in a
        /// callback, a feed answer, a task read) and answer 403 after it, as a signed CDN
        /// URL does; reading the task again gives fresh URLs (default: never expire).
        outputs_expire_after(lifetime: Duration) => outputs_expire_after = Some(lifetime);
    }
}

/// A request the stand-in received, as it arrived.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
#[non_exhaustive]
pub struct MockStats {
    /// Requests received and tasks accepted, by path.
    pub routes: BTreeMap<String, RouteStats>,
    /// Callbacks that got a 2xx from their receiver.
    pub callbacks_sent: u64,
    /// Callbacks that failed (connection error, timeout or non-2xx).
    pub callbacks_failed: u64,
    /// The most requests that were being handled at the same time.
    pub max_in_flight: u64,
    /// The most tasks unfinished at the same time (throttled ones included).
    pub peak_unfinished: u64,
    /// Tasks that waited as `THROTTLED` under [`MockConfig::max_running`].
    pub throttled: u64,
    /// What each key was charged and refunded, by key hash
    /// ([`key_hash`](crate::tasks::key_hash) of its `Authorization` value).
    pub keys: BTreeMap<String, KeyUsage>,
}

/// What the stand-in charged one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Tasks accepted.
    pub tasks: u64,
    /// Points charged (at acceptance).
    pub points: u64,
    /// Points refunded (when a task failed).
    pub refunded: u64,
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
#[non_exhaustive]
pub struct RouteStats {
    /// Requests received.
    pub requests: u64,
    /// Tasks accepted.
    pub accepted: u64,
}

/// A callback the stand-in sent (or tried to send).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
pub struct TaskSnapshot {
    /// The task id.
    pub id: String,
    /// Reverse-format status: "0" queued, "1" running, "2" failed, "3" succeeded.
    pub status: &'static str,
    /// Points it costs.
    pub points: u64,
    /// Whether it is waiting as `THROTTLED`.
    pub throttled: bool,
    /// The callback URL the submission carried, if any.
    pub callback_url: Option<String>,
    /// The prompt the submission carried.
    pub prompt: String,
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
            outputs: state::OutputUrls::new(format!("http://{addr}"), config.outputs_expire_after),
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
            crate::server::ConnectionLimits::default(),
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

    /// Send task `id`'s callback for its current status now, as a late callback would
    /// arrive (after [`Fault::DropCallbacks`], say). `false`: no such task, or it has no
    /// `callback_url`.
    pub async fn send_callback_now(&self, id: &str) -> bool {
        let (url, payload) = {
            let inner = self.state.lock();
            match inner.tasks.get(id) {
                Some(task) => (
                    task.callback_url.clone(),
                    task.callback_payload(&self.state.outputs),
                ),
                None => return false,
            }
        };
        let Some(url) = url else { return false };
        lifecycle::send_callback(&self.state, &url, bytes::Bytes::from(payload.to_string())).await;
        true
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
        peak_unfinished: inner.peak_unfinished,
        throttled: inner.throttled,
        keys: inner.keys.clone(),
    }
}
