//! `runway-proxy demo`: the whole proxy at work in one process, without a CometAPI key.
//!
//! It starts the CometAPI stand-in with a realistic share of faults (lost callbacks
//! among them), the proxy in front of it, and a subscriber that verifies every relayed
//! webhook; submits tasks through the proxy, in both API formats (the official one has no
//! webhooks: the proxy polls it); waits for their results; and prints what happened. It
//! exits 0 only when every task the upstream accepted had its final status delivered to
//! the subscriber with a valid signature, and the upstream never saw a task submitted
//! twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use runway_proxy::app::Proxy;
use runway_proxy::body::{self, Body, BoxError};
use runway_proxy::config::{Config, Overrides};
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use runway_proxy::relay::WebhookSigner;

/// What the demo's subscriber saw of one task.
#[derive(Default)]
struct Seen {
    statuses: Vec<String>,
    verified: usize,
    forged: usize,
    /// Events the proxy made itself: recovered from the feed, or polled.
    recovered: usize,
    polled: usize,
    /// Results that came pointing at archived copies, and ones whose archiving failed.
    archived: usize,
    not_archived: usize,
}

/// Whether `status` ends a task: "2" failed and "3" succeeded (reverse format), or the
/// official format's ends.
fn is_final(status: &str) -> bool {
    matches!(status, "2" | "3" | "SUCCEEDED" | "FAILED" | "CANCELLED")
}

type Received = Arc<Mutex<HashMap<String, Seen>>>;

/// How the client fared with one submission.
enum Outcome {
    Accepted,
    Unknown,
    Failed(String),
}

pub async fn run(tasks: usize, seed: u64) -> Result<bool, BoxError> {
    let started = Instant::now();
    let secret = WebhookSigner::generate_secret();
    let signer = WebhookSigner::from_secret(&secret)?;
    let data = std::env::temp_dir().join(format!("runway-proxy-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);

    // The stand-in: tasks finish in under a second; faults scripted in a seeded order.
    let cometapi = MockUpstream::start(
        ([127, 0, 0, 1], 0).into(),
        MockConfig::default()
            .step(Duration::from_millis(300))
            .output_bytes(64 * 1024),
    )
    .await?;
    let mut rng = Rng(seed | 1);
    for _ in 0..tasks * 3 {
        let fault = match rng.below(100) {
            0..=11 => Fault::busy(),
            12..=18 => Fault::too_many_requests(1),
            19..=22 => Fault::Status {
                status: 502,
                retry_after: None,
                body: None,
            },
            23..=25 => Fault::ResetAfterBody,
            26..=30 => Fault::DuplicateCallbacks,
            31..=33 => Fault::OutOfOrderCallbacks,
            34..=35 => Fault::FailTask,
            36..=40 => Fault::DropCallbacks,
            _ => Fault::Pass,
        };
        cometapi.inject("/runway/pro/generate", fault, 1);
    }

    let received: Received = Arc::default();
    let subscriber = start_subscriber(signer, Arc::clone(&received)).await?;

    let flags = Overrides::from([
        ("listen", "127.0.0.1:0".to_owned()),
        ("webhook_listen", "127.0.0.1:0".to_owned()),
        ("upstream", cometapi.url()),
        ("data_dir", data.display().to_string()),
        ("webhook_secret", secret),
        ("callback.allow_private", "true".to_owned()),
        ("retry.base_delay", "200ms".to_owned()),
        ("retry.max_delay", "2s".to_owned()),
        ("limit.submit_rate", "20/s burst 5".to_owned()),
        ("limit.max_concurrency", "5".to_owned()),
        ("delivery.schedule", "0s,200ms,500ms,1s,2s".to_owned()),
        // Quicker than production (5s, 15m), so the demo ends in seconds.
        ("watch.poll_interval", "250ms".to_owned()),
        ("watch.recover_after", "2s".to_owned()),
        ("shutdown_grace", "2s".to_owned()),
        // Every succeeded task's outputs copied to a directory; the stand-in's CDN is on
        // loopback, so it is listed exactly.
        (
            "archive.url",
            format!("file://{}", data.join("outputs").display()),
        ),
        ("archive.hosts", "127.0.0.1".to_owned()),
    ]);
    let config = Config::load(None, &|_| None, &flags)?;
    let proxy = Proxy::bind(&config).await?;
    let proxy_addr = proxy.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = tokio::spawn(proxy.run(async {
        let _ = stopped.await;
    }));

    println!(
        "runway-proxy demo: {tasks} tasks through the proxy at {proxy_addr} to a CometAPI stand-in with faults; \
         results relayed to a subscriber at {subscriber}"
    );
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let progress = bar(tasks as u64, "submitting");
    let mut submissions = tokio::task::JoinSet::new();
    let limiter = Arc::new(tokio::sync::Semaphore::new(10));
    for n in 0..tasks {
        let client = client.clone();
        let limiter = Arc::clone(&limiter);
        let callback = format!("http://{subscriber}/runway-results");
        submissions.spawn(async move {
            let _slot = limiter.acquire_owned().await;
            let body = serde_json::json!({"prompt": format!("demo task #{n}"), "model": "gen4", "callback_url": callback});
            let url = format!("http://{proxy_addr}/runway/pro/generate");
            timed_submit(&client, &url, &body, None).await
        });
    }
    // A few official-format tasks too: no webhooks upstream; the proxy polls them and
    // relays each status change to the subscriber the header names.
    let official = (tasks / 10).max(2);
    for n in 0..official {
        let client = client.clone();
        let callback = format!("http://{subscriber}/runway-results");
        submissions.spawn(async move {
            let body = serde_json::json!({"model": "gen4_turbo", "promptText": format!("official demo task #{n}"),
                                          "promptImage": "https://example.com/cat.png", "ratio": "1280:720"});
            let url = format!("http://{proxy_addr}/runwayml/v1/image_to_video");
            timed_submit(&client, &url, &body, Some(&callback)).await
        });
    }
    let mut latencies = Vec::with_capacity(tasks + official);
    let (mut accepted, mut unknown, mut failed) = (0, 0, Vec::new());
    while let Some(joined) = submissions.join_next().await {
        let (outcome, latency) = joined?;
        latencies.push(latency);
        match outcome {
            Outcome::Accepted => accepted += 1,
            Outcome::Unknown => unknown += 1,
            Outcome::Failed(why) => failed.push(why),
        }
        progress.inc(1);
    }
    progress.finish_and_clear();

    // Every task the upstream accepted, including those whose answer a reset swallowed.
    let upstream_tasks = cometapi.tasks();
    let progress = bar(upstream_tasks.len() as u64, "waiting for results");
    let deadline = Instant::now() + Duration::from_secs(60);
    let finals = loop {
        let finals = {
            let seen = lock(&received);
            upstream_tasks
                .iter()
                .filter(|t| {
                    seen.get(&t.id)
                        .is_some_and(|s| s.statuses.iter().any(|st| is_final(st)))
                })
                .count()
        };
        progress.set_position(finals as u64);
        if finals == upstream_tasks.len() || Instant::now() > deadline {
            break finals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    progress.finish_and_clear();
    // Let stragglers (duplicates, superseded statuses) settle before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = scrape(&client, proxy_addr).await.unwrap_or_default();

    let mut prompts: HashMap<&str, usize> = HashMap::new();
    for task in &upstream_tasks {
        *prompts.entry(task.prompt.as_str()).or_default() += 1;
    }
    let duplicates: usize = prompts.values().map(|n| n.saturating_sub(1)).sum();
    let (archived, not_archived) = {
        let seen = lock(&received);
        (
            seen.values().map(|s| s.archived).sum::<usize>(),
            seen.values().map(|s| s.not_archived).sum::<usize>(),
        )
    };
    let (relayed, verified, forged, recovered, polled) = {
        let seen = lock(&received);
        let relayed: usize = seen.values().map(|s| s.statuses.len()).sum();
        let verified: usize = seen.values().map(|s| s.verified).sum();
        let forged: usize = seen.values().map(|s| s.forged).sum();
        let recovered: usize = seen.values().map(|s| s.recovered).sum();
        let official_done = seen
            .values()
            .filter(|s| s.polled > 0 && s.statuses.iter().any(|st| is_final(st)))
            .count();
        (relayed, verified, forged, recovered, official_done)
    };
    latencies.sort();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let counter = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
    let stats = cometapi.stats();

    let mut rows: Vec<(String, String)> = vec![
        (
            "submitted".into(),
            format!("{} ({official} in the official format)", tasks + official),
        ),
        ("accepted (client saw success)".into(), accepted.to_string()),
        (
            "outcome unknown (reset after sending; not resubmitted)".into(),
            unknown.to_string(),
        ),
        ("failed".into(), failed.len().to_string()),
        (
            "submissions received by the upstream".into(),
            stats.received("/runway/pro/generate").to_string(),
        ),
        (
            "tasks accepted by the upstream".into(),
            upstream_tasks.len().to_string(),
        ),
        (
            "duplicate submissions seen by the upstream".into(),
            duplicates.to_string(),
        ),
    ];
    for (name, value) in &metrics {
        if let Some(reason) = name
            .strip_prefix("runway_proxy_retries_total{reason=\"")
            .and_then(|r| r.strip_suffix("\"}"))
        {
            rows.push((format!("retried: {reason}"), format!("{value}")));
        }
    }
    rows.extend([
        (
            "rate-limit waits (count, total)".into(),
            format!(
                "{}, {:.2}s",
                counter("runway_proxy_limit_wait_seconds_count"),
                counter("runway_proxy_limit_wait_seconds_sum")
            ),
        ),
        (
            "callbacks received by the proxy".into(),
            format!("{}", counter("runway_proxy_webhooks_received_total")),
        ),
        (
            "duplicate callbacks dropped".into(),
            format!("{}", counter("runway_proxy_webhooks_duplicate_total")),
        ),
        (
            "stale statuses not relayed".into(),
            format!("{}", counter("runway_proxy_webhooks_superseded_total")),
        ),
        ("webhooks relayed to the subscriber".into(), relayed.to_string()),
        (
            "official-format tasks finished (events by polling)".into(),
            format!("{polled} of {official}"),
        ),
        (
            "callbacks lost upstream: results recovered from the feed".into(),
            format!(
                "{recovered} (checks: {})",
                counter("runway_proxy_task_checks_total{kind=\"recovery\"}")
            ),
        ),
        (
            "signatures verified".into(),
            format!("{verified} (bad: {forged})"),
        ),
        (
            "outputs archived (objects, bytes)".into(),
            format!(
                "{}, {:.1} MiB (to file://{}, removed at exit)",
                counter("runway_proxy_archive_objects_total"),
                counter("runway_proxy_archive_bytes_total") / (1024.0 * 1024.0),
                data.join("outputs").display()
            ),
        ),
        (
            "results relayed pointing at the copies".into(),
            format!("{archived} (not archived: {not_archived})"),
        ),
        (
            "tasks whose final status arrived".into(),
            format!("{finals} of {}", upstream_tasks.len()),
        ),
        (
            "submission latency p50 / p99".into(),
            format!("{:.0} ms / {:.0} ms", percentile(0.5), percentile(0.99)),
        ),
        (
            "elapsed".into(),
            format!("{:.1}s", started.elapsed().as_secs_f64()),
        ),
    ]);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!();
    for (name, value) in &rows {
        println!("  {name:<width$}  {value}");
    }
    for why in failed.iter().collect::<HashSet<_>>() {
        println!("  failure: {why}");
    }

    let _ = stop.send(());
    let _ = proxy_task.await;
    cometapi.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
    let ok = finals == upstream_tasks.len()
        && duplicates == 0
        && forged == 0
        && verified == relayed
        && relayed > 0
        && not_archived == 0;
    println!();
    println!(
        "{}",
        if ok {
            "OK: every accepted task's final result reached the subscriber, signed, its outputs archived; no task was submitted twice."
        } else {
            "FAILED: see the table above."
        }
    );
    Ok(ok)
}

/// Submit `body` to `url` as the demo's client would (with the subscriber in
/// `x-runway-proxy-callback-url` when given): how it ended, and how long it took.
async fn timed_submit(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: &serde_json::Value,
    callback: Option<&str>,
) -> (Outcome, Duration) {
    let mut request = Request::post(url)
        .header("authorization", "Bearer sk-demo")
        .header("content-type", "application/json");
    if let Some(callback) = callback {
        request = request.header("x-runway-proxy-callback-url", callback);
    }
    let sent = Instant::now();
    let outcome = match request.body(Full::new(Bytes::from(body.to_string()))) {
        Ok(request) => submit(client, request).await,
        Err(e) => Outcome::Failed(e.to_string()),
    };
    (outcome, sent.elapsed())
}

async fn submit(client: &Client<HttpConnector, Full<Bytes>>, request: Request<Full<Bytes>>) -> Outcome {
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(err) => return Outcome::Failed(body::error_chain(&err)),
    };
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return Outcome::Failed(err.to_string()),
    };
    let envelope: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let msg = envelope["msg"].as_str().unwrap_or_default();
    // The reverse format's envelope, or the official format's bare `{"id": ...}`.
    if envelope["code"] == 200 || envelope["id"].is_string() {
        Outcome::Accepted
    } else if msg.starts_with("outcome unknown") {
        Outcome::Unknown
    } else {
        Outcome::Failed(format!("{} {msg}", envelope["code"]))
    }
}

fn bar(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message);
    if let Ok(style) = ProgressStyle::with_template("  {msg:>20} [{bar:40}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn lock(received: &Received) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
    received.lock().unwrap_or_else(|p| p.into_inner())
}

/// A subscriber that verifies each webhook's signature and records it by task.
async fn start_subscriber(signer: WebhookSigner, received: Received) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = tower::service_fn(move |request: Request<Body>| {
        let signer = signer.clone();
        let received = Arc::clone(&received);
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
            };
            let timestamp = header("webhook-timestamp").parse().unwrap_or(0);
            let ok = signer.verify(
                header("webhook-id"),
                timestamp,
                &bytes,
                header("webhook-signature"),
            );
            let payload: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            // Reverse-format callbacks name the task `task_id`, official-format events `id`.
            let task = payload["task_id"]
                .as_str()
                .or_else(|| payload["id"].as_str())
                .unwrap_or_default()
                .to_owned();
            let mut seen = lock(&received);
            let entry = seen.entry(task).or_default();
            match payload["runway_proxy_source"].as_str() {
                Some("recovered") => entry.recovered += 1,
                Some("poll") => entry.polled += 1,
                _ => {}
            }
            match payload["runway_proxy_archive_status"].as_str() {
                Some("archived") => entry.archived += 1,
                Some(_) => entry.not_archived += 1,
                None => {}
            }
            entry
                .statuses
                .push(payload["status"].as_str().unwrap_or_default().to_owned());
            if ok {
                entry.verified += 1;
            } else {
                entry.forged += 1;
            }
            let mut response = Response::new(body::empty());
            *response.status_mut() = if ok {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            Ok::<_, Infallible>(response)
        }
    });
    tokio::spawn(runway_proxy::server::serve(
        listener,
        service,
        std::future::pending(),
        Duration::from_secs(1),
        runway_proxy::server::ConnectionLimits::default(),
    ));
    Ok(addr)
}

/// The proxy's metrics, by series name.
async fn scrape(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
) -> Result<BTreeMap<String, f64>, BoxError> {
    let response = client
        .request(Request::get(format!("http://{proxy}/-/metrics")).body(Full::default())?)
        .await?;
    let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        })
        .collect())
}

/// A tiny seeded generator (xorshift), so a demo run can be repeated exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
