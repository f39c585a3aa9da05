//! Several `runway-proxy serve` processes sharing one PostgreSQL outbox and one Redis, as
//! replicas behind a load balancer run: one quota and one concurrency cap at the
//! upstream, the relay's promises across processes, a replica killed with SIGKILL, and
//! the database going away under a running replica.
//! The servers are the real ones `scripts/test-services` starts.
#![cfg(all(feature = "cli", feature = "postgres", feature = "redis"))]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::process::{Running, serve};
use common::services::{fresh_database, redis_url};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::callback::Keyring;
use runway_proxy::mock::{Fault, MockConfig};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";

/// One `serve` process.
struct Replica {
    process: Running,
    listen: String,
    webhook: String,
}

impl Replica {
    /// Start a replica on `database`, forwarding to `upstream`, with `extra` settings
    /// (environment variables), and wait until it serves.
    fn start(upstream: &str, database: &str, extra: &[(&str, &str)]) -> Replica {
        let mut command = serve();
        command
            .args(["--log-format", "json"])
            .env("RUNWAY_PROXY_LISTEN", "127.0.0.1:0")
            .env("RUNWAY_PROXY_THREADS", "1")
            .env("RUNWAY_PROXY_UPSTREAM", upstream)
            .env("RUNWAY_PROXY_DATABASE_URL", database)
            .env("RUNWAY_PROXY_REDIS_URL", redis_url())
            .env("RUNWAY_PROXY_WEBHOOK_SECRET", SECRET)
            .env("RUNWAY_PROXY_CALLBACK_TOKEN_KEYS", TOKEN_KEYS)
            .env("RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS", "true");
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut process = Running::spawn(&mut command);
        let serving = tokio::task::block_in_place(|| process.wait_for_log("runway-proxy serving"));
        let field = |name: &str| serving[name].as_str().unwrap().to_owned();
        Replica {
            listen: field("listen"),
            webhook: field("webhook_listen"),
            process,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// POST a webhook for `subscriber` the way CometAPI does, to this replica's listener.
    async fn post_webhook(&self, subscriber: &str, body: &Bytes) -> StatusCode {
        let token = Keyring::parse(TOKEN_KEYS).unwrap().mint(subscriber);
        let request = Request::post(format!("http://{}/hooks/runway/{token}", self.webhook))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        match send(&client(), request).await {
            Ok(reply) => reply.status,
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        let request = Request::get(self.url(path)).body(Full::default()).unwrap();
        send(&client(), request).await.unwrap()
    }

    fn kill(&self) {
        self.process.signal("KILL");
    }
}

/// A Redis database of its own (by index) for one test, emptied: its keys (the quota
/// and cap names are fixed) meet no other test's.
async fn own_redis(index: u8) -> String {
    let url = format!("{}{index}", redis_url());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut connection).await.unwrap();
    url
}

const FEED: &str = "/runway/feed";

/// A task the stand-in knows, so that feed reads of it are answered at the first attempt.
async fn known_task(mock: &runway_proxy::mock::MockUpstream) -> String {
    let created = post_json(
        &client(),
        &format!("{}/runway/pro/generate", mock.url()),
        &json!({"prompt": "a cat", "model": "gen4_turbo", "callback_url": "http://127.0.0.1:9/hook"}),
    )
    .await
    .unwrap();
    created.json()["data"]["task_id"].as_str().unwrap().to_owned()
}

async fn read_feed(replica: &str, task_id: &str) -> Reply {
    let request = Request::post(format!("http://{replica}{FEED}"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-replicas")
        .body(Full::new(Bytes::from(json!({"task_id": task_id}).to_string())))
        .unwrap();
    send(&client(), request).await.unwrap()
}

/// A 5/s quota given to three replicas is 5/s at the upstream, not 15/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_over_three_replicas_holds_at_the_upstream() {
    let mock = start_mock(MockConfig::default()).await;
    let database = fresh_database().await;
    let redis = own_redis(4).await;
    let task_id = known_task(&mock).await;
    let settings = [
        ("RUNWAY_PROXY_READ_RATE_LIMIT", "5/s burst 1"),
        ("RUNWAY_PROXY_REDIS_URL", redis.as_str()),
        ("RUNWAY_PROXY_REDIS_FALLBACK", "refuse"),
    ];
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&mock.url(), &database, &settings))
        .collect();
    let run_for = Duration::from_secs(10);
    let started = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for replica in &replicas {
        for _ in 0..3 {
            let (listen, task_id) = (replica.listen.clone(), task_id.clone());
            clients.push(tokio::spawn(async move {
                let mut answered = 0u32;
                while started.elapsed() < run_for {
                    let reply = read_feed(&listen, &task_id).await;
                    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
                    answered += 1;
                }
                answered
            }));
        }
    }
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let reached = mock.stats().received(FEED) as f64;
    let expected = 1.0 + 5.0 * elapsed;
    assert_eq!(reached as u32, answered, "every answer came from the upstream");
    assert!(
        (reached - expected).abs() <= expected * 0.1,
        "{reached} feed reads reached the upstream in {elapsed:.1}s through 3 replicas; 5/s allows {expected:.0}"
    );
}

/// A concurrency cap of 2 given to three replicas is 2 at the upstream; and the slots a
/// replica held when it was killed are free again once their leases lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_holds_across_replicas_and_outlives_a_killed_one() {
    let mock = start_mock(MockConfig::default()).await;
    let database = fresh_database().await;
    let redis = own_redis(5).await;
    let task_id = known_task(&mock).await;
    // Each read takes the upstream 100 ms: long enough to pile up if the cap leaked.
    mock.inject(FEED, Fault::delay(Duration::from_millis(100)), 0);
    let settings = [
        ("RUNWAY_PROXY_MAX_CONCURRENCY", "2"),
        ("RUNWAY_PROXY_REDIS_URL", redis.as_str()),
        ("RUNWAY_PROXY_REDIS_FALLBACK", "refuse"),
        ("RUNWAY_PROXY_MAX_WAIT", "30s"),
    ];
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&mock.url(), &database, &settings))
        .collect();
    let reads = (0..24).map(|n| {
        let (listen, task_id) = (replicas[n % 3].listen.clone(), task_id.clone());
        tokio::spawn(async move { read_feed(&listen, &task_id).await.status })
    });
    for status in futures_util::future::join_all(reads).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        mock.stats().max_in_flight,
        2,
        "three replicas with a cap of 2 had more (or never 2) requests at the upstream at once"
    );
    // Every slot was given back when its response ended, not left to lapse.
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    eventually("every slot given back", Duration::from_secs(2), async || {
        let held: u64 = redis::cmd("ZCARD")
            .arg("runway-proxy:slots:global")
            .query_async(&mut connection)
            .await
            .unwrap();
        held == 0
    })
    .await;

    // The first replica takes both slots with reads that hang, and is killed.
    mock.clear_faults();
    mock.inject(FEED, Fault::delay(Duration::from_secs(60)), 2);
    let before = mock.stats().received(FEED);
    let hanging: Vec<_> = (0..2)
        .map(|_| {
            let (listen, task_id) = (replicas[0].listen.clone(), task_id.clone());
            tokio::spawn(async move { read_feed(&listen, &task_id).await })
        })
        .collect();
    eventually("both slots taken", Duration::from_secs(10), async || {
        mock.stats().received(FEED) == before + 2
    })
    .await;
    replicas[0].kill();
    let started = tokio::time::Instant::now();
    let reply = read_feed(&replicas[1].listen, &task_id).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a slot is free again: {:?}",
        reply.body
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for a killed replica's lease to lapse"
    );
    for request in hanging {
        request.abort();
    }
}

fn task_webhook(task: &str, status: &str, update_time: u64) -> Bytes {
    Bytes::from(
        json!({"task_id": task, "status": status, "update_time": update_time.to_string(), "video_url": ""})
            .to_string(),
    )
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn verified(headers: &http::HeaderMap, body: &[u8]) -> bool {
    signed_by(SECRET, headers, body)
}

/// A webhook acknowledged by a replica that then dies mid-delivery is delivered by
/// another replica once the dead one's lease runs out: signed, the same bytes, the same
/// message id (so the subscriber can tell it is the same webhook).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_acknowledged_by_a_killed_replica_is_delivered_by_another() {
    let mock = start_mock(MockConfig::default()).await;
    let database = fresh_database().await;
    let subscriber = Subscriber::start().await;
    // The first replica's attempt hangs at the subscriber until the replica is gone.
    subscriber.set_delay(Duration::from_secs(60));
    // Attempts of 1 s: a claim is leased for 2 x 1 s + 5 s.
    let settings = [("RUNWAY_PROXY_DELIVERY_TIMEOUT", "1s")];
    let first = Replica::start(&mock.url(), &database, &settings);
    let hook = subscriber.url("/hook?tenant=7");
    let body = task_webhook("task-killed", "3", 1_700_000_000);
    assert_eq!(
        first.post_webhook(&hook, &body).await,
        StatusCode::OK,
        "stored, acknowledged"
    );
    let attempt = subscriber.wait_for(1, Duration::from_secs(10)).await;
    first.kill();
    let killed_at = tokio::time::Instant::now();
    subscriber.set_delay(Duration::ZERO);

    let second = Replica::start(&mock.url(), &database, &settings);
    let received = subscriber.wait_for(2, Duration::from_secs(30)).await;
    let (headers, delivered) = &received[1];
    assert!(
        killed_at.elapsed() >= Duration::from_secs(3),
        "not before the dead replica's lease ran out"
    );
    assert_eq!(delivered, &body, "exactly the payload acknowledged");
    assert!(verified(headers, delivered), "signed");
    assert_eq!(header(headers, "webhook-id"), header(&attempt[0].0, "webhook-id"));
    // Every replica sees the outbox: the survivor lists it as delivered.
    eventually("the delivery recorded", Duration::from_secs(5), async || {
        let page = second.get("/-/deliveries?state=delivered").await.json();
        page["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
}

/// Three replicas relaying at once from one outbox, each taking its own share of the
/// callbacks: every webhook reaches the subscriber exactly once (none is sent by two
/// replicas at the same time, or twice), and a task's statuses arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_deliver_one_webhook_twice_or_at_once() {
    const TASKS: u64 = 30;
    let mock = start_mock(MockConfig::default()).await;
    let database = fresh_database().await;
    let subscriber = Subscriber::start().await;
    // Slow enough answers that racing claims would show.
    subscriber.set_delay(Duration::from_millis(20));
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&mock.url(), &database, &[]))
        .collect();
    let hook = subscriber.url("/hook");
    let mut sent = Vec::new();
    for n in 0..TASKS {
        for (status, at) in [("1", 100), ("3", 200)] {
            let body = task_webhook(&format!("task-{n}"), status, at);
            let replica = &replicas[(n as usize + at as usize) % replicas.len()];
            assert_eq!(replica.post_webhook(&hook, &body).await, StatusCode::OK);
            sent.push(body);
        }
    }
    eventually(
        "every terminal status delivered",
        Duration::from_secs(30),
        async || {
            let received = subscriber.received();
            let terminal = received
                .iter()
                .filter(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["status"] == "3")
                .count();
            terminal as u64 == TASKS
        },
    )
    .await;
    // Let anything sent twice arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = subscriber.received();
    assert_eq!(
        subscriber.overlaps(),
        0,
        "a webhook was sent by two senders at once"
    );
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for (headers, body) in &received {
        assert!(verified(headers, body));
        assert!(sent.contains(body), "an unknown body was delivered");
        *by_id.entry(header(headers, "webhook-id").to_owned()).or_default() += 1;
        let value: Value = serde_json::from_slice(body).unwrap();
        order
            .entry(value["task_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(value["status"].as_str().unwrap().to_owned());
    }
    assert!(
        by_id.values().all(|&n| n == 1),
        "delivered more than once: {by_id:?}"
    );
    for (task, statuses) in &order {
        // The running status may be superseded by the terminal one, never come after it.
        assert!(
            statuses == &["1", "3"] || statuses == &["3"],
            "{task}: {statuses:?}"
        );
    }
    // And the work was shared: more than one replica delivered.
    let mut delivering = 0;
    for replica in &replicas {
        let metrics = replica.get("/-/metrics").await;
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let delivered = text
            .lines()
            .find(|l| l.starts_with("runway_proxy_deliveries_total{result=\"delivered\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        if delivered > 0.0 {
            delivering += 1;
        }
    }
    assert!(delivering >= 2, "only {delivering} replica delivered anything");
}

/// A TCP relay in front of PostgreSQL that the test can cut: the database "goes away"
/// for one replica, over the wire, while the server itself keeps serving other tests.
struct Cutter {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cutter {
    async fn start(target: SocketAddr) -> Cutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cutter = Cutter {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            links: Arc::default(),
        };
        let (open, links) = (Arc::clone(&cutter.open), Arc::clone(&cutter.links));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links.lock().unwrap().push(link.abort_handle());
            }
        });
        cutter
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// With its database gone, a replica acknowledges no webhook (503: the sender keeps it
/// and tries again) and says it is not ready; when the database is back, both recover
/// on their own and the webhook sent again is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_database_a_replica_answers_503_and_is_not_ready() {
    let mock = start_mock(MockConfig::default()).await;
    let database = fresh_database().await;
    let rest = database.strip_prefix("postgres://").unwrap();
    let (user, rest) = rest.split_once('@').unwrap();
    let (host, name) = rest.split_once('/').unwrap();
    let cutter = Cutter::start(host.parse().unwrap()).await;
    let through_cutter = format!("postgres://{user}@{}/{name}", cutter.addr);
    let subscriber = Subscriber::start().await;
    let replica = Replica::start(
        &mock.url(),
        &through_cutter,
        &[("RUNWAY_PROXY_DATABASE_TIMEOUT", "1s")],
    );
    let hook = subscriber.url("/hook");
    assert_eq!(replica.get("/-/readyz").await.status, StatusCode::OK);

    cutter.cut();
    let body = task_webhook("task-db-down", "3", 1);
    assert_eq!(
        replica.post_webhook(&hook, &body).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing is acknowledged that is not stored"
    );
    eventually("not ready", Duration::from_secs(10), async || {
        let ready = replica.get("/-/readyz").await;
        ready.status == StatusCode::SERVICE_UNAVAILABLE && ready.json()["status"] == "outbox unavailable"
    })
    .await;
    assert!(subscriber.received().is_empty());

    cutter.restore();
    eventually("ready again", Duration::from_secs(15), async || {
        replica.get("/-/readyz").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(replica.post_webhook(&hook, &body).await, StatusCode::OK);
    let received = subscriber.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].1, body);
}

/// The watch list is the replicas' together: an official-format task submitted through a
/// replica that is then SIGKILLed still gets its events, from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_watched_by_a_killed_replica_is_finished_by_another() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(500))).await;
    let database = fresh_database().await;
    let subscriber = Subscriber::start().await;
    let settings = [("RUNWAY_PROXY_TASK_POLL_INTERVAL", "200ms")];
    let first = Replica::start(&mock.url(), &database, &settings);
    let second = Replica::start(&mock.url(), &database, &settings);
    let request = Request::post(first.url("/runwayml/v1/image_to_video"))
        .header("authorization", "Bearer sk-replicas")
        .header("content-type", "application/json")
        .header("x-runway-proxy-callback-url", subscriber.url("/events"))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gen4_turbo","promptImage":"https://example.com/a.png"}"#,
        )))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    first.kill();
    eventually("the final event", Duration::from_secs(20), async || {
        subscriber.received().iter().any(|(headers, body)| {
            verified(headers, body) && String::from_utf8_lossy(body).contains("SUCCEEDED")
        })
    })
    .await;
    // The event is stored, and may be delivered, before the check that found it records
    // the task as done: the list catches up within moments.
    eventually("the task listed as done", Duration::from_secs(5), async || {
        let done = second.get("/-/tasks?status=done").await.json();
        done["tasks"].as_array().map(Vec::len) == Some(1)
    })
    .await;
}

/// `--max-tasks-in-flight` counts tasks in the shared store: three replicas with a limit
/// of 3 before an account that runs 3 at once never have a task throttled upstream, and
/// every submission, waiting on whichever replica it reached, completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_limit_holds_across_replicas() {
    let mock = start_mock(
        MockConfig::default()
            .step(Duration::from_millis(150))
            .max_running(3),
    )
    .await;
    let database = fresh_database().await;
    let settings = [
        ("RUNWAY_PROXY_MAX_TASKS_IN_FLIGHT", "3"),
        ("RUNWAY_PROXY_MAX_WAIT", "30s"),
    ];
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&mock.url(), &database, &settings))
        .collect();
    let subscriber = Subscriber::start().await;
    let submissions = (0..9).map(|n| {
        let url = replicas[n % 3].url("/runway/pro/generate");
        let body = json!({"prompt": "a cat", "model": "gen4", "callback_url": subscriber.url("/hook")});
        tokio::spawn(async move { post_json(&client(), &url, &body).await.unwrap().status })
    });
    for status in futures_util::future::join_all(submissions).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    eventually("9 results relayed", Duration::from_secs(30), async || {
        subscriber
            .received()
            .iter()
            .filter(|(_, body)| serde_json::from_slice::<Value>(body).is_ok_and(|e| e["status"] == "3"))
            .count()
            == 9
    })
    .await;
    let stats = mock.stats();
    assert_eq!(stats.accepted("/runway/pro/generate"), 9);
    assert!(
        stats.peak_unfinished <= 3,
        "{} unfinished at once",
        stats.peak_unfinished
    );
    assert_eq!(stats.throttled, 0);
}
