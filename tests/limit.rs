//! The outbound rate limiter, through the sidecar against the stand-in.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::limit::{QuotaSpec, RateLimitLayer};
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use serde_json::json;

const GENERATE: &str = "/runway/pro/generate";

async fn setup(settings: &[(&'static str, &str)]) -> (MockUpstream, RunningProxy) {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(600))).await;
    let mut flags = Overrides::from([
        ("retry.base_delay", "10ms".to_owned()),
        ("retry.max_delay", "20ms".to_owned()),
        ("retry.budget_min_per_sec", "100".to_owned()),
        // The submissions name a loopback callback_url.
        ("callback.allow_private", "true".to_owned()),
    ]);
    for (key, value) in settings {
        flags.insert(key, (*value).to_owned());
    }
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    (mock, proxy)
}

fn submit(proxy: &RunningProxy, key: &str) -> tokio::task::JoinHandle<(Reply, Instant)> {
    let url = proxy.url(GENERATE);
    let key = key.to_owned();
    tokio::spawn(async move {
        let request = Request::post(url)
            .header("authorization", format!("Bearer {key}"))
            .body(Full::new(Bytes::from(
                json!({"prompt": "a cat", "callback_url": "http://127.0.0.1:9/hook"}).to_string(),
            )))
            .unwrap();
        let reply = send(&client(), request).await.unwrap();
        (reply, Instant::now())
    })
}

async fn metric(proxy: &RunningProxy, name: &str) -> f64 {
    let text = metrics_text(proxy).await;
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

#[tokio::test]
async fn thirty_concurrent_calls_at_five_per_second_all_succeed_within_the_quota() {
    let (mock, proxy) = setup(&[("limit.rate", "5/s")]).await;
    let calls: Vec<_> = (0..30).map(|_| submit(&proxy, "sk-a")).collect();
    for call in calls {
        let (reply, _) = call.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["code"], 200);
    }
    let mut arrivals: Vec<Instant> = mock.requests().iter().map(|r| r.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 30, "no retries, no refusals");
    // In any one-second window: at most the quota (5) plus the burst (5). Allow 20 ms
    // for the trip from the limiter to the stand-in.
    let window = Duration::from_millis(980);
    for (i, start) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..].iter().take_while(|t| **t - *start < window).count();
        assert!(
            in_window <= 10,
            "{in_window} arrivals within a second of arrival {i}"
        );
    }
    let spread = arrivals[29] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(4500),
        "30 calls at 5/s after a burst of 5 take 5 s, took {spread:?}"
    );
}

#[tokio::test]
async fn a_full_queue_gets_429_with_retry_after() {
    let (mock, proxy) = setup(&[("limit.rate", "2/s burst 1"), ("limit.max_queue", "2")]).await;
    let calls: Vec<_> = (0..10).map(|_| submit(&proxy, "sk-a")).collect();
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        let (reply, _) = call.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let envelope = reply.json();
                assert_eq!(envelope["code"], 429);
                let msg = envelope["msg"].as_str().unwrap();
                assert!(msg.starts_with("rate limited by runway-proxy: "), "{msg}");
                let retry_after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry_after >= 1);
                assert_eq!(
                    reply.headers["x-runway-proxy-attempts"], "1",
                    "a refusal is not retried"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!((1..=4).contains(&ok), "{ok} let through with a queue of 2");
    assert_eq!(ok + refused, 10);
    assert_eq!(mock.stats().received(GENERATE), ok);
    assert!(metric(&proxy, "runway_proxy_limit_refusals_total{reason=\"queue_full\"}").await >= 6.0);
}

#[tokio::test]
async fn a_wait_past_max_wait_gets_429_at_once() {
    let (_mock, proxy) = setup(&[("limit.rate", "1/s burst 1"), ("limit.max_wait", "300ms")]).await;
    let (first, _) = submit(&proxy, "sk-a").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let started = Instant::now();
    let (second, _) = submit(&proxy, "sk-a").await.unwrap();
    // The permit was a second away: refused without waiting for it.
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "refused without waiting in vain"
    );
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers["retry-after"], "1");
    let msg = second.json()["msg"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("global quota (1/s burst 1)") || msg.contains("global quota (1/s)"),
        "{msg}"
    );
    assert!(msg.contains("within the 300ms it may wait"), "{msg}");
}

#[tokio::test]
async fn one_key_exhausting_its_quota_does_not_slow_another() {
    let (_mock, proxy) = setup(&[("limit.rate_per_key", "2/s burst 1")]).await;
    let a: Vec<_> = (0..4).map(|_| submit(&proxy, "sk-key-a")).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_sent = Instant::now();
    let (b, b_done) = submit(&proxy, "sk-key-b").await.unwrap();
    assert_eq!(b.status, StatusCode::OK);
    let mut a_done = Vec::new();
    for call in a {
        let (reply, done) = call.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        a_done.push(done);
    }
    a_done.sort();
    // Key A's four calls are spread over 1.5 s; key B went straight through.
    assert!(
        a_done[3] - a_done[0] >= Duration::from_millis(1400),
        "{:?}",
        a_done[3] - a_done[0]
    );
    assert!(b_done < a_done[2], "key B waited behind key A");
    assert!(b_done - b_sent < a_done[3] - a_done[0]);
}

#[tokio::test]
async fn the_concurrency_cap_holds() {
    let (mock, proxy) = setup(&[("limit.max_concurrency", "3")]).await;
    mock.inject(GENERATE, Fault::delay(Duration::from_millis(150)), 0);
    let calls: Vec<_> = (0..12)
        .map(|i| submit(&proxy, &format!("sk-{}", i % 4)))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().0.status, StatusCode::OK);
    }
    assert_eq!(
        mock.stats().max_in_flight,
        3,
        "the stand-in never saw more than 3 at once"
    );
    assert_eq!(metric(&proxy, "runway_proxy_upstream_in_flight").await, 0.0);
}

#[tokio::test]
async fn a_cancelled_waiter_gives_its_place_back() {
    let (mock, proxy) = setup(&[("limit.rate", "1/min burst 1"), ("limit.max_wait", "5m")]).await;
    let (first, _) = submit(&proxy, "sk-a").await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let waiters: Vec<_> = (0..3).map(|_| submit(&proxy, "sk-a")).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&proxy, "runway_proxy_limit_waiting").await < 3.0 {
        assert!(Instant::now() < deadline, "waiters never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for waiter in waiters {
        waiter.abort(); // the client goes away
    }
    while metric(&proxy, "runway_proxy_limit_waiting").await > 0.0 {
        assert!(Instant::now() < deadline, "cancelled waiters kept their places");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.stats().received(GENERATE), 1);
    let text = metrics_text(&proxy).await;
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("runway_proxy_limit_refusals_total{"))
        .collect();
    // queue_full, max_wait, keys_overflow, shared_unavailable.
    assert_eq!(
        refusals.len(),
        4,
        "every reason is exposed, at zero until it happens: {text}"
    );
    assert!(
        refusals.iter().all(|l| l.ends_with(" 0")),
        "the waiters left, none was refused: {refusals:?}"
    );
}

#[tokio::test]
async fn each_retry_attempt_takes_its_own_permit() {
    let (mock, proxy) = setup(&[("limit.rate", "4/s burst 1")]).await;
    mock.inject(GENERATE, Fault::busy(), 2);
    let (reply, _) = submit(&proxy, "sk-a").await.unwrap();
    assert_eq!(reply.json()["code"], 200);
    assert_eq!(reply.headers["x-runway-proxy-attempts"], "3");
    let arrivals: Vec<Instant> = mock.requests().iter().map(|r| r.at).collect();
    // Backoff alone would be 10-20 ms; the quota spaces attempts 250 ms apart.
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(230),
            "{:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test]
async fn per_key_state_stays_bounded_with_many_keys() {
    let layer = RateLimitLayer::builder()
        .rate_per_key(QuotaSpec::parse("1000/s burst 1").unwrap())
        .max_keys(200)
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(tower::service_fn(|_request: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }));
    let mut most = 0;
    for i in 0..5000 {
        use tower::ServiceExt;
        let request = Request::post(GENERATE)
            .header("authorization", format!("Bearer sk-{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        most = most.max(layer.tracked_keys());
        if i % 500 == 0 {
            // Let time pass so earlier keys are back to a full burst and can be pruned.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(most <= 200, "tracked {most} keys with a cap of 200");
    assert_eq!(layer.waiting(), 0);
}
