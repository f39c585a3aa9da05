//! `limit::SharedLimits` against a real Redis: GCRA quotas shared by separate
//! connections (as replicas hold them), all-or-none decisions, idle keys expiring, and
//! concurrency leases that lapse when their holder dies. `scripts/test-services` starts
//! the Redis (installing it from Debian's packages when missing).
#![cfg(feature = "redis")]

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use runway_proxy::limit::{QuotaSpec, SharedDecision, SharedLimitError, SharedLimits};

fn redis_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let output = std::process::Command::new(repo.join("scripts/test-services"))
            .output()
            .expect("scripts/test-services runs");
        assert!(
            output.status.success(),
            "scripts/test-services failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("RUNWAY_PROXY_TEST_REDIS_URL="))
            .expect("scripts/test-services prints the Redis URL")
            .to_owned()
    })
}

/// A prefix of its own per test: tests run at once against one Redis.
fn prefix(test: &str) -> String {
    format!("test-{test}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
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
