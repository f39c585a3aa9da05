//! Shared helpers for the integration tests: a plain HTTP client, a proxy started in
//! process against the stand-in, and a subscriber that records the callbacks it gets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use runway_proxy::app::Proxy;
use runway_proxy::body::{self, Body};
use runway_proxy::config::{Config, Overrides};
use runway_proxy::mock::{MockConfig, MockUpstream};
use tokio::sync::{Notify, oneshot};

#[cfg(feature = "cli")]
pub mod process;
pub mod services;

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn send(client: &TestClient, request: Request<Full<Bytes>>) -> Result<Reply, String> {
    let response = client.request(request).await.map_err(|e| body::error_chain(&e))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// POST `json` to `url` with a bearer token.
pub async fn post_json(client: &TestClient, url: &str, json: &serde_json::Value) -> Result<Reply, String> {
    let request = Request::post(url)
        .header("authorization", "Bearer sk-test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap();
    send(client, request).await
}

pub async fn start_mock(config: MockConfig) -> MockUpstream {
    MockUpstream::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .unwrap()
}

/// A proxy running in this process, and the means to stop it.
pub struct RunningProxy {
    pub addr: SocketAddr,
    pub webhook_addr: SocketAddr,
    /// The data directory (outbox, generated secrets), removed when the proxy is dropped.
    pub data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Begin graceful shutdown; the returned handle completes when the proxy has stopped.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("already shut down")
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Start a proxy in front of `upstream` on a free port, with `settings` as flag values.
pub async fn start_proxy(upstream: &str, settings: &[(&'static str, &str)]) -> RunningProxy {
    let mut flags = Overrides::from([
        ("listen", "127.0.0.1:0".to_owned()),
        ("upstream", upstream.to_owned()),
    ]);
    for (key, value) in settings {
        flags.insert(key, (*value).to_owned());
    }
    start_proxy_with(None, upstream, &flags).await
}

/// The proxy's `/-/metrics` text.
pub async fn metrics_text(proxy: &RunningProxy) -> String {
    let request = Request::get(proxy.url("/-/metrics"))
        .body(Full::default())
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// Start a proxy configured by `file` (TOML) and `flags`, listening on a free port.
pub async fn start_proxy_with(file: Option<&str>, upstream: &str, flags: &Overrides) -> RunningProxy {
    start_proxy_from(file, None, upstream, flags).await
}

/// Start a proxy configured by the file at `path` and `flags`, which reads that file
/// again at each reload (`POST /-/reload`).
pub async fn start_reloadable_proxy(
    path: &std::path::Path,
    upstream: &str,
    flags: &Overrides,
) -> RunningProxy {
    let text = std::fs::read_to_string(path).unwrap();
    start_proxy_from(Some(&text), Some(path), upstream, flags).await
}

async fn start_proxy_from(
    file: Option<&str>,
    path: Option<&std::path::Path>,
    upstream: &str,
    flags: &Overrides,
) -> RunningProxy {
    let data = tempfile::tempdir().unwrap();
    let mut flags = flags.clone();
    flags.entry("listen").or_insert_with(|| "127.0.0.1:0".to_owned());
    flags.insert("upstream", upstream.to_owned());
    flags
        .entry("webhook_listen")
        .or_insert_with(|| "127.0.0.1:0".to_owned());
    flags
        .entry("data_dir")
        .or_insert_with(|| data.path().display().to_string());
    let config = Config::load(file, &|_| None, &flags).unwrap();
    let proxy = Proxy::bind(&config).await.unwrap();
    if let Some(path) = path {
        proxy.reload_from(runway_proxy::app::ConfigSource::new(Some(path.to_owned()), flags));
    }
    let addr = proxy.local_addr();
    let webhook_addr = proxy.webhook_addr();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(proxy.run(async {
        let _ = stopped.await;
    }));
    RunningProxy {
        addr,
        webhook_addr,
        data,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A webhook id being answered; forgotten when dropped.
struct Open(Arc<Mutex<std::collections::HashSet<String>>>, String);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(&self.1);
    }
}

/// A webhook subscriber: records every request and answers with a settable status.
#[derive(Clone)]
pub struct Subscriber {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    /// When each request of `received` arrived, in the same order.
    arrived_at: Arc<Mutex<Vec<std::time::Instant>>>,
    status: Arc<Mutex<StatusCode>>,
    delay: Arc<Mutex<Duration>>,
    arrived: Arc<Notify>,
    /// Webhook ids being answered now, and how often one arrived while it already was.
    open: Arc<Mutex<std::collections::HashSet<String>>>,
    overlaps: Arc<std::sync::atomic::AtomicUsize>,
    /// The most webhooks answered at once.
    most_at_once: Arc<std::sync::atomic::AtomicUsize>,
}

impl Subscriber {
    pub async fn start() -> Subscriber {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let subscriber = Subscriber {
            addr,
            received: Arc::default(),
            arrived_at: Arc::default(),
            status: Arc::new(Mutex::new(StatusCode::OK)),
            delay: Arc::default(),
            arrived: Arc::default(),
            open: Arc::default(),
            overlaps: Arc::default(),
            most_at_once: Arc::default(),
        };
        let this = subscriber.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let this = this.clone();
            async move {
                // The answer is decided when the request arrives, before anyone is told
                // it arrived (a test that changes the status after seeing a request
                // changes the next answer, not this one).
                let status = *this.status.lock().unwrap();
                let delay = *this.delay.lock().unwrap();
                let (parts, body) = request.into_parts();
                let id = parts
                    .headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                {
                    let mut open = this.open.lock().unwrap();
                    if !id.is_empty() && !open.insert(id.clone()) {
                        this.overlaps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    this.most_at_once
                        .fetch_max(open.len(), std::sync::atomic::Ordering::SeqCst);
                }
                // Closed however the answer ends, a sender that hung up included.
                let _open = Open(Arc::clone(&this.open), id);
                let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                {
                    // Both under one lock's turn, so the two lists stay in step.
                    let mut received = this.received.lock().unwrap();
                    received.push((parts.headers, bytes));
                    this.arrived_at.lock().unwrap().push(std::time::Instant::now());
                }
                this.arrived.notify_waiters();
                tokio::time::sleep(delay).await;
                let mut response = Response::new(body::empty());
                *response.status_mut() = status;
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        tokio::spawn(runway_proxy::server::serve(
            listener,
            service,
            std::future::pending(),
            Duration::from_secs(1),
            runway_proxy::server::ConnectionLimits::default(),
        ));
        subscriber
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_status(&self, status: StatusCode) {
        *self.status.lock().unwrap() = status;
    }

    /// Wait this long before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// How many times a webhook arrived while the same webhook (by `webhook-id`) was
    /// still being answered: two senders at once.
    pub fn overlaps(&self) -> usize {
        self.overlaps.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most webhooks (by `webhook-id`) that were being answered at the same time;
    /// starts again from zero.
    pub fn take_most_at_once(&self) -> usize {
        self.most_at_once.swap(0, std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<(HeaderMap, Bytes)> {
        self.received.lock().unwrap().clone()
    }

    /// Every request's body with the time it arrived.
    pub fn arrivals(&self) -> Vec<(std::time::Instant, Bytes)> {
        let received = self.received.lock().unwrap();
        let times = self.arrived_at.lock().unwrap();
        times
            .iter()
            .zip(received.iter())
            .map(|(at, (_, body))| (*at, body.clone()))
            .collect()
    }

    /// Wait until at least `n` requests have arrived, or panic after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<(HeaderMap, Bytes)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("subscriber got {} requests, expected {n}", self.received().len());
            }
        }
    }
}

/// Whether a relayed request's Standard Webhooks signature verifies under `secret`.
pub fn signed_by(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let signer = runway_proxy::relay::WebhookSigner::from_secret(secret).unwrap();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let Ok(timestamp) = header("webhook-timestamp").parse() else {
        return false;
    };
    signer.verify(header("webhook-id"), timestamp, body, header("webhook-signature"))
}

/// Wait until `check` holds, polling, or panic naming `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A local address nothing listens on, and nothing will: the port stays bound (without
/// listening) for the rest of the test process, so connects are refused and no other
/// test's listener can be given the port in the meantime.
pub async fn dead_address() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// A stand-in whose tasks succeed within a few tens of milliseconds (its other settings
/// from `config`), and the URL of one succeeded task's video, as a task read gives it
/// (signed with its expiry when outputs expire).
pub async fn succeeded_output(config: MockConfig) -> (MockUpstream, String) {
    let mock = start_mock(config.step(Duration::from_millis(20))).await;
    let created = post_json(
        &client(),
        &format!("{}/runwayml/v1/image_to_video", mock.url()),
        &serde_json::json!({"promptText": "a cat", "promptImage": "https://x/y.png"}),
    )
    .await
    .unwrap();
    let id = created.json()["id"].as_str().unwrap().to_owned();
    for _ in 0..300 {
        let read = Request::get(format!("{}/runwayml/v1/tasks/{id}", mock.url()))
            .header("authorization", "Bearer sk-test")
            .body(Full::default())
            .unwrap();
        let task = send(&client(), read).await.unwrap().json();
        if task["status"] == "SUCCEEDED" {
            let url = task["output"][0].as_str().unwrap().to_owned();
            return (mock, url);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the task did not succeed");
}

/// Every file under `dir`, recursively, sorted (what an archive directory holds).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
