//! Delivery throughput of `runway-proxy serve` to 1, 10 and 100 subscribers: webhooks
//! posted to its webhook listener (as CometAPI calls back), relayed, signed, to
//! subscribers on loopback that answer 200 at once. Webhooks per second from the first
//! post to the last arrival, so storing them is in the figure as well as sending them.
//!
//!   cargo bench --bench delivery_fanout
//!   RUNWAY_BIN=/tmp/older-build cargo bench --bench delivery_fanout   # the same, another build
//!   WEBHOOKS=4000 ROUNDS=3 cargo bench --bench delivery_fanout
//!
//! Each figure is the median of ROUNDS runs, each on a fresh data directory (the
//! embedded SQLite outbox, `synchronous = FULL`).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use runway_proxy::callback::Keyring;
use tokio::sync::Notify;

const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Subscribers answering 200 at once, counting what they get.
async fn subscribers(count: usize, arrived: Arc<AtomicUsize>, done: Arc<Notify>) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for _ in 0..count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        let (arrived, done) = (Arc::clone(&arrived), Arc::clone(&done));
        let service = tower::service_fn(move |request: Request<runway_proxy::body::Body>| {
            let (arrived, done) = (Arc::clone(&arrived), Arc::clone(&done));
            async move {
                let _ = request.into_body().collect().await;
                arrived.fetch_add(1, Ordering::SeqCst);
                done.notify_waiters();
                Ok::<_, std::convert::Infallible>(Response::new(runway_proxy::body::empty()))
            }
        });
        tokio::spawn(runway_proxy::server::serve(
            listener,
            service,
            std::future::pending(),
            Duration::from_secs(1),
            runway_proxy::server::ConnectionLimits::default(),
        ));
    }
    addrs
}

/// Start the proxy binary; its webhook listener's address once it serves.
fn start(bin: &str, data: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(bin)
        .args(["serve", "--log-format", "json"])
        .env("RUST_LOG", "warn,runway_proxy=info")
        .env("RUNWAY_PROXY_LISTEN", "127.0.0.1:0")
        .env("RUNWAY_PROXY_WEBHOOK_LISTEN", "127.0.0.1:0")
        .env("RUNWAY_PROXY_UPSTREAM", "http://127.0.0.1:9")
        .env("RUNWAY_PROXY_DATA_DIR", data)
        .env("RUNWAY_PROXY_WEBHOOK_SECRET", SECRET)
        .env("RUNWAY_PROXY_CALLBACK_TOKEN_KEYS", TOKEN_KEYS)
        .env("RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut sent = false;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value["message"] == "runway-proxy serving"
            {
                let _ = tx.send(value["webhook_listen"].as_str().unwrap_or_default().to_owned());
                sent = true;
            }
        }
    });
    let webhook = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the proxy serves");
    (child, webhook)
}

/// One run: `webhooks` spread over `count` subscribers; webhooks per second.
async fn run(bin: &str, count: usize, webhooks: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let arrived = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let targets = subscribers(count, Arc::clone(&arrived), Arc::clone(&done)).await;
    let (mut child, webhook) = start(bin, dir.path());
    let keys = Keyring::parse(TOKEN_KEYS).expect("keys");
    // Tokens minted beforehand: the client's work is not the proxy's.
    let posts: Vec<(String, Bytes)> = (0..webhooks)
        .map(|n| {
            let target = format!("http://{}/hook", targets[n % count]);
            let token = keys.mint(&target);
            let body = format!(r#"{{"task_id":"task-{n}","status":"3","update_time":"1"}}"#);
            (
                format!("http://{webhook}/hooks/runway/{token}"),
                Bytes::from(body),
            )
        })
        .collect();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(posts));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (queue, client) = (Arc::clone(&queue), client.clone());
        senders.spawn(async move {
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some((url, body)) = next else { return };
                let request = Request::post(url)
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("request");
                let response = client.request(request).await.expect("posted");
                assert_eq!(response.status(), StatusCode::OK);
            }
        });
    }
    while senders.join_next().await.is_some() {}
    while arrived.load(Ordering::SeqCst) < webhooks {
        let _ = tokio::time::timeout(Duration::from_millis(100), done.notified()).await;
        assert!(started.elapsed() < Duration::from_secs(600), "deliveries stalled");
    }
    let rate = webhooks as f64 / started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    rate
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once, small.
    let quick = !std::env::args().any(|a| a == "--bench");
    let bin = std::env::var("RUNWAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_runway-proxy").to_owned());
    let webhooks = setting("WEBHOOKS", if quick { 100 } else { 2000 });
    let rounds = setting("ROUNDS", if quick { 1 } else { 3 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("delivery fan-out: {webhooks} webhooks, median of {rounds} (bin {bin})");
    for count in [1, 10, 100] {
        let mut rates: Vec<f64> = (0..rounds)
            .map(|_| runtime.block_on(run(&bin, count, webhooks)))
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        let all: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "  {count:>3} subscribers: {median:>6.0} webhooks/s  (rounds: {})",
            all.join(", ")
        );
    }
}
