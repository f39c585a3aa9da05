//! The proxy driven by the clients users really run: the official Runway Python SDK
//! (`runwayml`, with its own retries) and the Standard Webhooks libraries for Python and
//! JavaScript verifying relayed webhooks. `scripts/test-deps` installs them from PyPI and
//! the npm registry into `target/test-deps` when missing.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const IMAGE_TO_VIDEO: &str = "/runwayml/v1/image_to_video";
const GENERATE: &str = "/runway/pro/generate";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with the clients installed (once per test binary).
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = std::process::Command::new(repo().join("scripts/test-deps"))
            .output()
            .expect("scripts/test-deps runs");
        assert!(
            output.status.success(),
            "installing the real clients failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    })
}

/// Run a client script, feeding `stdin`, and read the JSON line it prints.
async fn run(mut command: Command, stdin: Option<String>) -> Value {
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the client starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .await
        .unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the client finishes within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn sdk(proxy: &RunningProxy, scenario: &str) -> Value {
    let mut command = Command::new(python());
    command
        .arg(repo().join("tests/clients/runway_sdk.py"))
        .arg(scenario)
        .env("RUNWAYML_BASE_URL", proxy.url("/runwayml"));
    run(command, None).await
}

async fn setup(mock: MockConfig, extra: &[(&'static str, &str)]) -> (MockUpstream, RunningProxy) {
    let mock = start_mock(mock).await;
    let mut settings = vec![("retry.base_delay", "10ms"), ("retry.max_delay", "50ms")];
    settings.extend_from_slice(extra);
    let proxy = start_proxy(&mock.url(), &settings).await;
    (mock, proxy)
}

#[tokio::test]
async fn the_sdk_creates_a_task_and_waits_for_its_output_through_the_proxy() {
    let (mock, proxy) = setup(MockConfig::default().step(Duration::from_millis(150)), &[]).await;
    let outcome = sdk(&proxy, "create-and-wait").await;
    assert_eq!(outcome["status"], "SUCCEEDED", "{outcome}");
    assert!(
        outcome["output"][0]
            .as_str()
            .is_some_and(|url| url.ends_with(".mp4")),
        "{outcome}"
    );
    assert_eq!(mock.stats().accepted(IMAGE_TO_VIDEO), 1);
}

#[tokio::test]
async fn every_create_leaves_exactly_one_task_upstream_when_the_answer_is_lost() {
    // The upstream accepts, then the connection resets before the answer.
    let (mock, proxy) = setup(MockConfig::default(), &[]).await;
    mock.inject(IMAGE_TO_VIDEO, Fault::ResetAfterBody, 0);
    let outcome = sdk(&proxy, "create-once").await;
    assert_eq!(
        (outcome["status"].as_u64(), outcome["should_retry"].as_str()),
        (Some(504), Some("false")),
        "{outcome}"
    );
    assert_eq!(
        mock.stats().received(IMAGE_TO_VIDEO),
        1,
        "the SDK did not resubmit: {outcome}"
    );
    assert_eq!(mock.stats().accepted(IMAGE_TO_VIDEO), 1);

    // The upstream accepts, then answers after the proxy's request timeout.
    let (mock, proxy) = setup(MockConfig::default(), &[("request_timeout", "300ms")]).await;
    mock.inject(IMAGE_TO_VIDEO, Fault::AcceptThenDelay { ms: 1500 }, 0);
    let outcome = sdk(&proxy, "create-once").await;
    assert_eq!(outcome["status"], 504, "{outcome}");
    assert_eq!(
        mock.stats().received(IMAGE_TO_VIDEO),
        1,
        "the SDK did not resubmit: {outcome}"
    );
    assert_eq!(mock.stats().accepted(IMAGE_TO_VIDEO), 1);
}

#[tokio::test]
async fn a_run_of_503s_is_retried_by_the_proxy_alone() {
    let (mock, proxy) = setup(MockConfig::default(), &[("retry.max_attempts", "3")]).await;
    mock.inject(
        IMAGE_TO_VIDEO,
        Fault::Status {
            status: 503,
            retry_after: None,
            body: None,
        },
        0,
    );
    let outcome = sdk(&proxy, "create-once").await;
    assert_eq!(
        (outcome["status"].as_u64(), outcome["should_retry"].as_str()),
        (Some(503), Some("false")),
        "{outcome}"
    );
    assert_eq!(
        mock.stats().received(IMAGE_TO_VIDEO),
        3,
        "the proxy's 3 attempts, not multiplied by the SDK's retries"
    );
}

#[tokio::test]
async fn the_sdk_passes_an_idempotency_key_and_gets_the_first_task_back() {
    let (mock, proxy) = setup(MockConfig::default(), &[]).await;
    let outcome = sdk(&proxy, "idempotency-key").await;
    assert_eq!(outcome["first"]["result"], "created", "{outcome}");
    assert_eq!(outcome["again"]["id"], outcome["first"]["id"], "{outcome}");
    assert_eq!(
        mock.stats().accepted(IMAGE_TO_VIDEO),
        1,
        "one task for two creates"
    );
}

/// A spent budget is final for now: the proxy says so with `x-should-retry: false`, and
/// the SDK, which retries 429 on its own otherwise, raises at once.
#[tokio::test]
async fn a_spent_budget_is_not_retried_by_the_sdk() {
    let (mock, proxy) = setup(MockConfig::default(), &[("guard.daily_task_budget_per_key", "1")]).await;
    let outcome = sdk(&proxy, "create-twice").await;
    assert_eq!(outcome["first"]["result"], "created", "{outcome}");
    let again = &outcome["again"];
    assert_eq!(
        (again["status"].as_u64(), again["should_retry"].as_str()),
        (Some(429), Some("false")),
        "{outcome}"
    );
    assert!(
        again["message"]
            .as_str()
            .is_some_and(|m| m.contains("daily_task_budget_per_key")),
        "the SDK's error names the budget: {outcome}"
    );
    assert_eq!(
        mock.stats().received(IMAGE_TO_VIDEO),
        1,
        "the refused create never reached the upstream, retried or not"
    );
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("runway_proxy_guard_refusals_total{reason=\"daily_task_budget_per_key\"} 1"),
        "one refusal: the SDK did not ask again: {metrics}"
    );
}

#[tokio::test]
async fn relayed_webhooks_verify_with_both_standard_webhooks_libraries() {
    let (mock, proxy) = setup(
        MockConfig::default().step(Duration::from_millis(50)),
        &[("callback.allow_private", "true")],
    )
    .await;
    let subscriber = Subscriber::start().await;
    let submission = json!({"prompt": "a cat", "callback_url": subscriber.url("/hook")});
    let reply = post_json(&client(), &proxy.url(GENERATE), &submission)
        .await
        .unwrap();
    assert_eq!(reply.json()["code"], 200);
    let received = subscriber.wait_for(2, Duration::from_secs(10)).await;
    let mut webhooks: Vec<Value> = received
        .iter()
        .map(|(headers, body)| {
            let header = |name: &str| headers[name].to_str().unwrap().to_owned();
            json!({
                "headers": {
                    "webhook-id": header("webhook-id"),
                    "webhook-timestamp": header("webhook-timestamp"),
                    "webhook-signature": header("webhook-signature"),
                },
                "body": String::from_utf8(body.to_vec()).unwrap(),
            })
        })
        .collect();
    // One tampered copy, which both libraries must refuse.
    let mut tampered = webhooks[0].clone();
    tampered["body"] = Value::from(tampered["body"].as_str().unwrap().replace("\"3\"", "\"2\""));
    tampered["body"] = Value::from(format!("{} ", tampered["body"].as_str().unwrap()));
    webhooks.push(tampered);
    // The secret file exactly as the proxy wrote it (no trimming: the JS library refuses
    // a trailing newline).
    let secret = std::fs::read_to_string(proxy.data.path().join("webhook-secret")).unwrap();
    let input = json!({"secret": secret, "webhooks": webhooks}).to_string();

    let mut python_verify = Command::new(python());
    python_verify.arg(repo().join("tests/clients/verify_webhooks.py"));
    let mut node_verify = Command::new("node");
    node_verify
        .arg(repo().join("tests/clients/verify_webhooks.cjs"))
        .env("NODE_PATH", repo().join("target/test-deps/node/node_modules"));
    for (library, command) in [("python", python_verify), ("node", node_verify)] {
        let verdict = run(command, Some(input.clone())).await;
        assert_eq!(verdict["verified"], received.len(), "{library}: {verdict}");
        assert_eq!(
            verdict["errors"].as_array().map(Vec::len),
            Some(1),
            "{library} refused the tampered copy: {verdict}"
        );
    }
    assert!(mock.callbacks().iter().all(|c| c.accepted));
}

#[tokio::test]
async fn the_sdks_other_endpoints_answer_through_the_proxy_with_their_types() {
    let (mock, proxy) = setup(
        MockConfig::default().step(Duration::from_secs(5)),
        &[("guard.max_tasks_in_flight", "4")],
    )
    .await;
    let outcome = sdk(&proxy, "api-surface").await;
    for created in ["text_to_video", "text_to_image", "sound_effect", "cancelled"] {
        let id = outcome[created]
            .as_str()
            .unwrap_or_else(|| panic!("{created}: {outcome}"));
        assert_eq!(id.len(), 36, "{created}: a task id: {outcome}");
    }
    assert_eq!(outcome["cancelled_status"], "CANCELLED", "{outcome}");
    assert!(
        outcome["voice"].as_str().is_some_and(|id| !id.is_empty()),
        "{outcome}"
    );
    assert!(
        outcome["upload_uri"]
            .as_str()
            .is_some_and(|uri| uri.starts_with("runway://")),
        "{outcome}"
    );
    assert_eq!(outcome["credit_balance"], 10_000);
    assert_eq!(outcome["usage_results"], 0);
    // Four tasks were created; the voice, the upload and the organization are no task:
    // none of them is on the watch list, and the cancelled task has ended.
    let listed = send(
        &client(),
        http::Request::get(proxy.url("/-/tasks"))
            .body(Default::default())
            .unwrap(),
    )
    .await
    .unwrap()
    .json();
    let tasks = listed["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4, "{listed}");
    let cancelled = tasks
        .iter()
        .find(|t| t["task_id"] == outcome["cancelled"])
        .unwrap();
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["state"], "done");
    assert_eq!(mock.stats().accepted("/runwayml/v1/text_to_video"), 1);
}

#[tokio::test]
async fn the_node_sdk_reaches_the_same_endpoints_through_the_proxy() {
    let (_mock, proxy) = setup(MockConfig::default().step(Duration::from_secs(5)), &[]).await;
    // scripts/test-deps installs the Node packages too.
    python();
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/clients/runway_sdk.cjs"))
        .env("RUNWAYML_BASE_URL", proxy.url("/runwayml"))
        .env("NODE_PATH", repo().join("target/test-deps/node/node_modules"));
    let outcome = run(command, None).await;
    assert_eq!(
        outcome["text_to_video"].as_str().map(str::len),
        Some(36),
        "{outcome}"
    );
    assert!(
        outcome["voice"].as_str().is_some_and(|id| !id.is_empty()),
        "{outcome}"
    );
    assert_eq!(outcome["credit_balance"], 10_000);
    assert_eq!(outcome["cancelled_status"], "CANCELLED", "{outcome}");
}

#[tokio::test]
async fn every_method_of_the_python_sdk_answers_through_the_proxy() {
    let (_mock, proxy) = setup(MockConfig::default().step(Duration::from_secs(5)), &[]).await;
    let outcomes = sdk(&proxy, "every-method").await;
    let outcomes = outcomes.as_object().unwrap();
    let failed: Vec<(&String, &Value)> = outcomes.iter().filter(|(_, o)| o["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "{} of {} methods failed: {failed:#?}",
        failed.len(),
        outcomes.len()
    );
    assert_eq!(outcomes.len(), 58, "the SDK 5.24 methods this test calls");
}
