//! The retry decisions as units: a `service_fn` upstream that answers from a script, and
//! Tokio's paused clock, so waits are measured exactly and cost no wall time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;
use crate::body::{self, Body, BoxError};
use crate::envelope;
use crate::upstream::UpstreamError;

/// One scripted answer of the upstream.
enum Answer {
    Json(u16, &'static str),
    RetryAfter(u16, &'static str),
    Fail(fn() -> UpstreamError),
}

/// An upstream answering from `script` (the last answer repeats), counting calls.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Answer>>>,
    calls: Arc<Mutex<u32>>,
}

impl Scripted {
    fn new(script: Vec<Answer>) -> Self {
        Scripted {
            script: Arc::new(Mutex::new(script.into())),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> u32 {
        *self.calls.lock().unwrap()
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Body>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |request: Request<Body>| {
            let this = this.clone();
            async move {
                // Like a real upstream, the body is read before answering.
                let _ = request.into_body().collect().await;
                *this.calls.lock().unwrap() += 1;
                let answer = {
                    let mut script = this.script.lock().unwrap();
                    if script.len() > 1 {
                        script.pop_front()
                    } else {
                        None
                    }
                };
                let respond = |status: u16, body: &'static str, retry_after: bool| {
                    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    if retry_after {
                        response.headers_mut().insert("retry-after", "7".parse().unwrap());
                    }
                    Ok(response)
                };
                let last = |script: &VecDeque<Answer>| match script.front() {
                    Some(Answer::Json(s, b)) => respond(*s, b, false),
                    Some(Answer::RetryAfter(s, b)) => respond(*s, b, true),
                    Some(Answer::Fail(make)) => Err(Box::new(make()) as BoxError),
                    None => respond(200, OK, false),
                };
                match answer {
                    Some(Answer::Json(s, b)) => respond(s, b, false),
                    Some(Answer::RetryAfter(s, b)) => respond(s, b, true),
                    Some(Answer::Fail(make)) => Err(Box::new(make()) as BoxError),
                    None => last(&this.script.lock().unwrap()),
                }
            }
        })
    }
}

const OK: &str = r#"{"code":200,"msg":"success","data":{"task_id":"t1"}}"#;
const BUSY: &str = r#"{"code":500,"msg":"system busy","data":null}"#;

fn submission(body: &'static str) -> Request<Body> {
    Request::post("http://upstream.test/runway/pro/generate")
        .body(body::full(body))
        .unwrap()
}

fn fast() -> RetryLayerBuilder {
    RetryLayer::builder().backoff(Duration::from_millis(100), Duration::from_millis(800))
}

async fn call(layer: &RetryLayer, upstream: &Scripted, request: Request<Body>) -> (Response<Body>, Bytes) {
    let response = layer.layer(upstream.service()).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (Response::from_parts(parts, body::empty()), bytes)
}

#[tokio::test(start_paused = true)]
async fn a_busy_answer_inside_http_200_is_retried_within_the_backoff() {
    let upstream = Scripted::new(vec![Answer::Json(200, BUSY), Answer::Json(200, OK)]);
    let layer = fast().build().unwrap();
    let started = Instant::now();
    let (response, body) = call(&layer, &upstream, submission("{}")).await;
    assert_eq!(response.headers()[ATTEMPTS_HEADER], "2");
    assert_eq!(body, OK);
    assert!(
        started.elapsed() <= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(layer.metrics().outcomes(RetryOutcome::Success), 1);
    assert_eq!(layer.metrics().retries.get(&"retryable-code".to_owned()), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_exactly() {
    let upstream = Scripted::new(vec![Answer::RetryAfter(429, ""), Answer::Json(200, OK)]);
    let layer = fast().build().unwrap();
    let started = Instant::now();
    let (response, _) = call(&layer, &upstream, submission("{}")).await;
    assert_eq!(response.headers()[ATTEMPTS_HEADER], "2");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(7), "{waited:?}");
    assert!(waited < Duration::from_millis(7_200), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_submission_that_may_have_been_sent_is_never_resubmitted() {
    let upstream = Scripted::new(vec![Answer::Fail(|| {
        UpstreamError::Request("reset by peer".into())
    })]);
    let layer = fast().build().unwrap();
    let (response, body) = call(&layer, &upstream, submission("{}")).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(String::from_utf8_lossy(&body).contains(OUTCOME_UNKNOWN));
    assert_eq!(upstream.calls(), 1);
    assert_eq!(layer.metrics().outcomes(RetryOutcome::OutcomeUnknown), 1);
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_is_retried_even_for_a_submission() {
    let refused = || UpstreamError::Connect("connection refused".into());
    let upstream = Scripted::new(vec![Answer::Fail(refused), Answer::Json(200, OK)]);
    let layer = fast().build().unwrap();
    let (response, _) = call(&layer, &upstream, submission("{}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.calls(), 2);
    assert_eq!(layer.metrics().retries.get(&"connect".to_owned()), 1);
}

#[tokio::test(start_paused = true)]
async fn reads_retry_an_unknown_outcome() {
    let upstream = Scripted::new(vec![
        Answer::Fail(|| UpstreamError::Timeout(Duration::from_secs(1))),
        Answer::Json(200, OK),
    ]);
    let layer = fast().build().unwrap();
    let read = Request::post("http://upstream.test/runway/feed")
        .body(body::full("{}"))
        .unwrap();
    let (response, _) = call(&layer, &upstream, read).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn stops_at_max_attempts_and_says_so() {
    let upstream = Scripted::new(vec![Answer::Json(200, BUSY)]);
    let layer = fast().max_attempts(3).budget(1000.0, 100).build().unwrap();
    let (response, body) = call(&layer, &upstream, submission("{}")).await;
    assert_eq!(response.headers()[ATTEMPTS_HEADER], "3");
    assert_eq!(response.headers()[STOPPED_HEADER], "max-attempts");
    assert_eq!(body, BUSY, "the upstream's last answer, unchanged");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn stops_before_a_wait_that_would_pass_the_deadline() {
    let upstream = Scripted::new(vec![Answer::RetryAfter(503, "")]);
    let layer = fast()
        .max_attempts(100)
        .deadline(Duration::from_secs(20))
        .budget(1000.0, 100)
        .build()
        .unwrap();
    let started = Instant::now();
    let (response, _) = call(&layer, &upstream, submission("{}")).await;
    // Retry-After 7 s: attempts at 0, 7 and 14 s; a fourth at 21 s would be too late.
    assert_eq!(response.headers()[ATTEMPTS_HEADER], "3");
    assert_eq!(response.headers()[STOPPED_HEADER], "deadline");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_to_replay_is_sent_once() {
    let upstream = Scripted::new(vec![Answer::Json(200, BUSY), Answer::Json(200, OK)]);
    // Room for the upstream's answer, not for the request.
    let layer = fast().body_limit(BUSY.len()).build().unwrap();
    let prompt = r#"{"prompt":"a long prompt, longer than the upstream's busy answer is"}"#;
    assert!(prompt.len() > BUSY.len());
    let (response, _) = call(&layer, &upstream, submission(prompt)).await;
    assert_eq!(response.headers()[STOPPED_HEADER], "not-replayable");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_response_the_proxy_made_itself_is_not_retried() {
    let generated = tower::service_fn(|_request: Request<Body>| async {
        Ok::<_, Infallible>(envelope::error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited",
        ))
    });
    let layer = fast().build().unwrap();
    let response = layer.layer(generated).oneshot(submission("{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[ATTEMPTS_HEADER], "1");
}

#[tokio::test(start_paused = true)]
async fn clones_of_a_layer_share_one_retry_budget() {
    // 50%: each request deposits half a retry. Alone, a request can't retry; the second
    // request through a clone of the layer finds the first one's half and can.
    let upstream = Scripted::new(vec![Answer::Json(200, BUSY)]);
    let layer = fast().budget(50.0, 0).build().unwrap();
    let clone = layer.clone();
    let (first, _) = call(&layer, &upstream, submission("{}")).await;
    assert_eq!(first.headers()[STOPPED_HEADER], "budget");
    assert_eq!(first.headers()[ATTEMPTS_HEADER], "1");
    let (second, _) = call(&clone, &upstream, submission("{}")).await;
    assert_eq!(
        second.headers()[ATTEMPTS_HEADER],
        "2",
        "the clone spent the shared budget"
    );
    assert_eq!(
        layer.metrics().budget_exhausted.get(),
        2,
        "one set of metrics too"
    );

    let separate = fast().budget(50.0, 0).build().unwrap();
    let (alone, _) = call(&separate, &upstream, submission("{}")).await;
    assert_eq!(
        alone.headers()[ATTEMPTS_HEADER],
        "1",
        "a separately built layer has its own"
    );
}

#[test]
fn settings_check_themselves() {
    assert!(RetrySettings::default().validate().is_ok());
    let err = RetryLayer::builder().max_attempts(0).build().unwrap_err();
    assert_eq!(err.key, "retry.max_attempts");
    let err = RetryLayer::builder()
        .backoff(Duration::from_secs(10), Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry.base_delay: 10s is longer than retry.max_delay (1s), the cap on every backoff wait"
    );
    assert_eq!(
        RetryLayer::builder().budget(2000.0, 1).build().unwrap_err().key,
        "retry.budget_percent"
    );
    assert_eq!(
        RetryLayer::builder().body_limit(0).build().unwrap_err().key,
        "retry.body_limit"
    );
}

#[tokio::test]
async fn an_other_routes_body_streams_through_unread() {
    // An answer whose body never ends: reading it first would never answer at all.
    let upstream = tower::service_fn(|_request: Request<Body>| async {
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, Infallible>,
        >());
        Ok::<_, Infallible>(Response::new(body))
    });
    let retry = RetryLayer::builder().build().unwrap().layer(upstream);
    let request = Request::get("/v1/files/large").body(body::empty()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), retry.oneshot(request))
        .await
        .expect("answered before its body ends")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[ATTEMPTS_HEADER], "1");
}
