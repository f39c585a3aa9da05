//! The retry middleware, through the sidecar and on its own, against the stand-in.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use runway_proxy::retry::OUTCOME_UNKNOWN;
use serde_json::{Value, json};

const GENERATE: &str = "/runway/pro/generate";

/// Fast timings for tests: 10 ms backoff base, 50 ms cap.
fn fast(extra: &[(&'static str, &str)]) -> Overrides {
    let mut flags = Overrides::from([
        ("retry.base_delay", "10ms".to_owned()),
        ("retry.max_delay", "50ms".to_owned()),
        // Every test's retries fit in the budget's floor unless the test says otherwise.
        ("retry.budget_min_per_sec", "100".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    flags
}

async fn setup(extra: &[(&'static str, &str)]) -> (MockUpstream, RunningProxy) {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    let proxy = start_proxy_with(None, &mock.url(), &fast(extra)).await;
    (mock, proxy)
}

fn submission() -> Value {
    json!({"prompt": "a cat", "callback_url": "https://hooks.example.com/runway", "model": "gen4"})
}

fn attempts(reply: &Reply) -> u32 {
    reply.headers["x-runway-proxy-attempts"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn error_envelope_in_200_twice_then_success() {
    let (mock, proxy) = setup(&[]).await;
    mock.inject(GENERATE, Fault::busy(), 2);
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let envelope = reply.json();
    assert_eq!(envelope["code"], 200);
    assert!(envelope["data"]["task_id"].is_string());
    assert_eq!(attempts(&reply), 3);
    assert_eq!(mock.stats().received(GENERATE), 3);
    assert_eq!(mock.stats().accepted(GENERATE), 1);
}

#[tokio::test]
async fn retry_after_of_one_second_is_honoured() {
    let (mock, proxy) = setup(&[]).await;
    mock.inject(GENERATE, Fault::too_many_requests(1), 1);
    let started = Instant::now();
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(reply.json()["code"], 200);
    assert_eq!(attempts(&reply), 2);
    let requests = mock.requests();
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn client_errors_and_invalid_request_are_not_retried() {
    let (mock, proxy) = setup(&[]).await;
    let client = client();

    mock.inject(
        GENERATE,
        Fault::Status {
            status: 400,
            retry_after: None,
            body: None,
        },
        1,
    );
    let reply = post_json(&client, &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!((reply.status, attempts(&reply)), (StatusCode::BAD_REQUEST, 1));

    let unauthenticated = Request::post(proxy.url(GENERATE))
        .body(Full::new(Bytes::from(submission().to_string())))
        .unwrap();
    let reply = send(&client, unauthenticated).await.unwrap();
    assert_eq!((reply.status, attempts(&reply)), (StatusCode::UNAUTHORIZED, 1));

    let invalid = Fault::Envelope {
        status: 500,
        code: json!(500),
        msg: "invalid_request: ratio 7:3".into(),
    };
    mock.inject(GENERATE, invalid, 1);
    let reply = post_json(&client, &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.json()["msg"],
        "invalid_request: ratio 7:3",
        "the upstream's answer, unchanged"
    );
    assert_eq!(attempts(&reply), 1);

    let missing_callback = post_json(&client, &proxy.url(GENERATE), &json!({"prompt": "x"}))
        .await
        .unwrap();
    assert_eq!(missing_callback.json()["msg"], "callback_url_empty");
    assert_eq!(attempts(&missing_callback), 1);

    assert_eq!(mock.stats().received(GENERATE), 4, "one attempt each");
}

#[tokio::test]
async fn string_code_success_is_success() {
    let (mock, proxy) = setup(&[]).await;
    let body = r#"{"code":"success","message":"ok","data":{"task_id":"t-1"}}"#;
    mock.inject(
        GENERATE,
        Fault::Respond {
            status: 200,
            headers: vec![],
            body: body.into(),
        },
        1,
    );
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.body, body.as_bytes(), "passed through byte for byte");
    assert_eq!(attempts(&reply), 1);
    assert_eq!(mock.stats().received(GENERATE), 1);
}

#[tokio::test]
async fn reset_after_a_submission_was_written_is_never_resubmitted() {
    let (mock, proxy) = setup(&[]).await;
    mock.inject(GENERATE, Fault::ResetAfterBody, 1);
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let envelope = reply.json();
    assert_eq!(envelope["code"], 504);
    assert_eq!(envelope["data"], Value::Null);
    assert!(
        envelope["msg"].as_str().unwrap().starts_with(OUTCOME_UNKNOWN),
        "{envelope}"
    );
    assert_eq!(attempts(&reply), 1);
    // The point of it all: exactly one submission reached the upstream, which accepted it.
    assert_eq!(mock.stats().received(GENERATE), 1);
    assert_eq!(mock.stats().accepted(GENERATE), 1);
}

#[tokio::test]
async fn timeout_after_a_submission_was_written_is_never_resubmitted() {
    let (mock, proxy) = setup(&[("retry.attempt_timeout", "200ms")]).await;
    mock.inject(GENERATE, Fault::delay(Duration::from_secs(2)), 1);
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let msg = reply.json()["msg"].as_str().unwrap().to_owned();
    assert!(
        msg.starts_with(OUTCOME_UNKNOWN) && msg.contains("timed out after 200ms"),
        "{msg}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mock.stats().received(GENERATE), 1);
}

#[tokio::test]
async fn unknown_outcome_retry_can_be_turned_on_for_submissions() {
    let (mock, proxy) = setup(&[("retry.unknown_outcome", "read,submission")]).await;
    mock.inject(GENERATE, Fault::ResetAfterBody, 1);
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.json()["code"], 200);
    assert_eq!(
        mock.stats().accepted(GENERATE),
        2,
        "as asked: the task was submitted twice"
    );
}

#[tokio::test]
async fn the_same_reset_on_a_feed_read_is_retried() {
    let (mock, proxy) = setup(&[]).await;
    let client = client();
    let created = post_json(&client, &format!("{}{GENERATE}", mock.url()), &submission())
        .await
        .unwrap();
    let task_id = created.json()["data"]["task_id"].clone();
    mock.inject("/runway/feed", Fault::ResetAfterBody, 1);
    let reply = post_json(&client, &proxy.url("/runway/feed"), &json!({"task_id": task_id}))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["data"]["task_id"], task_id);
    assert_eq!(attempts(&reply), 2);
    assert_eq!(mock.stats().received("/runway/feed"), 2);
}

#[tokio::test]
async fn connect_failures_are_retried_even_for_submissions_until_max_attempts() {
    let dead = dead_address().await;
    let proxy = start_proxy_with(
        None,
        &format!("http://{dead}"),
        &fast(&[("retry.max_attempts", "3")]),
    )
    .await;
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(attempts(&reply), 3);
    assert_eq!(reply.headers["x-runway-proxy-retry-stopped"], "max-attempts");
    let msg = reply.json()["msg"].as_str().unwrap().to_owned();
    assert!(
        msg.starts_with("upstream connect failed: ") && msg.ends_with("(gave up after 3 attempts)"),
        "{msg}"
    );
}

#[tokio::test]
async fn max_attempts_returns_the_last_upstream_answer() {
    let (mock, proxy) = setup(&[("retry.max_attempts", "3")]).await;
    mock.inject(GENERATE, Fault::busy(), 0);
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(
        reply.json(),
        json!({"code": 500, "msg": "system busy, please try again", "data": null})
    );
    assert_eq!(attempts(&reply), 3);
    assert_eq!(reply.headers["x-runway-proxy-retry-stopped"], "max-attempts");
    assert_eq!(mock.stats().received(GENERATE), 3);
}

#[tokio::test]
async fn deadline_stops_retries() {
    let (mock, proxy) = setup(&[
        ("retry.deadline", "400ms"),
        ("retry.base_delay", "150ms"),
        ("retry.max_delay", "150ms"),
        ("retry.max_attempts", "100"),
    ])
    .await;
    mock.inject(GENERATE, Fault::too_many_requests(0), 0);
    let started = Instant::now();
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    // Retrying stopped at the 400 ms deadline (100 attempts with waits up to 150 ms
    // would take many seconds); the margin is for a busy machine, not a speed target.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{reply:?}");
    assert_eq!(
        reply
            .headers
            .get("x-runway-proxy-retry-stopped")
            .map(|v| v.to_str().unwrap()),
        Some("deadline"),
        "{reply:?}"
    );
    let n = attempts(&reply);
    // Waits of at most 150 ms leave room for at least two retries in 400 ms.
    assert!(n >= 3, "{n} attempts in 400ms with waits up to 150ms");
    assert_eq!(mock.stats().received(GENERATE), u64::from(n));

    // A deadline reached during a read's attempts, with no answer at all, says so.
    let (mock, proxy) = setup(&[("retry.deadline", "300ms"), ("retry.attempt_timeout", "100ms")]).await;
    mock.inject("/runway/feed", Fault::delay(Duration::from_secs(5)), 0);
    let reply = post_json(&client(), &proxy.url("/runway/feed"), &json!({"task_id": "x"}))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let msg = reply.json()["msg"].as_str().unwrap().to_owned();
    assert!(msg.starts_with("retry deadline of 300ms reached after "), "{msg}");
}

#[tokio::test]
async fn the_budget_caps_retries_when_everything_fails() {
    let (mock, proxy) = setup(&[
        ("retry.budget_percent", "20"),
        ("retry.budget_min_per_sec", "0"),
        ("retry.max_attempts", "5"),
    ])
    .await;
    mock.inject(GENERATE, Fault::busy(), 0);
    let client = client();
    let mut stopped_by_budget = 0;
    for _ in 0..10 {
        let reply = post_json(&client, &proxy.url(GENERATE), &submission())
            .await
            .unwrap();
        if reply
            .headers
            .get("x-runway-proxy-retry-stopped")
            .is_some_and(|v| v == "budget")
        {
            stopped_by_budget += 1;
        }
    }
    let received = mock.stats().received(GENERATE);
    // Without a budget: 50 attempts. With 20% of 10 requests: 2 retries.
    assert!((10..=12).contains(&received), "{received} attempts");
    assert!(stopped_by_budget >= 8, "{stopped_by_budget}");
    let text = metrics_text(&proxy).await;
    assert!(
        text.contains("runway_proxy_retry_outcomes_total{outcome=\"budget\"}"),
        "{text}"
    );
    // The series exists from the start (at 0): what counts is that the retries made
    // were counted.
    let retries: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("runway_proxy_retries_total{reason=\"retryable-code\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(retries, received - 10, "retries counted: {text}");
}

#[tokio::test]
async fn a_user_rule_from_the_config_file_changes_the_decision() {
    let file = r#"
        [[retry.rules]]
        name = "busy-is-final-here"
        msg_regex = "(?i)^system busy"
        action = "fail"
    "#;
    let mock = start_mock(MockConfig::default()).await;
    let proxy = start_proxy_with(Some(file), &mock.url(), &fast(&[])).await;
    mock.inject(GENERATE, Fault::busy(), 2);
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission())
        .await
        .unwrap();
    assert_eq!(reply.json()["code"], 500);
    assert_eq!(attempts(&reply), 1, "the user rule beat the default retry");
}

#[tokio::test]
async fn task_not_exist_on_a_read_is_retried_after_a_pause() {
    let file = r#"
        [[retry.rules]]
        name = "young-task"
        route_class = ["read"]
        msg_contains = "TASK_NOT_EXIST"
        action = "retry"
        delay = "150ms"
        max_attempts = 6
    "#;
    let mock = start_mock(
        MockConfig::default()
            .step(Duration::from_secs(60))
            .feed_delay(Duration::from_millis(250)),
    )
    .await;
    let proxy = start_proxy_with(Some(file), &mock.url(), &fast(&[])).await;
    let client = client();
    let created = post_json(&client, &format!("{}{GENERATE}", mock.url()), &submission())
        .await
        .unwrap();
    let task_id = created.json()["data"]["task_id"].clone();
    let reply = post_json(&client, &proxy.url("/runway/feed"), &json!({"task_id": task_id}))
        .await
        .unwrap();
    assert_eq!(reply.json()["code"], 200);
    let n = attempts(&reply);
    assert!((2..=3).contains(&n), "{n}");
    let reads = mock
        .requests()
        .into_iter()
        .filter(|r| r.uri == "/runway/feed")
        .collect::<Vec<_>>();
    assert!(
        reads[1].at - reads[0].at >= Duration::from_millis(150),
        "paused before the retry"
    );
}

#[tokio::test]
async fn other_routes_are_not_retried_on_error_answers() {
    let (mock, proxy) = setup(&[]).await;
    mock.inject("/v1/chat/completions", Fault::busy(), 1);
    let reply = post_json(&client(), &proxy.url("/v1/chat/completions"), &json!({}))
        .await
        .unwrap();
    assert_eq!(reply.json()["code"], 500);
    assert_eq!(attempts(&reply), 1);
}

#[tokio::test]
async fn retry_layer_wraps_a_plain_hyper_client() {
    use runway_proxy::retry::RetryLayer;
    use tower::{ServiceBuilder, ServiceExt};

    let mock = start_mock(MockConfig::default()).await;
    mock.inject(GENERATE, Fault::busy(), 1);
    let client: hyper_util::client::legacy::Client<_, runway_proxy::body::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .backoff(Duration::from_millis(10), Duration::from_millis(20))
                .build()
                .unwrap(),
        )
        .service(client);
    let request: Request<Full<Bytes>> = Request::post(format!("{}{GENERATE}", mock.url()))
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from(submission().to_string())))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.headers()["x-runway-proxy-attempts"], "2");
    assert_eq!(mock.stats().accepted(GENERATE), 1);
}
