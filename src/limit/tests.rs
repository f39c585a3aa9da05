//! The limiter's decisions as units: a `service_fn` upstream and Tokio's paused clock,
//! which the GCRA state follows too, so spacing and refusals are exact.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::body::Body;

fn upstream()
-> impl Service<Request<Body>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(br#"{"code":200}"#))))
    })
}

fn submission(key: &str) -> Request<Body> {
    Request::post("http://upstream.test/runway/pro/generate")
        .header("authorization", format!("Bearer {key}"))
        .body(crate::body::empty())
        .unwrap()
}

fn quota(text: &str) -> QuotaSpec {
    text.parse().unwrap()
}

async fn status(layer: &RateLimitLayer, request: Request<Body>) -> (StatusCode, Response<Body>) {
    let response = layer.layer(upstream()).oneshot(request).await.unwrap();
    (response.status(), response)
}

#[tokio::test(start_paused = true)]
async fn calls_over_quota_wait_their_turn_at_the_gcra_pace() {
    let layer = RateLimitLayer::builder()
        .submit_rate(quota("5/s burst 1"))
        .build()
        .unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(status(&layer, submission("a")).await.0, StatusCode::OK);
    }
    let elapsed = started.elapsed();
    // The first goes at once, the next two 200 ms apart (plus up to 5 ms of jitter each).
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed <= Duration::from_millis(420), "{elapsed:?}");
    assert_eq!(layer.metrics().wait.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_max_wait_is_refused_with_a_retry_after() {
    let layer = RateLimitLayer::builder()
        .rate(quota("1/min"))
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(status(&layer, submission("a")).await.0, StatusCode::OK);
    let (code, response) = status(&layer, submission("a")).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(envelope["code"], 429);
    assert!(
        envelope["msg"].as_str().unwrap().contains("global quota (1/min)"),
        "{envelope}"
    );
    assert_eq!(layer.metrics().refusals("max_wait"), 1);
}

#[tokio::test(start_paused = true)]
async fn one_key_over_its_quota_never_slows_another() {
    let layer = RateLimitLayer::builder()
        .rate_per_key(quota("1/min"))
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(status(&layer, submission("a")).await.0, StatusCode::OK);
    assert_eq!(
        status(&layer, submission("a")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&layer, submission("b")).await.0, StatusCode::OK);
    assert_eq!(layer.tracked_keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn clones_of_a_layer_share_one_limiter() {
    let layer = RateLimitLayer::builder()
        .rate(quota("1/min"))
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let clone = layer.clone();
    assert_eq!(status(&layer, submission("a")).await.0, StatusCode::OK);
    assert_eq!(
        status(&clone, submission("a")).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "the clone drew from the same quota"
    );
    assert_eq!(
        layer.metrics().refusals("max_wait"),
        1,
        "and counts in the same metrics"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_refused_at_once_and_slots_are_held_until_the_body_is_done() {
    let release = Arc::new(Notify::new());
    let held = {
        let release = Arc::clone(&release);
        tower::service_fn(move |_request: Request<Body>| {
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            }
        })
    };
    let layer = RateLimitLayer::builder()
        .max_concurrency(1)
        .max_queue(1)
        .build()
        .unwrap();
    let service = layer.layer(held);
    let first = tokio::spawn(service.clone().oneshot(submission("a")));
    let second = tokio::spawn(service.clone().oneshot(submission("a")));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(layer.waiting(), 1, "the second waits for the slot");
    let third = service.clone().oneshot(submission("a")).await.unwrap();
    assert_eq!(
        third.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "one in line already"
    );
    assert_eq!(layer.metrics().refusals("queue_full"), 1);
    release.notify_one();
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        layer.metrics().in_flight.get(),
        1,
        "the first holds its slot while its body lives"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(10)).await;
    release.notify_one();
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[test]
fn settings_check_themselves() {
    assert!(LimitSettings::default().validate().is_ok());
    let err = RateLimitLayer::builder().max_concurrency(0).build().unwrap_err();
    assert_eq!(err.key, "limit.max_concurrency");
    assert_eq!(
        RateLimitLayer::builder().max_queue(0).build().unwrap_err().key,
        "limit.max_queue"
    );
    assert!(matches!(
        "5/fortnight".parse::<QuotaSpec>(),
        Err(QuotaError::Malformed(text)) if text == "5/fortnight"
    ));
}

#[test]
fn a_redis_url_is_never_printed_with_its_password() {
    let url = ServiceUrl::new("redis://user:hunter2@redis.internal:6379/0");
    assert_eq!(url.redacted(), "redis://…@redis.internal:6379/0");
    assert!(!format!("{url:?}").contains("hunter2"));
    let settings = LimitSettings {
        redis_url: Some(url),
        ..Default::default()
    };
    assert!(!format!("{settings:?}").contains("hunter2"));
    assert_eq!(
        ServiceUrl::new("redis://localhost:6379/").redacted(),
        "redis://localhost:6379/"
    );
    assert_eq!(
        "refuse".parse::<SharedFallback>().ok(),
        Some(SharedFallback::Refuse)
    );
    assert!("sometimes".parse::<SharedFallback>().is_err());
}
