//! The output archive as `runway-proxy serve` runs it, in real processes: killed mid-copy
//! and restarted, archiving to S3 (SeaweedFS) with credentials from the environment, and
//! two replicas on PostgreSQL sharing the work.

#![cfg(all(feature = "archive", feature = "postgres"))]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::process::{Running, serve};
use common::services::{fresh_database, s3};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";
const WAIT: Duration = Duration::from_secs(30);

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `runway-proxy serve` with the archive on, in front of `upstream`, with `env` on top.
fn proxy(upstream: &str, archive: &str, env: &[(&str, String)]) -> Command {
    let mut command = serve();
    command
        .args(["--log-format", "json"])
        .env("RUNWAY_PROXY_LISTEN", "127.0.0.1:0")
        .env("RUNWAY_PROXY_THREADS", "1")
        .env("RUNWAY_PROXY_UPSTREAM", upstream)
        .env("RUNWAY_PROXY_WEBHOOK_SECRET", SECRET)
        .env("RUNWAY_PROXY_CALLBACK_TOKEN_KEYS", TOKEN_KEYS)
        .env("RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS", "true")
        .env("RUNWAY_PROXY_DELIVERY_SCHEDULE", "0s,200ms,500ms,1s")
        .env("RUNWAY_PROXY_ARCHIVE_URL", archive)
        .env("RUNWAY_PROXY_ARCHIVE_HOSTS", "127.0.0.1");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// A started proxy and its proxy listener's address.
fn start(command: &mut Command) -> (Running, String) {
    let mut process = Running::spawn(command);
    let serving = process.wait_for_log("runway-proxy serving");
    let listen = serving["listen"].as_str().unwrap().to_owned();
    (process, listen)
}

async fn submit(listen: &str, subscriber: &str) {
    let reply = post_json(
        &client(),
        &format!("http://{listen}/runway/pro/generate"),
        &json!({"prompt": "a cat", "callback_url": subscriber, "model": "gen4"}),
    )
    .await
    .unwrap();
    assert_eq!(reply.json()["code"], 200, "{:?}", reply.body);
}

async fn get(url: &str) -> Reply {
    send(&client(), Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap()
}

/// The succeeded tasks' webhooks the subscriber got, by task id, each checked signed.
fn results(subscriber: &Subscriber) -> HashMap<String, Vec<Value>> {
    let mut by_task: HashMap<String, Vec<Value>> = HashMap::new();
    for (headers, body) in subscriber.received() {
        assert!(signed_by(SECRET, &headers, &body));
        let webhook: Value = serde_json::from_slice(&body).unwrap();
        if webhook["status"] == "3" {
            let task = webhook["task_id"].as_str().unwrap().to_owned();
            by_task.entry(task).or_default().push(webhook);
        }
    }
    by_task
}

fn cdn_downloads(mock: &MockUpstream) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.uri.starts_with("/cdn/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_copy_the_restart_copies_once_and_delivers_once() {
    let mock = start_mock(
        MockConfig::default()
            .step(Duration::from_millis(30))
            .output_bytes(200_000),
    )
    .await;
    // The first downloads hang long enough for the proxy to be killed in them.
    mock.inject("/cdn/*", Fault::delay(Duration::from_secs(30)), 3);
    let subscriber = Subscriber::start().await;
    let outputs = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", outputs.path().display());
    let data = common::process::data_dir();
    let env = [("RUNWAY_PROXY_DATA_DIR", data.display().to_string())];
    let (first, listen) = tokio::task::block_in_place(|| start(&mut proxy(&mock.url(), &archive, &env)));
    submit(&listen, &subscriber.url("/hook")).await;
    eventually("the copies started", WAIT, async || cdn_downloads(&mock) == 3).await;
    first.signal("KILL");
    let _ = tokio::task::block_in_place(|| first.finish());
    assert!(
        results(&subscriber).is_empty(),
        "nothing relayed before the copies"
    );

    let (second, _) = tokio::task::block_in_place(|| start(&mut proxy(&mock.url(), &archive, &env)));
    eventually("the result relayed", WAIT, async || {
        !results(&subscriber).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let results = results(&subscriber);
    let webhooks = results.values().next().unwrap();
    assert_eq!(webhooks.len(), 1, "delivered once: {webhooks:#?}");
    assert_eq!(webhooks[0]["runway_proxy_archive_status"], "archived");
    let stored = files_under(outputs.path());
    assert_eq!(stored.len(), 3, "exactly one object per output: {stored:?}");
    for entry in webhooks[0]["runway_proxy_archive"].as_array().unwrap() {
        let copy = get(entry["url"].as_str().unwrap()).await;
        assert_eq!(copy.status, StatusCode::OK);
        assert_eq!(entry["sha256"], sha256_hex(&copy.body));
    }
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_s3_the_webhook_carries_presigned_links() {
    let mock = start_mock(
        MockConfig::default()
            .step(Duration::from_millis(30))
            .output_bytes(100_000),
    )
    .await;
    let subscriber = Subscriber::start().await;
    let s3 = s3();
    let prefix = format!("relay-{}-{}", std::process::id(), rand::random::<u32>());
    let env = [
        ("AWS_ENDPOINT_URL", s3.endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", s3.access_key.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_owned()),
        ("RUNWAY_PROXY_ARCHIVE_LINK_LIFETIME", "1h".to_owned()),
    ];
    let archive = format!("s3://{}/{prefix}", s3.bucket);
    let (running, listen) = tokio::task::block_in_place(|| start(&mut proxy(&mock.url(), &archive, &env)));
    submit(&listen, &subscriber.url("/hook")).await;
    eventually("the result relayed", WAIT, async || {
        !results(&subscriber).is_empty()
    })
    .await;
    let results = results(&subscriber);
    let done = &results.values().next().unwrap()[0];
    assert_eq!(done["runway_proxy_archive_status"], "archived", "{done}");
    for entry in done["runway_proxy_archive"].as_array().unwrap() {
        let link = entry["url"].as_str().unwrap();
        assert!(link.starts_with(s3.endpoint), "{link}");
        assert!(
            link.contains(&prefix) && link.contains("X-Amz-Signature="),
            "pre-signed: {link}"
        );
        let copy = get(link).await;
        assert_eq!(copy.status, StatusCode::OK, "{link}");
        assert_eq!(entry["sha256"], sha256_hex(&copy.body));
        assert_eq!(entry["bytes"], 100_000);
        let unsigned = link.split('?').next().unwrap();
        assert_ne!(
            get(unsigned).await.status,
            StatusCode::OK,
            "the bucket is not public"
        );
    }
    running.signal("TERM");
    let (_, lines) = tokio::task::block_in_place(|| running.finish());
    assert!(
        !lines
            .iter()
            .any(|line| line.contains(s3.secret_key) || line.contains("X-Amz-Signature")),
        "neither the credentials nor a signed link are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_copy_each_output_once() {
    const TASKS: usize = 50;
    let mock = start_mock(
        MockConfig::default()
            .step(Duration::from_millis(40))
            .output_bytes(20_000),
    )
    .await;
    let subscriber = Subscriber::start().await;
    let database = fresh_database().await;
    let outputs = tempfile::tempdir().unwrap();
    let archive = format!("file://{}", outputs.path().display());
    let env = [
        ("RUNWAY_PROXY_DATABASE_URL", database.clone()),
        ("RUNWAY_PROXY_ARCHIVE_WORKERS", "8".to_owned()),
    ];
    let (a, listen_a) = tokio::task::block_in_place(|| start(&mut proxy(&mock.url(), &archive, &env)));
    let (b, listen_b) = tokio::task::block_in_place(|| start(&mut proxy(&mock.url(), &archive, &env)));
    let hook = subscriber.url("/hook");
    futures_util::future::join_all((0..TASKS).map(|n| {
        let listen = if n % 2 == 0 { &listen_a } else { &listen_b };
        submit(listen, &hook)
    }))
    .await;
    eventually("every result relayed", Duration::from_secs(60), async || {
        results(&subscriber).len() == TASKS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = results(&subscriber);
    for (task, webhooks) in &results {
        assert_eq!(webhooks.len(), 1, "{task} delivered once");
        assert_eq!(webhooks[0]["runway_proxy_archive_status"], "archived", "{task}");
    }
    assert_eq!(cdn_downloads(&mock), 3 * TASKS, "each output downloaded once");
    assert_eq!(
        files_under(outputs.path()).len(),
        3 * TASKS,
        "each output stored once"
    );
    drop((a, b));
}
