//! What a retrying client is told, `Idempotency-Key`, large official submissions and
//! loud failures: through the sidecar, against the stand-in, over loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use serde_json::json;

const GENERATE: &str = "/runway/pro/generate";
const IMAGE_TO_VIDEO: &str = "/runwayml/v1/image_to_video";

fn flags(extra: &[(&'static str, &str)]) -> Overrides {
    let mut flags = Overrides::from([
        ("retry.base_delay", "10ms".to_owned()),
        ("retry.max_delay", "50ms".to_owned()),
        ("retry.budget_min_per_sec", "100".to_owned()),
        ("callback.allow_private", "true".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    flags
}

async fn setup(extra: &[(&'static str, &str)]) -> (MockUpstream, RunningProxy) {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(extra)).await;
    (mock, proxy)
}

fn post(proxy: &RunningProxy, path: &str, body: impl Into<Bytes>, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::post(proxy.url(path))
        .header("authorization", "Bearer sk-test")
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Full::new(body.into())).unwrap()
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

const TASK: &str =
    r#"{"promptImage":"https://cdn.example.com/cat.png","model":"gen4_turbo","ratio":"1280:720"}"#;

#[tokio::test]
async fn an_outcome_unknown_tells_the_client_not_to_retry_in_runways_own_error_shape() {
    let (mock, proxy) = setup(&[]).await;
    mock.inject(IMAGE_TO_VIDEO, Fault::ResetAfterBody, 1);
    let reply = send(&client(), post(&proxy, IMAGE_TO_VIDEO, TASK, None))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(header(&reply, "x-should-retry"), Some("false"));
    let error = reply.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.starts_with("outcome unknown"),
        "Runway's {{\"error\": ...}} shape: {error}"
    );
    assert_eq!(
        mock.stats().accepted(IMAGE_TO_VIDEO),
        1,
        "the upstream did create it"
    );
}

#[tokio::test]
async fn an_answer_after_the_proxy_stopped_retrying_says_do_not_retry() {
    let (mock, proxy) = setup(&[("retry.max_attempts", "2")]).await;
    mock.inject(GENERATE, Fault::busy(), 0);
    let body = json!({"prompt": "a cat", "callback_url": "http://127.0.0.1:9/hook"}).to_string();
    let reply = send(&client(), post(&proxy, GENERATE, body, None)).await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "CometAPI's error inside a 200, passed on"
    );
    assert_eq!(
        header(&reply, "x-runway-proxy-retry-stopped"),
        Some("max-attempts")
    );
    assert_eq!(header(&reply, "x-should-retry"), Some("false"));
}

#[tokio::test]
async fn the_limiters_429_invites_a_retry_after_its_wait() {
    let (_mock, proxy) = setup(&[("limit.submit_rate", "1/min"), ("limit.max_wait", "0s")]).await;
    let first = send(&client(), post(&proxy, IMAGE_TO_VIDEO, TASK, None))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let second = send(&client(), post(&proxy, IMAGE_TO_VIDEO, TASK, None))
        .await
        .unwrap();
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&second, "x-should-retry"),
        Some("true"),
        "nothing was sent"
    );
    assert!(header(&second, "retry-after").is_some());
}

#[tokio::test]
async fn a_connect_failure_invites_a_retry() {
    let proxy = start_proxy_with(
        None,
        &format!("http://{}", dead_address().await),
        &flags(&[("retry.max_attempts", "1")]),
    )
    .await;
    let reply = send(&client(), post(&proxy, IMAGE_TO_VIDEO, TASK, None))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        header(&reply, "x-should-retry"),
        Some("true"),
        "nothing reached the upstream"
    );
    assert_eq!(header(&reply, "retry-after"), Some("1"));
    assert!(
        reply.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("connect"))
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_answer_even_after_a_restart() {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    let data = tempfile::tempdir().unwrap();
    let mut with_data = flags(&[]);
    with_data.insert("data_dir", data.path().display().to_string());
    let body = json!({"prompt": "a cat", "callback_url": "http://127.0.0.1:9/hook"}).to_string();

    let mut proxy = start_proxy_with(None, &mock.url(), &with_data).await;
    let first = send(&client(), post(&proxy, GENERATE, body.clone(), Some("order-42")))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK);
    proxy.shutdown().await.unwrap();

    let proxy = start_proxy_with(None, &mock.url(), &with_data).await;
    let again = send(&client(), post(&proxy, GENERATE, body.clone(), Some("order-42")))
        .await
        .unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["data"]["task_id"], first.json()["data"]["task_id"]);
    assert_eq!(mock.stats().accepted(GENERATE), 1, "one task, one payment");

    let other = json!({"prompt": "a dog", "callback_url": "http://127.0.0.1:9/hook"}).to_string();
    let mismatch = send(&client(), post(&proxy, GENERATE, other, Some("order-42")))
        .await
        .unwrap();
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn an_unknown_outcome_with_a_key_is_never_sent_again() {
    let (mock, proxy) = setup(&[]).await;
    mock.inject(IMAGE_TO_VIDEO, Fault::ResetAfterBody, 1);
    let first = send(&client(), post(&proxy, IMAGE_TO_VIDEO, TASK, Some("k-1")))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    for _ in 0..3 {
        let again = send(&client(), post(&proxy, IMAGE_TO_VIDEO, TASK, Some("k-1")))
            .await
            .unwrap();
        assert_eq!(again.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
        assert_eq!(header(&again, "x-should-retry"), Some("false"));
    }
    assert_eq!(mock.stats().received(IMAGE_TO_VIDEO), 1, "sent once");
}

#[tokio::test]
async fn a_5mb_data_uri_image_passes_and_is_retried_whole() {
    let (mock, proxy) = setup(&[]).await;
    mock.inject(
        IMAGE_TO_VIDEO,
        Fault::Status {
            status: 503,
            retry_after: None,
            body: None,
        },
        1,
    );
    let image = "A".repeat(5 * 1024 * 1024 * 4 / 3);
    let body = json!({"promptImage": format!("data:image/png;base64,{image}"), "model": "gen4_turbo", "ratio": "1280:720"})
        .to_string();
    assert!(body.len() > 6_500_000);
    let reply = send(&client(), post(&proxy, IMAGE_TO_VIDEO, body.clone(), None))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        header(&reply, "x-runway-proxy-attempts"),
        Some("2"),
        "buffered, so replayable"
    );
    assert_eq!(mock.stats().accepted(IMAGE_TO_VIDEO), 1);
    let sent = mock
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.uri == IMAGE_TO_VIDEO)
        .unwrap();
    assert_eq!(sent.body, body.as_bytes(), "byte for byte");
}

#[tokio::test]
async fn a_body_over_the_replay_limit_streams_through_once() {
    let (mock, proxy) = setup(&[("retry.body_limit", "64KiB")]).await;
    mock.inject(
        IMAGE_TO_VIDEO,
        Fault::Status {
            status: 503,
            retry_after: None,
            body: None,
        },
        1,
    );
    let body = json!({"promptImage": format!("data:image/png;base64,{}", "A".repeat(200_000))}).to_string();
    let reply = send(&client(), post(&proxy, IMAGE_TO_VIDEO, body, None))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "not a 413");
    assert_eq!(
        header(&reply, "x-runway-proxy-retry-stopped"),
        Some("not-replayable")
    );
    assert_eq!(header(&reply, "x-should-retry"), Some("false"));
    assert_eq!(mock.stats().received(IMAGE_TO_VIDEO), 1);
}

#[tokio::test]
async fn a_reverse_submission_too_large_to_rewrite_names_the_setting() {
    let (mock, proxy) = setup(&[("callback.body_limit", "64KiB")]).await;
    let body = json!({"prompt": "x".repeat(100_000), "callback_url": "http://127.0.0.1:9/hook"}).to_string();
    let reply = send(&client(), post(&proxy, GENERATE, body, None)).await.unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        reply.json()["msg"]
            .as_str()
            .unwrap()
            .contains("callback.body_limit"),
        "{}",
        reply.json()
    );
    assert_eq!(mock.stats().received(GENERATE), 0, "nothing sent");
}

#[tokio::test]
async fn surfaced_envelope_errors_turn_an_error_inside_200_into_its_http_status() {
    let body = json!({"prompt": "a cat", "callback_url": "http://127.0.0.1:9/hook"}).to_string();
    let (mock, proxy) = setup(&[
        ("retry.surface_envelope_errors", "true"),
        ("retry.max_attempts", "1"),
    ])
    .await;
    mock.inject(GENERATE, Fault::busy(), 1);
    let busy = send(&client(), post(&proxy, GENERATE, body.clone(), None))
        .await
        .unwrap();
    assert_eq!(busy.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(busy.json()["code"], 500, "the body is unchanged");
    mock.inject(
        GENERATE,
        Fault::Envelope {
            status: 200,
            code: json!("error"),
            msg: "odd".into(),
        },
        1,
    );
    let odd = send(&client(), post(&proxy, GENERATE, body.clone(), None))
        .await
        .unwrap();
    assert_eq!(
        odd.status,
        StatusCode::BAD_GATEWAY,
        "a code that is not an HTTP status"
    );

    let (mock, proxy) = setup(&[("retry.max_attempts", "1")]).await;
    mock.inject(GENERATE, Fault::busy(), 1);
    let quiet = send(&client(), post(&proxy, GENERATE, body, None)).await.unwrap();
    assert_eq!(
        quiet.status,
        StatusCode::OK,
        "off by default: the wire stays CometAPI's"
    );
}
