//! The idempotency decisions as units: a `service_fn` upstream whose answers carry the
//! retry layer's verdict, and the in-memory store.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::body::{self, Body};
use crate::retry::RetryOutcome;

/// An upstream that answers every call with `outcome`, counting calls.
#[derive(Clone)]
struct Upstream {
    outcome: Arc<Mutex<RetryOutcome>>,
    calls: Arc<AtomicU32>,
}

impl Upstream {
    fn new(outcome: RetryOutcome) -> Self {
        Upstream {
            outcome: Arc::new(Mutex::new(outcome)),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |_request: Request<Body>| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let outcome = *this.outcome.lock().unwrap();
                let mut response = Response::new(body::full(format!(
                    r#"{{"code":200,"data":{{"task_id":"t{n}"}}}}"#
                )));
                response.extensions_mut().insert(outcome);
                Ok::<_, Infallible>(response)
            }
        })
    }
}

fn submission(key: &str, body: &'static str) -> Request<Body> {
    Request::post("http://upstream.test/runway/pro/generate")
        .header("authorization", "Bearer sk-a")
        .header("idempotency-key", key)
        .body(body::full(body))
        .unwrap()
}

async fn send(
    layer: &IdempotencyLayer,
    upstream: &Upstream,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, String) {
    let response = layer.layer(upstream.service()).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn layer() -> IdempotencyLayer {
    IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::default()))
}

#[tokio::test]
async fn a_repeat_gets_the_stored_answer_without_a_second_call() {
    let (layer, upstream) = (layer(), Upstream::new(RetryOutcome::Success));
    let (status, headers, first) = send(&layer, &upstream, submission("k1", r#"{"prompt":"a cat"}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key(REPLAYED));
    let (status, headers, again) = send(&layer, &upstream, submission("k1", r#"{"prompt":"a cat"}"#)).await;
    assert_eq!((status, again.as_str()), (StatusCode::OK, first.as_str()));
    assert_eq!(headers[REPLAYED], "true");
    assert_eq!(upstream.calls(), 1, "one task");
    send(&layer, &upstream, submission("k2", r#"{"prompt":"a cat"}"#)).await;
    assert_eq!(upstream.calls(), 2, "another key is another submission");
}

#[tokio::test]
async fn the_same_key_with_another_body_or_api_key() {
    let (layer, upstream) = (layer(), Upstream::new(RetryOutcome::Success));
    send(&layer, &upstream, submission("k", r#"{"prompt":"a cat"}"#)).await;
    let (status, headers, body) = send(&layer, &upstream, submission("k", r#"{"prompt":"a dog"}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(headers["x-should-retry"], "false");
    let mut other_tenant = submission("k", r#"{"prompt":"a cat"}"#);
    other_tenant
        .headers_mut()
        .insert("authorization", "Bearer sk-b".parse().unwrap());
    assert_eq!(send(&layer, &upstream, other_tenant).await.0, StatusCode::OK);
    assert_eq!(upstream.calls(), 2, "keys are scoped to an API key");
}

#[tokio::test]
async fn an_unknown_outcome_stays_unknown() {
    let (layer, upstream) = (layer(), Upstream::new(RetryOutcome::OutcomeUnknown));
    send(&layer, &upstream, submission("k", "{}")).await;
    let (status, headers, body) = send(&layer, &upstream, submission("k", "{}")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.contains("outcome unknown"), "{body}");
    assert_eq!(headers["x-should-retry"], "false");
    assert_eq!(upstream.calls(), 1, "never a second task");
}

#[tokio::test]
async fn an_answer_that_proves_nothing_was_created_frees_the_key() {
    let upstream = Upstream::new(RetryOutcome::Budget);
    let layer = layer();
    send(&layer, &upstream, submission("k", "{}")).await;
    *upstream.outcome.lock().unwrap() = RetryOutcome::Success;
    let (status, headers, _) = send(&layer, &upstream, submission("k", "{}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key(REPLAYED));
    assert_eq!(upstream.calls(), 2, "the retry went through");
}

#[tokio::test]
async fn a_repeat_while_the_first_is_in_flight_gets_409() {
    let release = Arc::new(tokio::sync::Notify::new());
    let held = {
        let release = Arc::clone(&release);
        tower::service_fn(move |_request: Request<Body>| {
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                let mut response = Response::new(body::full("{}"));
                response.extensions_mut().insert(RetryOutcome::Success);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let layer = layer();
    let service = layer.layer(held);
    let first = tokio::spawn(service.clone().oneshot(submission("k", "{}")));
    tokio::task::yield_now().await;
    let second = service.clone().oneshot(submission("k", "{}")).await.unwrap();
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert_eq!(second.headers()["x-should-retry"], "true");
    assert_eq!(second.headers()["retry-after"], "1");
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn keys_expire_and_a_dead_in_flight_record_reads_as_unknown() {
    let store = Arc::new(MemoryIdempotencyStore::default());
    let settings = IdempotencySettings {
        ttl: Duration::from_secs(3600),
        lease: Duration::from_secs(60),
        ..Default::default()
    };
    let layer = IdempotencyLayer::with_settings(store.clone(), settings.clone()).unwrap();
    let upstream = Upstream::new(RetryOutcome::Success);
    send(&layer, &upstream, submission("k", "{}")).await;
    tokio::time::sleep(Duration::from_secs(3601)).await;
    send(&layer, &upstream, submission("k", "{}")).await;
    assert_eq!(upstream.calls(), 2, "an expired key is new again");

    // A process that died mid-request never finished its record.
    let begun = store
        .begin(Claim::new("dead", "f", settings.lease, settings.ttl))
        .await;
    assert_eq!(begun, Ok(Begin::Started));
    let again = store
        .begin(Claim::new("dead", "f", settings.lease, settings.ttl))
        .await;
    assert_eq!(again, Ok(Begin::InFlight));
    tokio::time::sleep(Duration::from_secs(61)).await;
    let after = store
        .begin(Claim::new("dead", "f", settings.lease, settings.ttl))
        .await;
    assert_eq!(after, Ok(Begin::Unknown), "it may have created a task");
}

#[tokio::test]
async fn requests_without_a_key_or_not_submissions_pass_through() {
    let (layer, upstream) = (layer(), Upstream::new(RetryOutcome::Success));
    let mut plain = submission("k", "{}");
    plain.headers_mut().remove("idempotency-key");
    send(&layer, &upstream, plain).await;
    let read = Request::post("http://upstream.test/runway/feed")
        .header("idempotency-key", "k")
        .body(body::full("{}"))
        .unwrap();
    send(&layer, &upstream, read).await;
    send(&layer, &upstream, submission("k", "{}")).await;
    assert_eq!(upstream.calls(), 3);
    let (status, _, _) = send(&layer, &upstream, submission("bad key", "{}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a key with a space is malformed");
}
