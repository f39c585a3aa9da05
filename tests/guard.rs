//! The task guard, end to end over loopback: the stand-in runs each task like a Runway
//! account (a tier's concurrency limit, points by duration, refunds for failures), and
//! the proxy keeps submissions within the limits and budgets it is given, refusing
//! before anything is sent, with a ledger that agrees with the stand-in's own count.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use runway_proxy::tasks::key_hash;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";
const WAIT: Duration = Duration::from_secs(20);
const GENERATE: &str = "/runway/pro/generate";

fn flags(extra: &[(&'static str, &str)]) -> Overrides {
    let mut flags = Overrides::from([
        ("webhook_secret", SECRET.to_owned()),
        ("callback.token_keys", TOKEN_KEYS.to_owned()),
        ("callback.allow_private", "true".to_owned()),
        ("delivery.schedule", "0s,100ms,200ms,400ms".to_owned()),
        ("retry.base_delay", "10ms".to_owned()),
        ("watch.poll_interval", "100ms".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    flags
}

/// A reverse-format submission with `key`, its result to `subscriber`.
async fn submit(proxy: &RunningProxy, key: &str, subscriber: &Subscriber) -> Reply {
    let body =
        json!({"prompt": "a cat", "model": "gen4", "duration": 10, "callback_url": subscriber.url("/hook")});
    let request = Request::post(proxy.url(GENERATE))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(&client(), request).await.unwrap()
}

async fn get_json(proxy: &RunningProxy, path: &str) -> Value {
    let request = Request::get(proxy.url(path)).body(Full::default()).unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.json());
    reply.json()
}

/// Tasks of the ledger whose points are known, and how many of them were refunded.
async fn ledger(proxy: &RunningProxy) -> Vec<Value> {
    get_json(proxy, "/-/tasks").await["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Wait until `n` tasks of the ledger are done.
async fn wait_done(proxy: &RunningProxy, n: usize) {
    eventually(&format!("{n} tasks done"), WAIT, async || {
        ledger(proxy)
            .await
            .iter()
            .filter(|t| t["state"] == "done")
            .count()
            == n
    })
    .await;
}

/// The ledger's totals for `key` agree with what the stand-in charged it.
async fn usage_matches_the_stand_in(proxy: &RunningProxy, mock: &MockUpstream, key: &str, named: &str) {
    let charged = mock.stats().keys[&key_hash(format!("Bearer {key}").as_bytes())];
    let usage = get_json(proxy, &format!("/-/usage?key={named}")).await;
    let total = &usage["usage"]["total"];
    assert_eq!(
        (
            total["tasks"].as_u64(),
            total["points"].as_u64(),
            total["refunded"].as_u64()
        ),
        (Some(charged.tasks), Some(charged.points), Some(charged.refunded)),
        "the ledger and the stand-in agree: {usage}"
    );
}

/// With `--max-tasks-in-flight 5` before an account that runs 5 at once, 12 submissions
/// sent together wait their turn in the proxy: the upstream never has more than 5
/// unfinished, none is throttled, and every one completes.
#[tokio::test]
async fn twelve_submissions_with_five_in_flight_never_throttle_and_all_complete() {
    let mock = start_mock(
        MockConfig::default()
            .step(Duration::from_millis(150))
            .max_running(5),
    )
    .await;
    let proxy = start_proxy_with(
        None,
        &mock.url(),
        &flags(&[("guard.max_tasks_in_flight", "5"), ("limit.max_wait", "30s")]),
    )
    .await;
    let subscriber = Subscriber::start().await;
    let replies =
        futures_util::future::join_all((0..12).map(|_| submit(&proxy, "sk-team", &subscriber))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json());
        assert!(reply.json()["data"]["task_id"].is_string());
    }
    eventually("12 results relayed", WAIT, async || {
        subscriber
            .received()
            .iter()
            .filter(|(_, body)| serde_json::from_slice::<Value>(body).is_ok_and(|e| e["status"] == "3"))
            .count()
            == 12
    })
    .await;
    let stats = mock.stats();
    assert_eq!(stats.accepted(GENERATE), 12, "each submitted once");
    assert!(
        stats.peak_unfinished <= 5,
        "{} unfinished at once",
        stats.peak_unfinished
    );
    assert_eq!(stats.throttled, 0, "no task waited as THROTTLED");
    wait_done(&proxy, 12).await;
    let key = key_hash(b"Bearer sk-team");
    usage_matches_the_stand_in(&proxy, &mock, "sk-team", &key).await;
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains(&format!(
            "runway_proxy_ledger_tasks_total{{key=\"{key}\",status=\"succeeded\"}} 12"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "runway_proxy_ledger_points_total{{key=\"{key}\",kind=\"charged\"}} 3840"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("runway_proxy_guard_waiting 0"), "{metrics}");
}

/// A key over its daily points is refused before the upstream sees the call, with an
/// envelope naming the budget; a refund gives points back; another key is not held up;
/// and once the window has passed the key may submit again.
#[tokio::test]
async fn a_key_over_its_points_is_refused_until_a_refund_or_the_window_frees_some() {
    // Each step lasts long enough to submit while both tasks run (their points known
    // from the first callback, the refund not yet).
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(1))).await;
    let config = format!(
        r#"
        [guard]
        daily_point_budget_per_key = 640

        [[guard.keys]]
        label = "team-a"
        hash = "{}"

        [[guard.keys]]
        label = "frozen"
        hash = "{}"
        daily_point_budget = 0
        "#,
        key_hash(b"Bearer sk-team-a"),
        key_hash(b"Bearer sk-frozen"),
    );
    let proxy = start_proxy_with(Some(&config), &mock.url(), &flags(&[])).await;
    let subscriber = Subscriber::start().await;

    mock.inject(GENERATE, Fault::FailTask, 1);
    let failing = submit(&proxy, "sk-team-a", &subscriber).await;
    let failing = failing.json()["data"]["task_id"].as_str().unwrap().to_owned();
    assert_eq!(
        submit(&proxy, "sk-team-a", &subscriber).await.status,
        StatusCode::OK
    );
    eventually("both tasks charged", WAIT, async || {
        ledger(&proxy).await.iter().filter(|t| t["points"] == 320).count() == 2
    })
    .await;

    let seen = mock.stats().received(GENERATE);
    let refused = submit(&proxy, "sk-team-a", &subscriber).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.json()
    );
    assert_eq!(
        mock.stats().received(GENERATE),
        seen,
        "refused before anything is sent"
    );
    let envelope = refused.json();
    assert_eq!(envelope["code"], 429);
    assert!(
        envelope["msg"]
            .as_str()
            .unwrap()
            .contains("daily_point_budget_per_key"),
        "{envelope}"
    );
    assert_eq!(envelope["data"]["limit"], "daily_point_budget_per_key");
    assert_eq!(envelope["data"]["key"], "team-a");
    assert_eq!(
        (
            envelope["data"]["budget"].as_u64(),
            envelope["data"]["used"].as_u64()
        ),
        (Some(640), Some(640))
    );
    assert!(envelope["data"]["frees_at"].is_string());
    assert_eq!(refused.headers["x-should-retry"], "false");
    assert_eq!(
        refused.headers["x-runway-proxy-limit"],
        "daily_point_budget_per_key"
    );
    assert!(refused.headers.contains_key("retry-after"));

    // Another key has its own budget.
    assert_eq!(
        submit(&proxy, "sk-team-b", &subscriber).await.status,
        StatusCode::OK
    );
    // A key whose budget is 0 may never submit: 402, and waiting would not help.
    let frozen = submit(&proxy, "sk-frozen", &subscriber).await;
    assert_eq!(frozen.status, StatusCode::PAYMENT_REQUIRED, "{}", frozen.json());
    assert_eq!(frozen.headers["x-should-retry"], "false");
    assert!(frozen.json()["data"]["frees_at"].is_null());

    // The failed task is refunded: its points are given back.
    eventually("the failed task refunded", WAIT, async || {
        ledger(&proxy)
            .await
            .iter()
            .any(|t| t["task_id"] == failing.as_str() && t["refunded"] == 320)
    })
    .await;
    let allowed = submit(&proxy, "sk-team-a", &subscriber).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.json());
    wait_done(&proxy, 4).await;
    let spent = submit(&proxy, "sk-team-a", &subscriber).await;
    assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS, "spent again");

    usage_matches_the_stand_in(&proxy, &mock, "sk-team-a", "team-a").await;
    usage_matches_the_stand_in(&proxy, &mock, "sk-team-b", &key_hash(b"Bearer sk-team-b")).await;
    let usage = get_json(&proxy, "/-/usage").await;
    assert_eq!(usage["usage"]["keys"]["team-a"]["failed"], 1);
    assert_eq!(usage["usage"]["models"]["gen4"]["tasks"], 4);
    assert!(
        usage["usage"]["keys"].get("frozen").is_none(),
        "refused: not a task"
    );
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains("runway_proxy_guard_refusals_total{reason=\"daily_point_budget_per_key\"} 3"),
        "{metrics}"
    );
}

/// A spent budget frees up as the rolling window moves past what was spent.
#[tokio::test]
async fn a_spent_budget_frees_up_when_the_window_moves_on() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(50))).await;
    let proxy = start_proxy_with(
        None,
        &mock.url(),
        &flags(&[
            ("guard.daily_task_budget_per_key", "1"),
            ("guard.budget_window", "3s"),
        ]),
    )
    .await;
    let subscriber = Subscriber::start().await;
    assert_eq!(submit(&proxy, "sk-a", &subscriber).await.status, StatusCode::OK);
    let refused = submit(&proxy, "sk-a", &subscriber).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["data"]["limit"], "daily_task_budget_per_key");
    let retry_after: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry_after), "Retry-After {retry_after}");
    eventually("the window moved on", Duration::from_secs(10), async || {
        submit(&proxy, "sk-a", &subscriber).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(mock.stats().accepted(GENERATE), 2);
}

/// Bad queries of `/-/usage` get a clear 400; times may be RFC 3339, dates or seconds.
#[tokio::test]
async fn usage_queries_are_checked() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[])).await;
    for query in [
        "from=yesterday",
        "to=2026-13-01",
        "key=",
        "colour=blue",
        "from=2026-12-02&to=2026-12-01",
        "key=%zz",
    ] {
        let request = Request::get(proxy.url(&format!("/-/usage?{query}")))
            .body(Full::default())
            .unwrap();
        let reply = send(&client(), request).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(reply.json()["msg"].is_string(), "{query}");
    }
    let usage = get_json(&proxy, "/-/usage?from=2026-12-01&to=2026-12-02T12:00:00%2B01:00").await;
    assert_eq!(usage["from"], "2026-12-01T00:00:00Z");
    assert_eq!(usage["to"], "2026-12-02T11:00:00Z");
    assert_eq!(usage["usage"]["total"]["tasks"], 0);
    let usage = get_json(&proxy, "/-/usage?from=0&to=60").await;
    assert_eq!(usage["to"], "1970-01-01T00:01:00Z");
}

#[tokio::test]
async fn estimates_count_against_a_point_budget_before_the_bill() {
    // Nothing is billed while the test runs: the tasks take a minute.
    let mock = start_mock(MockConfig::default().step(Duration::from_secs(60))).await;
    // gen4_turbo is 5 points a second in the shipped price table: a 10 s video is
    // estimated at 50, and the budget has room for two.
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[("guard.daily_point_budget", "120")])).await;
    let body = json!({"model": "gen4_turbo", "promptImage": "https://cdn.example.com/cat.png",
                      "ratio": "1280:720", "duration": 10});
    let replies = futures_util::future::join_all((0..10).map(|_| {
        let request = Request::post(proxy.url("/runwayml/v1/image_to_video"))
            .header("authorization", "Bearer sk-test")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        async move { send(&client(), request).await.unwrap() }
    }))
    .await;
    let granted = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(
        granted,
        2,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for refused in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let msg = refused.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains("estimated at 50 points"), "{msg}");
    }
    assert_eq!(
        mock.stats().received("/runwayml/v1/image_to_video"),
        2,
        "the eight refused were never sent"
    );
    // A model the table has no price for counts at guard.unknown_model_points (100
    // here, more than the 20 left), and is named in a warning metric.
    let subscriber = Subscriber::start().await;
    let unpriced = submit(&proxy, "sk-test", &subscriber).await;
    assert!(
        unpriced.json()["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("estimated at 100 points"),
        "{}",
        unpriced.json()
    );
    let metrics = metrics_text(&proxy).await;
    assert!(
        metrics.contains(r#"runway_proxy_guard_refusals_total{reason="daily_point_budget"} 9"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"runway_proxy_guard_unpriced_total{model="gen4"} 1"#),
        "{metrics}"
    );
}

/// The share of each key's budget used is on `/-/metrics` (an alert watches for 90%):
/// read from the ledger at start (a key with a budget of its own shows 0) and again once
/// tasks end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keys_share_of_its_budget_is_a_gauge() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(50))).await;
    let hash = runway_proxy::tasks::key_hash(b"Bearer sk-batch");
    let file = format!(
        "[guard]\ndaily_task_budget_per_key = 10\n[[guard.keys]]\nlabel = \"batch\"\nhash = \"{hash}\"\ndaily_task_budget = 4\n"
    );
    let proxy = start_proxy_with(Some(&file), &mock.url(), &flags(&[])).await;
    let series =
        |key: &str| format!("runway_proxy_guard_budget_used_ratio{{key=\"{key}\",budget=\"tasks\"}}");
    eventually("the labelled key's share at 0", WAIT, async || {
        metrics_text(&proxy)
            .await
            .contains(&format!("{} 0\n", series("batch")))
    })
    .await;
    let subscriber = Subscriber::start().await;
    for key in ["sk-batch", "sk-batch", "sk-batch", "sk-other"] {
        assert_eq!(submit(&proxy, key, &subscriber).await.status, StatusCode::OK);
    }
    wait_done(&proxy, 4).await;
    let other = runway_proxy::tasks::key_hash(b"Bearer sk-other");
    eventually("3 of 4, and 1 of the default 10", WAIT, async || {
        let text = metrics_text(&proxy).await;
        text.contains(&format!("{} 0.75\n", series("batch")))
            && text.contains(&format!("{} 0.1\n", series(&other)))
    })
    .await;
}
