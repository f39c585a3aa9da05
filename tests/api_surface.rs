//! The official API beyond task creation, through the proxy against the stand-in: POSTs
//! that create no task hold no task slot, and a cancelled task ends at once, frees its
//! slot, and its subscriber hears `CANCELLED`.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::mock::MockConfig;
use serde_json::json;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(10);

async fn call(
    method: http::Method,
    url: String,
    body: Option<serde_json::Value>,
    hook: Option<&str>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", "Bearer sk-test")
        .header("content-type", "application/json");
    if let Some(hook) = hook {
        request = request.header("x-runway-proxy-callback-url", hook);
    }
    let body = body
        .map(|b| bytes::Bytes::from(b.to_string()))
        .unwrap_or_default();
    tokio::time::timeout(WAIT, send(&client(), request.body(Full::new(body)).unwrap()))
        .await
        .expect("answered in time")
        .unwrap()
}

fn image_to_video() -> serde_json::Value {
    json!({"model": "gen4_turbo", "promptImage": "https://cdn.example.com/cat.png", "ratio": "1280:720"})
}

/// An `image_to_video` submission through `proxy`, its events to `hook` if given.
async fn submit_video(proxy: &RunningProxy, hook: Option<&str>) -> Reply {
    call(
        http::Method::POST,
        proxy.url("/runwayml/v1/image_to_video"),
        Some(image_to_video()),
        hook,
    )
    .await
}

#[tokio::test]
async fn resources_that_are_no_task_hold_no_task_slot() {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(30))).await;
    let proxy = start_proxy(&mock.url(), &[("guard.max_tasks_in_flight", "1")]).await;
    for (path, body) in [
        (
            "/runwayml/v1/voices",
            json!({"name": "My voice", "from": {"type": "text", "model": "eleven_ttv_v3", "prompt": "calm"}}),
        ),
        (
            "/runwayml/v1/uploads",
            json!({"filename": "cat.png", "type": "ephemeral"}),
        ),
        ("/runwayml/v1/avatars", json!({"name": "Ada"})),
        ("/runwayml/v1/organization/usage", json!({})),
    ] {
        let reply = call(http::Method::POST, proxy.url(path), Some(body), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {:?}", reply.body);
    }
    // The only task slot is still free.
    let reply = submit_video(&proxy, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let listed = send(
        &client(),
        Request::get(proxy.url("/-/tasks")).body(Full::default()).unwrap(),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(
        listed["tasks"].as_array().unwrap().len(),
        1,
        "only the task is watched: {listed}"
    );
}

#[tokio::test]
async fn a_cancelled_task_frees_its_slot_at_once_and_its_subscriber_hears_it() {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(30))).await;
    let proxy = start_proxy(
        &mock.url(),
        &[
            ("guard.max_tasks_in_flight", "1"),
            ("limit.max_wait", "0s"),
            ("callback.allow_private", "true"),
            ("webhook_secret", SECRET),
        ],
    )
    .await;
    let subscriber = Subscriber::start().await;
    let hook = subscriber.url("/events");
    let first = submit_video(&proxy, Some(&hook)).await;
    let id = first.json()["id"].as_str().unwrap().to_owned();
    // The slot is taken: a second submission is refused at once.
    let refused = submit_video(&proxy, None).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        refused.body
    );

    let cancel = call(
        http::Method::DELETE,
        proxy.url(&format!("/runwayml/v1/tasks/{id}")),
        None,
        None,
    )
    .await;
    assert_eq!(cancel.status, StatusCode::NO_CONTENT);
    let next = submit_video(&proxy, None).await;
    assert_eq!(
        next.status,
        StatusCode::OK,
        "the slot is free at once: {:?}",
        next.body
    );

    let received = subscriber.wait_for(1, WAIT).await;
    let cancelled = received
        .iter()
        .map(|(headers, body)| {
            assert!(signed_by(SECRET, headers, body));
            serde_json::from_slice::<serde_json::Value>(body).unwrap()
        })
        .find(|event| event["status"] == "CANCELLED")
        .expect("a CANCELLED event");
    assert_eq!(cancelled["id"], id.as_str());
    let task = send(
        &client(),
        Request::get(proxy.url(&format!("/-/tasks/{id}")))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(task["task"]["status"], "CANCELLED", "{task}");
    assert_eq!(task["task"]["state"], "done");
    // The upstream's own view agrees, and nothing more is relayed for it.
    let upstream = call(
        http::Method::GET,
        format!("{}/runwayml/v1/tasks/{id}", mock.url()),
        None,
        None,
    )
    .await;
    assert_eq!(upstream.json()["status"], "CANCELLED");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let statuses: Vec<String> = subscriber
        .received()
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["status"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "CANCELLED").count(),
        1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_workflow_run_is_watched_through_its_invocation_and_unknown_posts_are_counted() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(50))).await;
    let proxy = start_proxy(
        &mock.url(),
        &[
            ("callback.allow_private", "true"),
            ("webhook_secret", SECRET),
            ("watch.poll_interval", "100ms"),
        ],
    )
    .await;
    let subscriber = Subscriber::start().await;
    let hook = subscriber.url("/events");
    let run = call(
        http::Method::POST,
        proxy.url("/runwayml/v1/workflows/wf-1"),
        Some(json!({"nodeOutputs": {}})),
        Some(&hook),
    )
    .await;
    let id = run.json()["id"].as_str().unwrap().to_owned();
    eventually("the run's end relayed", WAIT, async || {
        subscriber.received().iter().any(|(_, body)| {
            serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|e| e["status"] == "SUCCEEDED")
        })
    })
    .await;
    let polled = mock
        .requests()
        .iter()
        .filter(|r| r.uri == format!("/runwayml/v1/workflow_invocations/{id}"))
        .count();
    assert!(polled > 0, "read as a workflow invocation");

    // An endpoint the proxy does not know goes through once, and is counted.
    let unknown = call(
        http::Method::POST,
        proxy.url("/runwayml/v1/brand_new_thing"),
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(
        unknown.status,
        StatusCode::NOT_FOUND,
        "the stand-in does not know it either"
    );
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains(r#"runway_proxy_unknown_endpoints_total{endpoint="brand_new_thing"} 1"#),
        "{metrics}"
    );
}
