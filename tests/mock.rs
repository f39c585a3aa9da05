//! The CometAPI stand-in: routes, task lifecycle, callbacks, and every fault kind.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::mock::{Fault, MockConfig};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_millis(40);

fn submission(callback: &str) -> Value {
    json!({"callback_url": callback, "prompt": "a cat", "ratio": "16:9", "model": "gen4"})
}

fn callbacks(received: &[(http::HeaderMap, Bytes)]) -> Vec<Value> {
    received
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect()
}

#[tokio::test]
async fn reverse_format_task_lifecycle_sends_a_callback_per_status_change() {
    let mock = start_mock(MockConfig::default().step(STEP)).await;
    let subscriber = Subscriber::start().await;
    let client = client();
    let reply = post_json(
        &client,
        &format!("{}/runway/pro/generate", mock.url()),
        &submission(&subscriber.url("/hook")),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let envelope = reply.json();
    assert_eq!(envelope["code"], 200);
    assert_eq!(envelope["msg"], "success");
    let task_id = envelope["data"]["task_id"].as_str().unwrap().to_owned();

    let got = callbacks(&subscriber.wait_for(2, Duration::from_secs(5)).await);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["status"], "1");
    assert_eq!(got[1]["status"], "3");
    let done = &got[1];
    for field in [
        "task_id",
        "status",
        "prompt",
        "prompt_en",
        "video_url",
        "poster",
        "last_frame",
        "point",
        "refund",
        "create_time",
        "update_time",
    ] {
        assert!(done[field].is_string(), "{field} is a string in {done}");
    }
    assert_eq!(done["task_id"], task_id.as_str());
    assert_eq!(done["msg"], Value::Null);
    assert!(done["video_url"].as_str().unwrap().ends_with(".mp4"));
    assert_eq!(done["refund"], "0");

    let feed = post_json(
        &client,
        &format!("{}/runway/feed", mock.url()),
        &json!({"task_id": task_id}),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(feed["code"], 200);
    assert_eq!(feed["data"]["status"], "3");
    assert_eq!(feed["data"]["state"], "succeeded");
    assert_eq!(mock.stats().accepted("/runway/pro/generate"), 1);
    // The stand-in counts a callback once its receiver has answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.stats().callbacks_sent < 2 {
        assert!(Instant::now() < deadline, "callbacks never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.callbacks().len(), 2);
}

#[tokio::test]
async fn every_reverse_route_accepts_and_validates() {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    let client = client();
    for route in [
        "/runway/pro/generate",
        "/runway/pro/video2video",
        "/runway/pro/act_one",
    ] {
        let url = format!("{}{route}", mock.url());
        let ok = post_json(&client, &url, &submission("http://127.0.0.1:9/hook"))
            .await
            .unwrap()
            .json();
        assert_eq!(ok["code"], 200, "{route}");

        let missing = post_json(&client, &url, &json!({"prompt": "x"})).await.unwrap();
        assert_eq!(missing.status, StatusCode::OK, "an error inside a 200");
        assert_eq!(missing.json()["msg"], "callback_url_empty");

        let unauthenticated = Request::post(&url)
            .body(Full::new(Bytes::from(submission("http://x/").to_string())))
            .unwrap();
        let reply = send(&client, unauthenticated).await.unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json()["code"], 401);
        assert_eq!(mock.stats().accepted(route), 1, "{route}");
        assert_eq!(mock.stats().received(route), 3, "{route}");
    }
}

#[tokio::test]
async fn official_format_returns_an_id_and_runway_statuses() {
    let mock = start_mock(MockConfig::default().step(STEP)).await;
    let client = client();
    let created = post_json(
        &client,
        &format!("{}/runwayml/v1/image_to_video", mock.url()),
        &json!({"promptImage": "https://x/y.png", "model": "gen3a_turbo", "promptText": "a cat", "duration": 5}),
    )
    .await
    .unwrap()
    .json();
    let id = created["id"].as_str().unwrap().to_owned();
    let get = |id: &str| {
        Request::get(format!("{}/runwayml/v1/tasks/{id}", mock.url()))
            .header("authorization", "Bearer sk-test")
            .body(Full::default())
            .unwrap()
    };
    let first = send(&client, get(&id)).await.unwrap().json();
    assert!(
        ["PENDING", "RUNNING"].contains(&first["status"].as_str().unwrap()),
        "{first}"
    );
    tokio::time::sleep(STEP * 4).await;
    let last = send(&client, get(&id)).await.unwrap().json();
    assert_eq!(last["status"], "SUCCEEDED");
    assert_eq!(last["progress"], 1.0);
    assert!(last["output"][0].as_str().unwrap().ends_with(".mp4"));
    let missing = send(&client, get("nope")).await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].is_string());
}

#[tokio::test]
async fn feed_answers_task_not_exist_right_after_creation() {
    let mock = start_mock(
        MockConfig::default()
            .step(Duration::from_secs(60))
            .feed_delay(Duration::from_millis(300)),
    )
    .await;
    let client = client();
    let id = post_json(
        &client,
        &format!("{}/runway/pro/generate", mock.url()),
        &submission("http://127.0.0.1:9/"),
    )
    .await
    .unwrap()
    .json()["data"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let feed = format!("{}/runway/feed", mock.url());
    let early = post_json(&client, &feed, &json!({"task_id": id}))
        .await
        .unwrap()
        .json();
    assert_eq!(early["msg"], "task_not_exist");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let later = post_json(&client, &feed, &json!({"task_id": id}))
        .await
        .unwrap()
        .json();
    assert_eq!(later["code"], 200);
    assert_eq!(later["data"]["status"], "0");
}

#[tokio::test]
async fn response_faults_do_what_they_say() {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    let client = client();
    let url = format!("{}/runway/pro/generate", mock.url());
    let body = submission("http://127.0.0.1:9/");

    mock.inject("/runway/pro/generate", Fault::busy(), 1);
    let busy = post_json(&client, &url, &body).await.unwrap();
    assert_eq!(busy.status, StatusCode::OK);
    assert_eq!(
        busy.json(),
        json!({"code": 500, "msg": "system busy, please try again", "data": null})
    );

    mock.inject(
        "/runway/pro/generate",
        Fault::Envelope {
            status: 200,
            code: json!("error"),
            msg: "quota".into(),
        },
        1,
    );
    assert_eq!(
        post_json(&client, &url, &body).await.unwrap().json()["code"],
        "error"
    );

    mock.inject("/runway/pro/generate", Fault::too_many_requests(1), 1);
    let limited = post_json(&client, &url, &body).await.unwrap();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(limited.json()["code"], 429);

    mock.inject(
        "/runway/pro/generate",
        Fault::Status {
            status: 524,
            retry_after: None,
            body: None,
        },
        1,
    );
    assert_eq!(
        post_json(&client, &url, &body).await.unwrap().status.as_u16(),
        524
    );

    mock.inject(
        "/runway/pro/generate",
        Fault::delay(Duration::from_millis(200)),
        1,
    );
    let started = Instant::now();
    let delayed = post_json(&client, &url, &body).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(delayed.json()["code"], 200, "a delay then a normal answer");

    assert_eq!(
        mock.stats().accepted("/runway/pro/generate"),
        1,
        "only the delayed one was accepted"
    );
    assert_eq!(
        post_json(&client, &url, &body).await.unwrap().json()["code"],
        200,
        "faults are used up"
    );
}

#[tokio::test]
async fn reset_before_body_creates_nothing() {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    mock.inject("/runway/pro/generate", Fault::ResetBeforeBody, 1);
    let url = format!("{}/runway/pro/generate", mock.url());
    let err = post_json(&client(), &url, &submission("http://127.0.0.1:9/"))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    let stats = mock.stats();
    assert_eq!(stats.received("/runway/pro/generate"), 1);
    assert_eq!(stats.accepted("/runway/pro/generate"), 0);
}

#[tokio::test]
async fn reset_after_body_creates_the_task_but_never_answers() {
    let mock = start_mock(MockConfig::default().step(STEP)).await;
    let subscriber = Subscriber::start().await;
    mock.inject("/runway/pro/generate", Fault::ResetAfterBody, 1);
    let url = format!("{}/runway/pro/generate", mock.url());
    let err = post_json(&client(), &url, &submission(&subscriber.url("/hook")))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    assert_eq!(
        mock.stats().accepted("/runway/pro/generate"),
        1,
        "the upstream acted on it"
    );
    // The task lives on and reports back, which is why a resubmission would be a duplicate.
    let got = callbacks(&subscriber.wait_for(2, Duration::from_secs(5)).await);
    assert_eq!(got[1]["status"], "3");
}

#[tokio::test]
async fn task_faults_change_the_callbacks() {
    let mock = start_mock(MockConfig::default().step(STEP)).await;
    let client = client();
    let url = format!("{}/runway/pro/generate", mock.url());

    let failing = Subscriber::start().await;
    mock.inject("/runway/pro/generate", Fault::FailTask, 1);
    post_json(&client, &url, &submission(&failing.url("/f")))
        .await
        .unwrap();
    let got = callbacks(&failing.wait_for(2, Duration::from_secs(5)).await);
    assert_eq!(got[1]["status"], "2");
    assert_eq!(got[1]["refund"], "320");
    assert_eq!(got[1]["msg"], "generation failed");
    assert_eq!(got[1]["video_url"], "");

    let duplicated = Subscriber::start().await;
    mock.inject("/runway/pro/generate", Fault::DuplicateCallbacks, 1);
    post_json(&client, &url, &submission(&duplicated.url("/d")))
        .await
        .unwrap();
    let got = duplicated.wait_for(4, Duration::from_secs(5)).await;
    assert_eq!(got[0].1, got[1].1);
    assert_eq!(got[2].1, got[3].1);
    assert_eq!(callbacks(&got)[3]["status"], "3");

    let reordered = Subscriber::start().await;
    mock.inject("/runway/pro/generate", Fault::OutOfOrderCallbacks, 1);
    post_json(&client, &url, &submission(&reordered.url("/o")))
        .await
        .unwrap();
    let got = callbacks(&reordered.wait_for(2, Duration::from_secs(5)).await);
    assert_eq!(got[0]["status"], "3", "terminal status first");
    assert_eq!(got[1]["status"], "1", "then the stale one");

    // Lost callbacks: the task still runs its life, the feed follows it, and a late
    // callback can be sent on demand.
    let forgotten = Subscriber::start().await;
    mock.inject("/runway/pro/generate", Fault::DropCallbacks, 1);
    let reply = post_json(&client, &url, &submission(&forgotten.url("/l")))
        .await
        .unwrap();
    let id = reply.json()["data"]["task_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mock.task(&id).unwrap().status != "3" {
        assert!(tokio::time::Instant::now() < deadline, "the task never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(forgotten.received().is_empty(), "no callback was sent");
    let feed = post_json(
        &client,
        &format!("{}/runway/feed", mock.url()),
        &json!({"task_id": id}),
    )
    .await
    .unwrap();
    assert_eq!(feed.json()["data"]["status"], "3");
    assert!(mock.send_callback_now(&id).await);
    let got = callbacks(&forgotten.wait_for(1, Duration::from_secs(5)).await);
    assert_eq!(
        (got[0]["task_id"].as_str(), got[0]["status"].as_str()),
        (Some(id.as_str()), Some("3"))
    );
    assert!(!mock.send_callback_now("no-such-task").await);
}

#[tokio::test]
async fn control_api_scripts_faults_and_reports_counts() {
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    let client = client();
    let control = |path: &str| format!("{}/-/mock/{path}", mock.url());
    let queued = post_json(
        &client,
        &control("faults"),
        &json!({"route": "/runway/pro/*", "fault": {"kind": "status", "status": 503}, "times": 2}),
    )
    .await
    .unwrap();
    assert_eq!(queued.status, StatusCode::OK);
    let url = format!("{}/runway/pro/act_one", mock.url());
    let body = submission("http://127.0.0.1:9/");
    assert_eq!(
        post_json(&client, &url, &body).await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        post_json(&client, &url, &body).await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        post_json(&client, &url, &body).await.unwrap().status,
        StatusCode::OK
    );

    let bad = post_json(
        &client,
        &control("faults"),
        &json!({"route": "*", "fault": {"kind": "nope"}}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["msg"].as_str().unwrap().starts_with("invalid fault"));

    let stats = send(
        &client,
        Request::get(control("stats")).body(Full::default()).unwrap(),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(stats["routes"]["/runway/pro/act_one"]["requests"], 3);
    assert_eq!(stats["routes"]["/runway/pro/act_one"]["accepted"], 1);
    assert!(stats["max_in_flight"].as_u64().unwrap() >= 1);

    post_json(
        &client,
        &control("faults"),
        &json!({"route": "*", "fault": {"kind": "reset_before_body"}, "times": 0}),
    )
    .await
    .unwrap();
    let delete = Request::delete(control("faults")).body(Full::default()).unwrap();
    assert_eq!(send(&client, delete).await.unwrap().status, StatusCode::OK);
    assert_eq!(
        post_json(&client, &url, &body).await.unwrap().status,
        StatusCode::OK,
        "faults cleared"
    );

    post_json(&client, &control("reset"), &json!({})).await.unwrap();
    assert_eq!(mock.stats().received("/runway/pro/act_one"), 0);
}

/// Like a Runway tier: past `max_running` a task waits as `THROTTLED` until a slot
/// frees; each task costs 32 points per second of video, refunded when it fails; and the
/// stand-in keeps its own count per key, for the proxy's ledger to be checked against.
#[tokio::test]
async fn a_tier_limit_throttles_tasks_and_each_key_is_charged_by_duration() {
    let mock = start_mock(MockConfig::default().step(STEP).max_running(2)).await;
    let client = client();
    let url = format!("{}/runwayml/v1/image_to_video", mock.url());
    let body = json!({"promptImage": "https://x/y.png", "model": "gen4_turbo", "duration": 5});
    let mut ids = Vec::new();
    for _ in 0..4 {
        let created = post_json(&client, &url, &body).await.unwrap().json();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let status = |id: &str| {
        let request = Request::get(format!("{}/runwayml/v1/tasks/{id}", mock.url()))
            .header("authorization", "Bearer sk-test")
            .body(Full::default())
            .unwrap();
        let client = client.clone();
        async move { send(&client, request).await.unwrap().json()["status"].clone() }
    };
    assert_eq!(status(&ids[3]).await, "THROTTLED", "two run, the rest wait");
    assert!(mock.task(&ids[2]).unwrap().throttled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.tasks().iter().any(|t| t.status != "3") {
        assert!(Instant::now() < deadline, "the throttled tasks never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status(&ids[3]).await, "SUCCEEDED");

    // A failed reverse task of another key: charged, then refunded in full.
    let failing = Subscriber::start().await;
    mock.inject("/runway/pro/generate", Fault::FailTask, 1);
    let request = Request::post(format!("{}/runway/pro/generate", mock.url()))
        .header("authorization", "Bearer sk-other")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"callback_url": failing.url("/f"), "prompt": "a cat", "model": "gen4", "duration": "10"})
                .to_string(),
        )))
        .unwrap();
    send(&client, request).await.unwrap();
    let got = callbacks(&failing.wait_for(2, Duration::from_secs(5)).await);
    assert_eq!(
        (got[0]["point"].as_str(), got[0]["refund"].as_str()),
        (Some("320"), Some("0"))
    );
    assert_eq!(
        (got[1]["point"].as_str(), got[1]["refund"].as_str()),
        (Some("320"), Some("320"))
    );

    let stats = mock.stats();
    assert_eq!((stats.throttled, stats.peak_unfinished), (2, 4));
    let test_key = &stats.keys[&runway_proxy::tasks::key_hash(b"Bearer sk-test")];
    assert_eq!(
        (test_key.tasks, test_key.points, test_key.refunded),
        (4, 4 * 160, 0)
    );
    let other = &stats.keys[&runway_proxy::tasks::key_hash(b"Bearer sk-other")];
    assert_eq!((other.tasks, other.points, other.refunded), (1, 320, 320));
}

#[tokio::test]
async fn a_succeeded_tasks_outputs_are_real_bytes_that_expire() {
    const SIZE: u64 = 300_001; // not a whole number of the generator's chunks
    let lifetime = Duration::from_millis(1500);
    let mock = start_mock(
        MockConfig::default()
            .step(STEP)
            .output_bytes(SIZE)
            .outputs_expire_after(lifetime),
    )
    .await;
    let subscriber = Subscriber::start().await;
    let client = client();
    let get = |url: &str| Request::get(url).body(Full::default()).unwrap();
    let reply = post_json(
        &client,
        &format!("{}/runway/pro/generate", mock.url()),
        &submission(&subscriber.url("/hook")),
    )
    .await
    .unwrap();
    let id = reply.json()["data"]["task_id"].as_str().unwrap().to_owned();
    // Not succeeded yet: nothing to serve.
    let early = send(&client, get(&format!("{}/cdn/video/{id}.mp4", mock.url())))
        .await
        .unwrap();
    assert_eq!(early.status, StatusCode::NOT_FOUND);

    let got = callbacks(&subscriber.wait_for(2, Duration::from_secs(5)).await);
    let done = &got[1];
    assert_eq!(done["status"], "3");
    let video_url = done["video_url"].as_str().unwrap();
    // Signed with its expiry, as a CDN's URL is.
    let unsigned = format!("{}/cdn/video/{id}.mp4", mock.url());
    assert!(
        video_url.starts_with(&format!("{unsigned}?expires=")),
        "{video_url}"
    );
    assert!(video_url.contains("&signature="), "{video_url}");
    let tampered = video_url.replace("expires=1", "expires=2");
    assert_eq!(
        send(&client, get(&tampered)).await.unwrap().status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&client, get(&unsigned)).await.unwrap().status,
        StatusCode::FORBIDDEN
    );

    // No key needed, as on a CDN; the declared length is the body's; an MP4 header.
    let video = send(&client, get(video_url)).await.unwrap();
    assert_eq!(video.status, StatusCode::OK);
    assert_eq!(video.headers["content-type"], "video/mp4");
    assert_eq!(video.headers["content-length"], SIZE.to_string().as_str());
    assert_eq!(video.body.len() as u64, SIZE);
    assert_eq!(&video.body[4..12], b"ftypisom");
    // The same URL, the same bytes; another output, other bytes.
    let again = send(&client, get(video_url)).await.unwrap();
    assert_eq!(again.body, video.body);
    let poster = send(&client, get(done["poster"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(poster.headers["content-type"], "image/png");
    assert_eq!(&poster.body[..8], b"\x89PNG\r\n\x1a\n");
    assert_ne!(poster.body[64..], video.body[64..]);
    let head = send(&client, Request::head(video_url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-length"], SIZE.to_string().as_str());
    assert!(head.body.is_empty());

    // Faults apply to the CDN like any route.
    let unavailable = Fault::Status {
        status: 503,
        retry_after: None,
        body: None,
    };
    mock.inject("/cdn/*", unavailable, 1);
    let failed = send(&client, get(video_url)).await.unwrap();
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        send(&client, get(video_url)).await.unwrap().status,
        StatusCode::OK
    );

    for missing in [
        format!("{}/cdn/video/nope.mp4", mock.url()),
        format!("{}/cdn/video/{id}.png", mock.url()),
        format!("{}/cdn/audio/{id}.mp3", mock.url()),
    ] {
        assert_eq!(
            send(&client, get(&missing)).await.unwrap().status,
            StatusCode::NOT_FOUND,
            "{missing}"
        );
    }

    // Expired, as a signed CDN URL does; reading the task again gives a fresh URL.
    tokio::time::sleep(lifetime).await;
    let expired = send(&client, get(video_url)).await.unwrap();
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&expired.body).contains("AccessDenied"));
    let feed = post_json(
        &client,
        &format!("{}/runway/feed", mock.url()),
        &json!({"task_id": id}),
    )
    .await
    .unwrap()
    .json();
    let fresh = feed["data"]["video_url"].as_str().unwrap();
    assert_ne!(fresh, video_url);
    assert_eq!(
        send(&client, get(fresh)).await.unwrap().body,
        video.body,
        "the same bytes"
    );
}
