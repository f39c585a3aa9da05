//! Per-subscriber delivery as `runway-proxy serve` runs it, in real processes: a paused
//! subscriber stays paused through a SIGKILL and loses nothing, and three replicas on one
//! PostgreSQL database keep one per-subscriber cap between them.

#![cfg(feature = "cli")]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::process::{Running, serve};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::callback::Keyring;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";
const WAIT: Duration = Duration::from_secs(30);

/// `runway-proxy serve` relaying webhooks, with `env` on top.
fn proxy(env: &[(&str, String)]) -> Command {
    let mut command = serve();
    command
        .args(["--log-format", "json"])
        .env("RUNWAY_PROXY_LISTEN", "127.0.0.1:0")
        .env("RUNWAY_PROXY_THREADS", "1")
        .env("RUNWAY_PROXY_UPSTREAM", "http://127.0.0.1:9")
        .env("RUNWAY_PROXY_WEBHOOK_SECRET", SECRET)
        .env("RUNWAY_PROXY_CALLBACK_TOKEN_KEYS", TOKEN_KEYS)
        .env("RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS", "true");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// A started proxy: the process, its proxy listener and its webhook listener.
fn start(command: &mut Command) -> (Running, String, String) {
    let mut process = Running::spawn(command);
    let serving = tokio::task::block_in_place(|| process.wait_for_log("runway-proxy serving"));
    let field = |name: &str| serving[name].as_str().unwrap().to_owned();
    (process, field("listen"), field("webhook_listen"))
}

async fn post_webhook(webhook: &str, target: &str, task: &str) {
    let token = Keyring::parse(TOKEN_KEYS).unwrap().mint(target);
    let body = json!({"task_id": task, "status": "3", "update_time": "1"});
    let request = Request::post(format!("http://{webhook}/hooks/runway/{token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

async fn admin(listen: &str, method: &str, path: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{listen}{path}"))
        .body(Full::default())
        .unwrap();
    send(&client(), request).await.unwrap()
}

async fn only_subscriber(listen: &str) -> Value {
    let listed = admin(listen, "GET", "/-/subscribers").await.json();
    listed["subscribers"][0].clone()
}

fn tasks_of(subscriber: &Subscriber, from: usize) -> Vec<String> {
    subscriber.received()[from..]
        .iter()
        .map(|(_, body)| {
            let body: Value = serde_json::from_slice(body).unwrap();
            body["task_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscriber_stays_paused_through_sigkill_and_loses_nothing() {
    let down = Subscriber::start().await;
    down.set_status(StatusCode::BAD_GATEWAY);
    let target = down.url("/hook");
    let data = common::process::data_dir();
    let env = [
        ("RUNWAY_PROXY_DATA_DIR", data.display().to_string()),
        ("RUNWAY_PROXY_DELIVERY_PAUSE_AFTER", "3".to_owned()),
        // No probe within the test: the pause is what is kept.
        ("RUNWAY_PROXY_DELIVERY_PROBE_INTERVAL", "1h".to_owned()),
        (
            "RUNWAY_PROXY_DELIVERY_SCHEDULE",
            "0s,100ms,100ms,100ms".to_owned(),
        ),
    ];
    let (first, listen, webhook) = start(&mut proxy(&env));
    for n in 0..10 {
        post_webhook(&webhook, &target, &format!("task-{n}")).await;
    }
    eventually("the subscriber is paused", WAIT, async || {
        only_subscriber(&listen).await["state"] == "paused"
    })
    .await;
    first.signal("KILL");
    let _ = tokio::task::block_in_place(|| first.finish());
    let answered = down.received().len();
    down.set_status(StatusCode::OK);

    let (second, listen, _) = start(&mut proxy(&env));
    let report = only_subscriber(&listen).await;
    assert_eq!(
        (&report["state"], &report["paused_reason"], &report["backlog"]),
        (&json!("paused"), &json!("failures"), &json!(10)),
        "{report}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(down.received().len(), answered, "still paused after the restart");
    let id = report["id"].as_str().unwrap();
    let resumed = admin(&listen, "POST", &format!("/-/subscribers/{id}/resume")).await;
    assert_eq!(resumed.status, StatusCode::OK);
    down.wait_for(answered + 10, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = tasks_of(&down, answered);
    assert_eq!(delivered.len(), 10, "each webhook once: {delivered:?}");
    assert_eq!(delivered.iter().collect::<HashSet<_>>().len(), 10);
    drop(second);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_postgres_keep_one_cap_per_subscriber() {
    let database = common::services::fresh_database().await;
    let slow = Subscriber::start().await;
    slow.set_delay(Duration::from_millis(300));
    let target = slow.url("/hook");
    let env = [
        ("RUNWAY_PROXY_DATABASE_URL", database.clone()),
        (
            "RUNWAY_PROXY_DELIVERY_MAX_IN_FLIGHT_PER_SUBSCRIBER",
            "3".to_owned(),
        ),
    ];
    let replicas: Vec<(Running, String, String)> = (0..3).map(|_| start(&mut proxy(&env))).collect();
    for n in 0..30 {
        let webhook = &replicas[n % 3].2;
        post_webhook(webhook, &target, &format!("task-{n}")).await;
    }
    slow.wait_for(30, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = tasks_of(&slow, 0);
    assert_eq!(delivered.len(), 30, "each webhook once: {delivered:?}");
    assert_eq!(delivered.iter().collect::<HashSet<_>>().len(), 30);
    let most = slow.take_most_at_once();
    assert!(
        (2..=3).contains(&most),
        "three replicas kept one cap of 3 between them: {most} at once"
    );
}
