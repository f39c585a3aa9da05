//! Per-subscriber delivery, end to end over loopback: the proxy (SQLite outbox in a
//! temporary directory) relaying to real subscribers: one slow, one that never answers,
//! one down, one healthy. A bad subscriber delays only itself; a failing one is paused,
//! probed and resumed; dead letters are recovered in bulk, once.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::callback::Keyring;
use runway_proxy::config::Overrides;
use runway_proxy::mock::MockConfig;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";

async fn proxy(extra: &[(&'static str, &str)]) -> RunningProxy {
    let mock = start_mock(MockConfig::default()).await;
    let mut flags = Overrides::from([
        ("webhook_secret", SECRET.to_owned()),
        ("callback.token_keys", TOKEN_KEYS.to_owned()),
        ("callback.allow_private", "true".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    // The stand-in is not needed past the start: webhooks are posted as CometAPI would.
    std::mem::forget(mock);
    proxy
}

/// POST one webhook for task `task` to `target` through a token of its own, as CometAPI
/// calls back; `seq` orders one task's webhooks.
async fn post_webhook(proxy: &RunningProxy, target: &str, task: &str, seq: u32) {
    let token = Keyring::parse(TOKEN_KEYS).unwrap().mint(target);
    let body = json!({"task_id": task, "status": "1", "update_time": seq.to_string(), "seq": seq});
    let request = Request::post(format!("http://{}/hooks/runway/{token}", proxy.webhook_addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

/// POST `tasks` webhooks to `target`, 50 at a time.
async fn backlog(proxy: &RunningProxy, target: &str, prefix: &str, tasks: usize) {
    for chunk in (0..tasks).collect::<Vec<_>>().chunks(50) {
        let tasks: Vec<String> = chunk.iter().map(|n| format!("{prefix}-{n}")).collect();
        let posts = tasks.iter().map(|task| post_webhook(proxy, target, task, 1));
        futures_util::future::join_all(posts).await;
    }
}

/// A subscriber that accepts connections and never answers.
async fn never_answers() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    format!("http://{addr}/hook")
}

async fn admin(proxy: &RunningProxy, method: &str, path: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(proxy.url(path))
        .body(Full::default())
        .unwrap();
    send(&client(), request).await.unwrap()
}

async fn subscriber_report(proxy: &RunningProxy, url: &str) -> Value {
    let listed = admin(proxy, "GET", "/-/subscribers").await.json();
    listed["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == url)
        .cloned()
        .unwrap_or_else(|| panic!("no subscriber {url} in {listed}"))
}

fn task_of(body: &Bytes) -> String {
    let body: Value = serde_json::from_slice(body).unwrap();
    body["task_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_or_silent_subscriber_delays_only_itself() {
    let proxy = proxy(&[]).await;
    let slow = Subscriber::start().await;
    slow.set_delay(Duration::from_secs(8));
    let silent = never_answers().await;
    let healthy = Subscriber::start().await;
    backlog(&proxy, &slow.url("/hook"), "slow", 150).await;
    backlog(&proxy, &silent, "silent", 1000).await;
    // Let the bad subscribers take every slot they can.
    slow.wait_for(8, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent = HashMap::new();
    for n in 0..20 {
        let task = format!("healthy-{n}");
        sent.insert(task.clone(), Instant::now());
        post_webhook(&proxy, &healthy.url("/hook"), &task, 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = healthy.wait_for(20, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 20);
    let mut waits: Vec<Duration> = healthy
        .arrivals()
        .iter()
        .map(|(at, body)| at.duration_since(sent[&task_of(body)]))
        .collect();
    waits.sort();
    let p90 = waits[waits.len() * 9 / 10 - 1];
    assert!(
        p90 < Duration::from_secs(1),
        "the healthy subscriber waited {p90:?} (p90) beside a backlog of 150 slow and 1000 silent: {waits:?}"
    );
    // Each bad subscriber had at most its cap (8) of attempts at once.
    assert!(slow.take_most_at_once() <= 8);
    let report = subscriber_report(&proxy, &slow.url("/hook")).await;
    assert!(report["in_flight"].as_u64().unwrap() <= 8, "{report}");
    assert!(report["backlog"].as_u64().unwrap() > 100, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_subscriber_is_paused_probed_and_resumed_in_order() {
    let proxy = proxy(&[
        ("delivery.pause_after", "3"),
        ("delivery.probe_interval", "1s"),
        ("delivery.schedule", "0s,100ms,100ms,100ms,100ms,100ms"),
    ])
    .await;
    let down = Subscriber::start().await;
    down.set_status(StatusCode::SERVICE_UNAVAILABLE);
    let target = down.url("/hook");
    // Six tasks, two webhooks each: a task's second goes after its first.
    for seq in 1..=2 {
        for task in 0..6 {
            post_webhook(&proxy, &target, &format!("task-{task}"), seq).await;
        }
    }
    eventually("the subscriber is paused", Duration::from_secs(10), async || {
        subscriber_report(&proxy, &target).await["state"] != "active"
    })
    .await;
    let report = subscriber_report(&proxy, &target).await;
    assert_eq!(report["paused_reason"], "failures", "{report}");
    assert!(report["last_error"].as_str().unwrap().contains("503"), "{report}");
    // Paused: one probe per second, never two at once, and the deliveries spend nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = down.received().len();
    down.take_most_at_once();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let probes = down.received().len() - before;
    assert!(
        (2..=4).contains(&probes),
        "{probes} probes in 3.5 s at one per second"
    );
    assert_eq!(down.take_most_at_once(), 1, "one probe at a time");
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("runway_proxy_subscriber_pauses_total{reason=\"failures\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runway_proxy_subscribers{state=\"paused\"} 1")
            || metrics.contains("runway_proxy_subscribers{state=\"probing\"} 1")
    );
    // It comes back: the next probe resumes it and the backlog drains, each once, in order.
    let answered_503 = down.received().len();
    down.set_status(StatusCode::OK);
    let received = down.wait_for(answered_503 + 12, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered: Vec<Value> = down.received()[answered_503..]
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect();
    assert_eq!(delivered.len(), 12, "nothing lost, nothing twice: {delivered:?}");
    let mut seen = HashSet::new();
    for webhook in &delivered {
        let key = (webhook["task_id"].to_string(), webhook["seq"].as_u64().unwrap());
        assert!(seen.insert(key.clone()), "{key:?} twice");
        if key.1 == 2 {
            assert!(seen.contains(&(key.0.clone(), 1)), "{key:?} before its first");
        }
    }
    drop(received);
    assert_eq!(subscriber_report(&proxy, &target).await["state"], "active");
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("runway_proxy_subscriber_probes_total{outcome=\"resumed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runway_proxy_subscriber_resumes_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_pause_resume_and_recover_dead_letters_in_bulk_once() {
    let proxy = proxy(&[("delivery.schedule", "0s")]).await;
    let (one, two) = (Subscriber::start().await, Subscriber::start().await);
    one.set_status(StatusCode::NOT_FOUND);
    two.set_status(StatusCode::NOT_FOUND);
    let since = runway_proxy::duration::rfc3339(runway_proxy::duration::unix_millis() - 1000);
    backlog(&proxy, &one.url("/hook?key=secret"), "one", 5).await;
    backlog(&proxy, &two.url("/hook"), "two", 3).await;
    one.wait_for(5, Duration::from_secs(10)).await;
    two.wait_for(3, Duration::from_secs(10)).await;
    eventually("8 dead letters", Duration::from_secs(10), async || {
        let dead = admin(&proxy, "GET", "/-/deliveries?state=dead").await.json();
        dead["deliveries"].as_array().unwrap().len() == 8
    })
    .await;
    one.set_status(StatusCode::OK);
    two.set_status(StatusCode::OK);
    // The listing redacts the URL's query; the id names the subscriber.
    let listed = admin(&proxy, "GET", "/-/subscribers").await.json();
    let first = listed["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"].as_str().unwrap().ends_with("/hook?"))
        .unwrap()
        .clone();
    assert!(!listed.to_string().contains("secret"), "{listed}");
    assert_eq!(first["dead"], 5);
    let id = first["id"].as_str().unwrap();
    // Paused by an operator: a replay waits.
    let paused = admin(&proxy, "POST", &format!("/-/subscribers/{id}/pause")).await;
    assert_eq!(paused.status, StatusCode::OK);
    let path = format!("/-/deliveries/replay?status=dead&since={since}&subscriber={id}");
    let (first_call, second_call) = tokio::join!(admin(&proxy, "POST", &path), admin(&proxy, "POST", &path));
    let (a, b) = (first_call.json(), second_call.json());
    let counts = [
        a["data"]["replayed"].as_u64().unwrap(),
        b["data"]["replayed"].as_u64().unwrap(),
    ];
    assert!(
        counts == [5, 5] || counts.contains(&0),
        "a second identical call re-queues nothing more: {a} {b}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(one.received().len(), 5, "paused: nothing goes out");
    let resumed = admin(&proxy, "POST", &format!("/-/subscribers/{id}/resume")).await;
    assert_eq!(resumed.status, StatusCode::OK);
    one.wait_for(10, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replayed: Vec<String> = one.received()[5..].iter().map(|(_, b)| task_of(b)).collect();
    assert_eq!(replayed.len(), 5, "each dead letter once: {replayed:?}");
    assert_eq!(replayed.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(two.received().len(), 3, "another subscriber's dead letters stay");
    let left = admin(&proxy, "GET", "/-/deliveries?state=dead").await.json();
    assert_eq!(left["deliveries"].as_array().unwrap().len(), 3);
    // Bad input gets a clear error.
    for (method, path, status) in [
        (
            "POST",
            "/-/deliveries/replay?status=delivered",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/-/deliveries/replay?since=yesterday",
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/-/deliveries/replay", StatusCode::METHOD_NOT_ALLOWED),
        (
            "POST",
            "/-/subscribers/0000000000000000/pause",
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            &format!("/-/subscribers/{id}/pause"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            &format!("/-/subscribers/{id}/stop"),
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/-/subscribers?limit=0", StatusCode::BAD_REQUEST),
        ("POST", "/-/deliveries/replay?since=%FF", StatusCode::BAD_REQUEST),
    ] {
        let reply = admin(&proxy, method, path).await;
        assert_eq!(reply.status, status, "{method} {path}: {:?}", reply.body);
        assert!(reply.json()["msg"].is_string(), "{method} {path}");
    }
    // The rest, with `since` percent-encoded as clients send it.
    let encoded = since.replace(':', "%3A");
    let rest = admin(&proxy, "POST", &format!("/-/deliveries/replay?since={encoded}")).await;
    assert_eq!(rest.json()["data"]["replayed"], 3, "{:?}", rest.body);
    two.wait_for(6, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_says_stop_pauses_itself() {
    let proxy = proxy(&[("delivery.max_in_flight_per_subscriber", "1")]).await;
    let gone = Subscriber::start().await;
    gone.set_status(StatusCode::GONE);
    let target = gone.url("/hook");
    backlog(&proxy, &target, "gone", 6).await;
    eventually(
        "the subscriber paused itself",
        Duration::from_secs(10),
        async || subscriber_report(&proxy, &target).await["paused_reason"] == "gone",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered = gone.received().len();
    assert!(answered < 6, "after repeated 410s the rest wait: {answered}");
    let report = subscriber_report(&proxy, &target).await;
    assert_eq!(
        report["backlog"].as_u64().unwrap() as usize,
        6 - answered,
        "{report}"
    );
    assert!(
        metrics_text(&proxy)
            .await
            .contains("runway_proxy_subscriber_pauses_total{reason=\"gone\"} 1")
    );
}
