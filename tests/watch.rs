//! The task watcher, end to end over loopback: the stand-in runs each task's life, the
//! proxy records and watches it, and a real subscriber gets its events, signed.
//! Official-format tasks (which have no webhooks) reach the subscriber by polling;
//! reverse-format tasks whose callbacks are lost reach it from the feed, once.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";
const WAIT: Duration = Duration::from_secs(15);

fn flags(extra: &[(&'static str, &str)]) -> Overrides {
    let mut flags = Overrides::from([
        ("webhook_secret", SECRET.to_owned()),
        ("callback.token_keys", TOKEN_KEYS.to_owned()),
        ("callback.allow_private", "true".to_owned()),
        ("delivery.schedule", "0s,100ms,200ms,400ms".to_owned()),
        ("retry.base_delay", "10ms".to_owned()),
        ("watch.poll_interval", "100ms".to_owned()),
        ("watch.recover_after", "300ms".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    flags
}

fn verified(headers: &http::HeaderMap, body: &[u8]) -> bool {
    signed_by(SECRET, headers, body)
}

fn events(received: &[(HeaderMap, Bytes)]) -> Vec<Value> {
    received
        .iter()
        .map(|(headers, body)| {
            assert!(verified(headers, body), "every event is signed");
            serde_json::from_slice(body).unwrap()
        })
        .collect()
}

/// Submit an official-format task through `proxy`, naming `subscriber` (if any).
async fn submit_official(proxy: &RunningProxy, subscriber: Option<&str>) -> Reply {
    let mut request = Request::post(proxy.url("/runwayml/v1/image_to_video"))
        .header("authorization", "Bearer sk-official")
        .header("content-type", "application/json");
    if let Some(url) = subscriber {
        request = request.header("x-runway-proxy-callback-url", url);
    }
    let body =
        json!({"model": "gen4_turbo", "promptImage": "https://example.com/a.png", "ratio": "1280:720"});
    send(
        &client(),
        request.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
    .unwrap()
}

async fn tasks_page(proxy: &RunningProxy, query: &str) -> Value {
    let request = Request::get(proxy.url(&format!("/-/tasks{query}")))
        .body(Full::default())
        .unwrap();
    send(&client(), request).await.unwrap().json()
}

/// Wait until the subscriber has an event with `status`.
async fn wait_for_status(subscriber: &Subscriber, key: &str, status: &str) -> Vec<Value> {
    let mut all = Vec::new();
    eventually(&format!("an event with {key} {status}"), WAIT, async || {
        all = events(&subscriber.received());
        all.iter().any(|e| e[key] == status)
    })
    .await;
    all
}

#[tokio::test]
async fn official_format_tasks_get_signed_events_ending_in_their_final_status() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(300))).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[])).await;
    let subscriber = Subscriber::start().await;
    let reply = submit_official(&proxy, Some(&subscriber.url("/events?tenant=1"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    // The subscriber header is the proxy's: the upstream never sees it.
    assert!(
        !mock.requests()[0]
            .headers
            .contains_key("x-runway-proxy-callback-url")
    );

    let all = wait_for_status(&subscriber, "status", "SUCCEEDED").await;
    let statuses: Vec<&str> = all.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.last(), Some(&"SUCCEEDED"), "{statuses:?}");
    let order = ["PENDING", "RUNNING", "SUCCEEDED"];
    let mut positions: Vec<usize> = statuses
        .iter()
        .map(|s| order.iter().position(|o| o == s).unwrap())
        .collect();
    let seen = positions.clone();
    positions.dedup();
    assert_eq!(positions, seen, "one event per status: {statuses:?}");
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {statuses:?}"
    );
    let last = all.last().unwrap();
    assert_eq!(last["id"], id.as_str());
    assert_eq!(last["runway_proxy_source"], "poll");
    assert_eq!(last["output"][0], format!("{}/cdn/video/{id}.mp4", mock.url()));

    // The watch ends with the final status, and says so.
    eventually("the watch is done", WAIT, async || {
        tasks_page(&proxy, "?status=done").await["tasks"]
            .as_array()
            .is_some_and(|tasks| tasks.len() == 1)
    })
    .await;
    let done = tasks_page(&proxy, "?status=done").await;
    let task = &done["tasks"][0];
    assert_eq!(
        (task["task_id"].as_str(), task["format"].as_str()),
        (Some(id.as_str()), Some("official"))
    );
    assert_eq!(task["status"], "SUCCEEDED");
    assert!(task.get("sealed_key").is_none() && !done.to_string().contains("sk-official"));
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("runway_proxy_task_checks_total{kind=\"poll\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failed_official_task_ends_with_its_failure_and_an_unsafe_subscriber_is_refused() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(100))).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[("callback.allow_private", "false")])).await;
    // A subscriber on loopback: refused before anything is sent.
    let refused = submit_official(&proxy, Some("http://127.0.0.1:9/hook")).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(mock.requests().is_empty(), "nothing was sent upstream");
    let bad = submit_official(&proxy, Some("not a url")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // A reachable one (allowed private addresses for the loopback subscriber here).
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[])).await;
    let subscriber = Subscriber::start().await;
    mock.inject("/runwayml/v1/image_to_video", Fault::FailTask, 1);
    let reply = submit_official(&proxy, Some(&subscriber.url("/events"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let all = wait_for_status(&subscriber, "status", "FAILED").await;
    let failed = all.iter().find(|e| e["status"] == "FAILED").unwrap();
    assert_eq!(failed["failureCode"], "INTERNAL");
    assert_eq!(failed["failure"], "generation failed");
}

#[tokio::test]
async fn official_tasks_without_a_subscriber_go_to_the_default_one_or_are_not_watched() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(100))).await;
    let unwatched = start_proxy_with(None, &mock.url(), &flags(&[])).await;
    assert_eq!(submit_official(&unwatched, None).await.status, StatusCode::OK);
    // No subscriber: no event to relay, but the task is still followed to its end, for
    // the ledger and the task guard.
    eventually("the task is followed to its end", WAIT, async || {
        tasks_page(&unwatched, "?status=done").await["tasks"]
            .as_array()
            .is_some_and(|tasks| tasks.len() == 1)
    })
    .await;
    let done = tasks_page(&unwatched, "?status=done").await;
    assert_eq!(done["tasks"][0]["status"], "SUCCEEDED");
    let deliveries = send(
        &client(),
        Request::get(unwatched.url("/-/deliveries"))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(deliveries["deliveries"], json!([]), "nothing to relay, nowhere");

    let subscriber = Subscriber::start().await;
    let default = subscriber.url("/default");
    let proxy = start_proxy_with(
        None,
        &mock.url(),
        &flags(&[("watch.official_callback_url", &default)]),
    )
    .await;
    assert_eq!(submit_official(&proxy, None).await.status, StatusCode::OK);
    wait_for_status(&subscriber, "status", "SUCCEEDED").await;
}

#[tokio::test]
async fn a_reverse_task_whose_callbacks_are_lost_is_recovered_once_even_when_one_comes_late() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(50))).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[])).await;
    let subscriber = Subscriber::start().await;
    mock.inject("/runway/pro/generate", Fault::DropCallbacks, 1);
    let reply = post_json(
        &client(),
        &proxy.url("/runway/pro/generate"),
        &json!({"prompt": "a cat", "model": "gen4", "callback_url": subscriber.url("/hook")}),
    )
    .await
    .unwrap();
    let id = reply.json()["data"]["task_id"].as_str().unwrap().to_owned();

    let all = wait_for_status(&subscriber, "status", "3").await;
    assert_eq!(all.len(), 1, "only the final result: {all:?}");
    let recovered = &all[0];
    assert_eq!(recovered["task_id"], id.as_str());
    assert_eq!(recovered["runway_proxy_source"], "recovered");
    assert_eq!(
        recovered["video_url"],
        format!("{}/cdn/video/{id}.mp4", mock.url())
    );
    assert!(
        recovered.get("state").is_none(),
        "the shape of a callback, not of the feed"
    );

    // The real callback, late: acknowledged, never delivered a second time.
    assert!(mock.send_callback_now(&id).await);
    eventually("the late callback answered", WAIT, async || {
        mock.callbacks().iter().any(|c| c.accepted)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(subscriber.received().len(), 1, "delivered exactly once");
    let done = tasks_page(&proxy, "?status=done").await;
    assert_eq!(done["tasks"][0]["recovered"], true);
    assert!(
        metrics_text(&proxy)
            .await
            .contains("runway_proxy_tasks_recovered_total 1")
    );
}

#[tokio::test]
async fn a_task_that_calls_back_is_never_read_from_the_feed() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(50))).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[])).await;
    let subscriber = Subscriber::start().await;
    post_json(
        &client(),
        &proxy.url("/runway/pro/generate"),
        &json!({"prompt": "a cat", "model": "gen4", "callback_url": subscriber.url("/hook")}),
    )
    .await
    .unwrap();
    let all = wait_for_status(&subscriber, "status", "3").await;
    assert!(
        all.iter().all(|e| e.get("runway_proxy_source").is_none()),
        "{all:?}"
    );
    // Past recover_after: still no feed read, the watch ended with the callback.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(mock.stats().received("/runway/feed"), 0);
    let done = tasks_page(&proxy, "?status=done").await;
    assert_eq!(done["tasks"][0]["recovered"], false);
}

#[tokio::test]
async fn a_restart_in_the_middle_of_watching_loses_nothing() {
    // Long enough steps that the first proxy stops before the task ends.
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(1500))).await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let subscriber = Subscriber::start().await;
    let mut first = start_proxy_with(None, &mock.url(), &flags(&[("data_dir", &dir)])).await;
    assert_eq!(
        submit_official(&first, Some(&subscriber.url("/events")))
            .await
            .status,
        StatusCode::OK
    );
    first.shutdown().await.unwrap();
    assert!(
        subscriber
            .received()
            .iter()
            .all(|(_, b)| !String::from_utf8_lossy(b).contains("SUCCEEDED"))
    );

    let second = start_proxy_with(None, &mock.url(), &flags(&[("data_dir", &dir)])).await;
    wait_for_status(&subscriber, "status", "SUCCEEDED").await;
    let done = tasks_page(&second, "?status=done").await;
    assert_eq!(done["tasks"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn the_task_list_checks_its_query() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[])).await;
    for query in ["?status=nope", "?after=x", "?limit=0", "?what=1"] {
        let request = Request::get(proxy.url(&format!("/-/tasks{query}")))
            .body(Full::default())
            .unwrap();
        assert_eq!(
            send(&client(), request).await.unwrap().status,
            StatusCode::BAD_REQUEST,
            "{query}"
        );
    }
    let request = Request::post(proxy.url("/-/tasks"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client(), request).await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn with_confirmation_a_forged_final_callback_is_not_relayed() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(600))).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[("watch.confirm_callbacks", "true")])).await;
    let subscriber = Subscriber::start().await;
    let hook = subscriber.url("/hook");
    let reply = post_json(
        &client(),
        &proxy.url("/runway/pro/generate"),
        &json!({"prompt": "a cat", "model": "gen4", "callback_url": hook}),
    )
    .await
    .unwrap();
    let id = reply.json()["data"]["task_id"].as_str().unwrap().to_owned();

    // Whoever knows the callback URL posts a success the task has not had.
    let token = runway_proxy::callback::Keyring::parse(TOKEN_KEYS)
        .unwrap()
        .mint(&hook);
    let forged =
        json!({"task_id": id, "status": "3", "update_time": "1", "video_url": "https://evil.example/x.mp4"});
    let request = Request::post(format!("http://{}/hooks/runway/{token}", proxy.webhook_addr))
        .body(Full::new(Bytes::from(forged.to_string())))
        .unwrap();
    let answer = send(&client(), request).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&answer.body).contains("not relayed"));

    // The real life of the task still reaches the subscriber, and only it.
    let all = wait_for_status(&subscriber, "status", "3").await;
    assert!(
        all.iter().all(|e| e["video_url"] != "https://evil.example/x.mp4"),
        "{all:?}"
    );
    let done = all.iter().find(|e| e["status"] == "3").unwrap();
    assert_eq!(done["video_url"], format!("{}/cdn/video/{id}.mp4", mock.url()));
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("runway_proxy_callback_confirmations_total{result=\"contradicted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runway_proxy_callback_confirmations_total{result=\"confirmed\"} 1"),
        "{metrics}"
    );
}
