//! `limit::SharedLimits` against a real Redis: GCRA quotas shared by separate
//! connections (as replicas hold them), all-or-none decisions, idle keys expiring, and
//! concurrency leases that lapse when their holder dies. `scripts/test-services` starts
//! the Redis (installing it from Debian's packages when missing).
#![cfg(feature = "redis")]

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::services::redis_url;
use runway_proxy::limit::{QuotaSpec, SharedDecision, SharedLimitError, SharedLimits};

/// A prefix of its own per test: tests run at once against one Redis.
fn prefix(test: &str) -> String {
    format!("test-{test}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Remove `key`: the layer's key names are fixed per deployment, so a test that uses
/// them starts from nothing left by an earlier run.
async fn forget(key: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
}

async fn limits(prefix: &str) -> SharedLimits {
    SharedLimits::connect(redis_url(), prefix)
        .await
        .expect("Redis answers")
}

fn quota(text: &str) -> QuotaSpec {
    QuotaSpec::parse(text).expect("a quota")
}

#[tokio::test]
async fn a_burst_goes_at_once_then_requests_wait_one_interval() {
    let limits = limits(&prefix("burst")).await;
    let spec = quota("10/s burst 3");
    for n in 0..3 {
        assert_eq!(
            limits.check(&[("q", spec)]).await.unwrap(),
            SharedDecision::Allowed,
            "request {n} of the burst"
        );
    }
    let SharedDecision::Wait(wait) = limits.check(&[("q", spec)]).await.unwrap() else {
        panic!("the fourth request in the same instant must wait");
    };
    assert!(
        wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
        "{wait:?}"
    );
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert_eq!(
        limits.check(&[("q", spec)]).await.unwrap(),
        SharedDecision::Allowed
    );
}

#[tokio::test]
async fn replicas_on_separate_connections_share_one_quota() {
    let prefix = prefix("replicas");
    let replicas = [
        limits(&prefix).await,
        limits(&prefix).await,
        limits(&prefix).await,
    ];
    let spec = quota("20/s burst 1");
    let started = Instant::now();
    let run_for = Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for replica in replicas {
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u32;
            while started.elapsed() < run_for {
                match replica.check(&[("shared", spec)]).await.unwrap() {
                    SharedDecision::Allowed => admitted += 1,
                    SharedDecision::Wait(wait) => tokio::time::sleep(wait).await,
                }
            }
            admitted
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    // 20/s for 1.5 s, the first at once: 31 at most, however many replicas ask.
    assert!(
        (28..=31).contains(&total),
        "{total} admitted across three replicas"
    );
}

#[tokio::test]
async fn a_refusal_by_one_quota_is_counted_by_none() {
    let limits = limits(&prefix("all-or-none")).await;
    let roomy = quota("100/s burst 5");
    let spent = quota("1/min");
    assert_eq!(
        limits.check(&[("spent", spent)]).await.unwrap(),
        SharedDecision::Allowed
    );
    for _ in 0..10 {
        let decision = limits.check(&[("roomy", roomy), ("spent", spent)]).await.unwrap();
        assert!(
            matches!(decision, SharedDecision::Wait(w) if w > Duration::from_secs(50)),
            "{decision:?}"
        );
    }
    // Ten refusals took nothing from the roomy quota: its whole burst is still there.
    for n in 0..5 {
        assert_eq!(
            limits.check(&[("roomy", roomy)]).await.unwrap(),
            SharedDecision::Allowed,
            "burst {n}"
        );
    }
}

#[tokio::test]
async fn idle_quota_keys_expire() {
    let prefix = prefix("expiry");
    let limits = limits(&prefix).await;
    let spec = QuotaSpec::new(NonZeroU32::new(5).unwrap(), Duration::from_secs(1));
    limits.check(&[("idle", spec)]).await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:rate:idle"))
        .query_async(&mut connection)
        .await
        .unwrap();
    // One emission interval (200 ms) ahead, and gone when it has passed.
    assert!((1..=201).contains(&ttl), "PTTL {ttl}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:rate:idle"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn concurrency_leases_are_capped_released_and_lapse() {
    let prefix = prefix("leases");
    let one = limits(&prefix).await;
    let other = limits(&prefix).await;
    let lease = Duration::from_secs(30);
    assert!(one.acquire("cap", 2, "a", lease).await.unwrap());
    assert!(other.acquire("cap", 2, "b", lease).await.unwrap());
    assert!(
        !one.acquire("cap", 2, "c", lease).await.unwrap(),
        "a third holder over a cap of 2"
    );
    other.release("cap", "b").await.unwrap();
    assert!(
        one.acquire("cap", 2, "c", lease).await.unwrap(),
        "a released slot is free"
    );
    assert!(one.renew("cap", "a", lease).await.unwrap());

    // A holder that dies never releases: its lease lapses instead.
    assert!(
        one.acquire("short", 1, "dies", Duration::from_millis(200))
            .await
            .unwrap()
    );
    assert!(!other.acquire("short", 1, "waits", lease).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !one.renew("short", "dies", lease).await.unwrap(),
        "a lapsed lease is not renewed"
    );
    assert!(
        other.acquire("short", 1, "waits", lease).await.unwrap(),
        "the lapsed slot is free"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_that_names_no_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("redis://user:hunter2-secret@127.0.0.1:{port}/");
    let started = Instant::now();
    let err = SharedLimits::connect(&url, "x")
        .await
        .expect_err("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, SharedLimitError::Redis(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    let err = SharedLimits::connect("http://not-redis/", "x")
        .await
        .expect_err("not a Redis URL");
    assert!(matches!(err, SharedLimitError::Url(_)), "{err:?}");
}

mod through_the_layer {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use runway_proxy::body::{self, Body};
    use runway_proxy::limit::{LimitSettings, RateLimitLayer, ServiceUrl, SharedFallback};
    use tower::{Layer, ServiceExt};

    use super::*;

    fn settings(url: &str, rate: &str, fallback: SharedFallback) -> LimitSettings {
        let mut settings = LimitSettings::default();
        settings.rate = Some(quota(rate));
        settings.redis_url = Some(ServiceUrl::new(url));
        settings.redis_fallback = fallback;
        settings
    }

    fn layer(settings: LimitSettings) -> RateLimitLayer {
        RateLimitLayer::builder()
            .settings(settings)
            .build()
            .expect("valid settings")
    }

    /// Sends one feed read through `layer` to an upstream that counts what reaches it.
    async fn read(layer: &RateLimitLayer, reached: &Arc<AtomicU32>) -> Response<Body> {
        let reached = Arc::clone(reached);
        let upstream = tower::service_fn(move |_request: Request<Body>| {
            reached.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(Response::new(body::full(r#"{"code":200,"msg":"success"}"#))) }
        });
        let request = Request::post("http://upstream.test/runway/feed")
            .body(body::full(r#"{"task_id":"t"}"#))
            .unwrap();
        layer.layer(upstream).oneshot(request).await.unwrap()
    }

    fn dead_redis_url() -> String {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        format!("redis://127.0.0.1:{port}/")
    }

    #[tokio::test]
    async fn replicas_hold_one_quota_at_the_upstream() {
        let rate = "16/s burst 1";
        let url = redis_url();
        forget("runway-proxy:rate:global").await;
        let replicas = [
            layer(settings(url, rate, SharedFallback::Refuse)),
            layer(settings(url, rate, SharedFallback::Refuse)),
            layer(settings(url, rate, SharedFallback::Refuse)),
        ];
        let reached = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let mut clients = Vec::new();
        for replica in replicas {
            for _ in 0..4 {
                let (replica, reached) = (replica.clone(), Arc::clone(&reached));
                clients.push(tokio::spawn(async move {
                    while started.elapsed() < Duration::from_millis(1500) {
                        let response = read(&replica, &reached).await;
                        assert_eq!(response.status(), StatusCode::OK);
                    }
                }));
            }
        }
        for client in clients {
            client.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let reached = f64::from(reached.load(Ordering::Relaxed));
        // 16/s shared by three replicas, not 48/s: within 10% of the quota (the last
        // waiters may be admitted just after the 1.5 s).
        let expected = 1.0 + 16.0 * elapsed;
        assert!(
            (reached - expected).abs() <= expected * 0.1 + 1.0,
            "{reached} reached the upstream in {elapsed:.2}s; the quota allows {expected:.0}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_the_local_limiter() {
        let mut settings = settings(&dead_redis_url(), "2/min", SharedFallback::Local);
        settings.max_wait = Duration::ZERO;
        let layer = layer(settings);
        let reached = Arc::new(AtomicU32::new(0));
        for _ in 0..2 {
            assert_eq!(read(&layer, &reached).await.status(), StatusCode::OK);
        }
        // The local limiter holds the quota meanwhile.
        assert_eq!(
            read(&layer, &reached).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(reached.load(Ordering::Relaxed), 2);
        assert!(layer.metrics().shared_unavailable.get() >= 3);
    }

    #[tokio::test]
    async fn with_refuse_an_unreachable_redis_is_a_503_then_recovers() {
        // A Redis of this test's own, started only after the first request.
        super::redis_url(); // installs redis-server when missing
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}/");
        let layer = layer(settings(&url, "100/s", SharedFallback::Refuse));
        let reached = Arc::new(AtomicU32::new(0));

        let refused = read(&layer, &reached).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            envelope["msg"]
                .as_str()
                .unwrap()
                .contains("nothing was sent upstream"),
            "{envelope}"
        );
        assert_eq!(reached.load(Ordering::Relaxed), 0, "nothing reached the upstream");
        assert_eq!(layer.metrics().refusals("shared_unavailable"), 1);

        let data = tempfile::tempdir().unwrap();
        let mut server = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(data.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // Recovery needs no restart: the next decision after the reconnect pause goes
        // through Redis again.
        let recovered = async {
            loop {
                if read(&layer, &reached).await.status() == StatusCode::OK {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), recovered).await;
        let _ = server.kill();
        let _ = server.wait();
        outcome.expect("the limiter uses Redis again once it answers");
    }
}
