//! The output archive in the relay, end to end over loopback: the stand-in (whose CDN
//! serves real bytes, expiring), the proxy with a `file://` archive, and a real
//! subscriber that gets the succeeded task's webhook pointing at the copies.

#![cfg(feature = "archive")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(15);
const OUTPUT_BYTES: u64 = 300 * 1024;

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Setup {
    mock: MockUpstream,
    proxy: RunningProxy,
    subscriber: Subscriber,
    outputs: tempfile::TempDir,
}

async fn setup(mock: MockConfig, extra: &[(&'static str, &str)]) -> Setup {
    let mock = start_mock(mock.step(Duration::from_millis(30)).output_bytes(OUTPUT_BYTES)).await;
    let outputs = tempfile::tempdir().unwrap();
    let mut flags = Overrides::from([
        ("webhook_secret", SECRET.to_owned()),
        ("callback.allow_private", "true".to_owned()),
        ("delivery.schedule", "0s,100ms,200ms".to_owned()),
        (
            "archive.url",
            format!("file://{}/outputs", outputs.path().display()),
        ),
        // The stand-in's CDN is on loopback: allowed only because it is listed exactly.
        ("archive.hosts", "127.0.0.1".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    Setup {
        mock,
        proxy,
        subscriber: Subscriber::start().await,
        outputs,
    }
}

impl Setup {
    async fn submit(&self) {
        let reply = post_json(
            &client(),
            &self.proxy.url("/runway/pro/generate"),
            &json!({"prompt": "a cat", "callback_url": self.subscriber.url("/hook"), "model": "gen4"}),
        )
        .await
        .unwrap();
        assert_eq!(reply.json()["code"], 200, "{:?}", reply.body);
    }

    /// The webhooks the subscriber has, once it has `n`, signed and parsed.
    async fn webhooks(&self, n: usize) -> Vec<Value> {
        self.subscriber
            .wait_for(n, WAIT)
            .await
            .iter()
            .map(|(headers, body)| {
                assert!(signed_by(SECRET, headers, body), "every webhook is signed");
                serde_json::from_slice(body).unwrap()
            })
            .collect()
    }

    /// Every file the archive holds.
    fn stored(&self) -> Vec<std::path::PathBuf> {
        files_under(&self.outputs.path().join("outputs"))
    }
}

async fn get(url: &str) -> Reply {
    send(&client(), Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_succeeded_webhook_points_at_copies_that_outlive_the_source() {
    let run = setup(
        MockConfig::default().outputs_expire_after(Duration::from_secs(2)),
        &[],
    )
    .await;
    run.submit().await;
    let webhooks = run.webhooks(2).await;
    assert_eq!(webhooks[0]["status"], "1");
    let done = &webhooks[1];
    assert_eq!(done["status"], "3");
    assert_eq!(done["runway_proxy_archive_status"], "archived", "{done}");
    let entries = done["runway_proxy_archive"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "video, poster and last frame: {done}");
    let served = format!("http://{}/-/outputs/", run.proxy.webhook_addr);
    let mut sources = Vec::new();
    for entry in entries {
        let field = entry["field"].as_str().unwrap();
        let link = entry["url"].as_str().unwrap();
        assert_eq!(done[field], link, "{field} points at its copy");
        assert!(link.starts_with(&served), "{link}");
        let original = entry["original"].as_str().unwrap();
        assert!(original.contains("/cdn/"), "{original}");
        let source = get(original).await;
        assert_eq!(source.status, StatusCode::OK);
        assert_eq!(entry["sha256"], sha256_hex(&source.body));
        assert_eq!(entry["bytes"], source.body.len() as u64);
        sources.push((link.to_owned(), original.to_owned(), source.body));
    }
    assert_eq!(run.stored().len(), 3, "one object per output: {:?}", run.stored());

    // The stand-in's URLs expire; the copies do not.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for (link, original, bytes) in &sources {
        assert_eq!(
            get(original).await.status,
            StatusCode::FORBIDDEN,
            "the source expired"
        );
        let copy = get(link).await;
        assert_eq!(copy.status, StatusCode::OK);
        assert_eq!(
            sha256_hex(&copy.body),
            sha256_hex(bytes),
            "the link serves the source's bytes"
        );
    }
    let (video, _, bytes) = &sources[0];
    let range = send(
        &client(),
        Request::get(video)
            .header("range", "bytes=100-199")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.body, bytes.slice(100..200));

    // The operator sees the task's archive, and gets links minted now.
    let task_id = done["task_id"].as_str().unwrap();
    let page = get(&run.proxy.url(&format!("/-/tasks/{task_id}"))).await.json();
    assert_eq!(page["task"]["task_id"], task_id);
    assert_eq!(page["archive"]["state"], "archived", "{page}");
    assert_eq!(page["archive"]["holding"], false);
    let listed = page["archive"]["outputs"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for (entry, (_, _, bytes)) in listed.iter().zip(&sources) {
        let fresh = get(entry["url"].as_str().unwrap()).await;
        assert_eq!(fresh.status, StatusCode::OK);
        assert_eq!(sha256_hex(&fresh.body), sha256_hex(bytes));
        assert!(entry["key"].as_str().unwrap().contains(task_id), "{entry}");
    }
    assert_eq!(
        get(&run.proxy.url("/-/tasks/no-such-task")).await.status,
        StatusCode::NOT_FOUND
    );

    let metrics = metrics_text(&run.proxy).await;
    assert!(
        metrics.contains("runway_proxy_archive_objects_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("runway_proxy_archive_bytes_total {}", 3 * OUTPUT_BYTES)),
        "{metrics}"
    );
    drop(run.mock);
}

#[tokio::test]
async fn an_output_over_the_limit_keeps_the_original_urls_and_says_why() {
    let run = setup(MockConfig::default(), &[("archive.max_bytes", "64KiB")]).await;
    run.submit().await;
    let webhooks = run.webhooks(2).await;
    let done = &webhooks[1];
    assert_eq!(done["status"], "3");
    assert_eq!(done["runway_proxy_archive_status"], "failed", "{done}");
    let reason = done["runway_proxy_archive_reason"].as_str().unwrap();
    assert!(reason.contains("larger than 65536 bytes"), "{reason}");
    assert!(
        done["video_url"].as_str().unwrap().contains("/cdn/video/"),
        "{done}"
    );
    assert!(done.get("runway_proxy_archive").is_none());
    assert!(run.stored().is_empty(), "nothing half-copied: {:?}", run.stored());
    let metrics = metrics_text(&run.proxy).await;
    assert!(
        metrics.contains(r#"runway_proxy_archive_failures_total{reason="too_large"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn past_the_deadline_the_webhook_goes_out_and_the_copies_follow() {
    let run = setup(MockConfig::default(), &[("archive.deadline", "300ms")]).await;
    // Every output download takes 1.5 s: well past the deadline.
    run.mock
        .inject("/cdn/*", Fault::delay(Duration::from_millis(1500)), 3);
    run.submit().await;
    let webhooks = run.webhooks(3).await;
    let (on_time, late) = (&webhooks[1], &webhooks[2]);
    assert_eq!(on_time["status"], "3");
    assert_eq!(on_time["runway_proxy_archive_status"], "failed", "{on_time}");
    assert!(on_time["video_url"].as_str().unwrap().contains("/cdn/video/"));
    assert!(
        on_time["runway_proxy_archive_reason"]
            .as_str()
            .unwrap()
            .contains("archive.deadline")
    );
    assert_eq!(late["status"], "3", "the announcement is the same task's result");
    assert_eq!(late["runway_proxy_archive_status"], "archived", "{late}");
    assert!(late["video_url"].as_str().unwrap().contains("/-/outputs/"));
    let ids: Vec<String> = run
        .subscriber
        .received()
        .iter()
        .map(|(headers, _)| headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids[2], format!("{}_archived", ids[1]), "its own webhook id");
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(run.subscriber.received().len(), 3);
}

#[tokio::test]
async fn a_dead_letter_replayed_after_the_source_expired_carries_working_links() {
    let run = setup(
        MockConfig::default().outputs_expire_after(Duration::from_secs(1)),
        &[],
    )
    .await;
    run.subscriber.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    run.submit().await;
    let dead = async || {
        let listed = get(&run.proxy.url("/-/deliveries?state=dead")).await.json();
        listed["deliveries"].as_array().cloned().unwrap_or_default()
    };
    // (The running status, still retrying when the result came, is superseded by it.)
    eventually("the result is a dead letter", WAIT, async || {
        dead().await.iter().any(|letter| letter["status"] == "3")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    run.subscriber.set_status(StatusCode::OK);
    let before = run.subscriber.received().len();
    for letter in dead().await {
        let id = letter["id"].as_i64().unwrap();
        let replay = send(
            &client(),
            Request::post(run.proxy.url(&format!("/-/deliveries/{id}/replay")))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(replay.status.is_success(), "{replay:?}");
    }
    let received = run.subscriber.wait_for(before + 1, WAIT).await;
    let done = received[before..]
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap())
        .find(|webhook| webhook["status"] == "3")
        .expect("the result was replayed");
    assert_eq!(done["runway_proxy_archive_status"], "archived");
    for entry in done["runway_proxy_archive"].as_array().unwrap() {
        assert_eq!(
            get(entry["original"].as_str().unwrap()).await.status,
            StatusCode::FORBIDDEN
        );
        let copy = get(entry["url"].as_str().unwrap()).await;
        assert_eq!(copy.status, StatusCode::OK);
        assert_eq!(entry["sha256"], sha256_hex(&copy.body));
    }
}

#[tokio::test]
async fn an_expired_source_url_is_read_again_from_the_feed_and_copied() {
    // Signed URLs: each read of the task hands out new ones.
    let run = setup(
        MockConfig::default().outputs_expire_after(Duration::from_secs(60)),
        &[],
    )
    .await;
    // The CDN refuses the URLs the callback carries, as it does once they expire.
    let expired = Fault::Status {
        status: 403,
        retry_after: None,
        body: Some("<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>".into()),
    };
    run.mock.inject("/cdn/*", expired, 3);
    run.submit().await;
    let webhooks = run.webhooks(2).await;
    let done = &webhooks[1];
    assert_eq!(done["runway_proxy_archive_status"], "archived", "{done}");
    let feed_reads = run
        .mock
        .requests()
        .iter()
        .filter(|r| r.uri == "/runway/feed")
        .count();
    assert_eq!(feed_reads, 1, "one read of the task for the three outputs");
    let callback: Value = serde_json::from_slice(&run.mock.callbacks().last().unwrap().body).unwrap();
    for entry in done["runway_proxy_archive"].as_array().unwrap() {
        let field = entry["field"].as_str().unwrap();
        assert_ne!(entry["original"], callback[field], "copied from the fresh URL");
        let copy = get(entry["url"].as_str().unwrap()).await;
        assert_eq!(entry["sha256"], sha256_hex(&copy.body));
    }
    let metrics = metrics_text(&run.proxy).await;
    assert!(
        metrics.contains(r#"runway_proxy_archive_failures_total{reason="gone"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn turned_off_the_archive_lets_held_webhooks_go_as_they_came() {
    let mut run = setup(MockConfig::default(), &[("archive.deadline", "1h")]).await;
    run.mock
        .inject("/cdn/*", Fault::delay(Duration::from_secs(60)), 3);
    run.submit().await;
    eventually("the result held for its copies", WAIT, async || {
        let held = get(&run.proxy.url("/-/deliveries?state=archiving")).await.json();
        held["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    run.proxy.shutdown().await.unwrap();
    let relayed = run.subscriber.received().len();

    // The same data directory, the archive off.
    let flags = Overrides::from([
        ("webhook_secret", SECRET.to_owned()),
        ("callback.allow_private", "true".to_owned()),
        ("data_dir", run.proxy.data.path().display().to_string()),
    ]);
    let _again = start_proxy_with(None, &run.mock.url(), &flags).await;
    let received = run.subscriber.wait_for(relayed + 1, WAIT).await;
    let done: Value = serde_json::from_slice(&received[relayed].1).unwrap();
    assert_eq!(done["status"], "3");
    assert!(
        done["video_url"].as_str().unwrap().contains("/cdn/video/"),
        "{done}"
    );
}
