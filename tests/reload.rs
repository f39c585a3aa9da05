//! Reloading the configuration of a running proxy (`POST /-/reload`; SIGHUP is tested on
//! the binary in tests/cli.rs): each class of setting that changes live does, a request
//! waiting its turn survives, settings read at start are named and kept, and a
//! configuration that does not check out changes nothing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use serde_json::{Value, json};

const GENERATE: &str = "/runway/pro/generate";
const WAIT: Duration = Duration::from_secs(10);
const FIRST_KEY: &str = "1:first-token-key-of-at-least-32-bytes!!";
const SECOND_KEY: &str = "2:second-token-key-of-at-least-32-bytes!";

/// A config file the test rewrites, and the proxy reading it.
struct Setup {
    mock: MockUpstream,
    proxy: RunningProxy,
    subscriber: Subscriber,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(config: &str) -> Setup {
        Self::start_with(config, MockConfig::default().step(Duration::from_millis(50))).await
    }

    async fn start_with(config: &str, mock: MockConfig) -> Setup {
        let mock = start_mock(mock).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runway-proxy.toml");
        std::fs::write(&file, config).unwrap();
        // The subscriber is on loopback.
        let flags = Overrides::from([("callback.allow_private", "true".to_owned())]);
        let proxy = start_reloadable_proxy(&file, &mock.url(), &flags).await;
        Setup {
            mock,
            proxy,
            subscriber: Subscriber::start().await,
            file,
            _dir: dir,
        }
    }

    /// Write `config` and ask for a reload: the answer's status and body.
    async fn reload(&self, config: &str) -> (StatusCode, Value) {
        std::fs::write(&self.file, config).unwrap();
        let reply = send(
            &client(),
            Request::post(self.proxy.url("/-/reload"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
        (reply.status, reply.json())
    }

    /// A submission whose webhooks go to `callback` (default: the setup's subscriber).
    async fn submit(&self, callback: Option<&str>) -> Reply {
        let callback = callback.map_or_else(|| self.subscriber.url("/hook"), str::to_owned);
        let body = json!({"prompt": "a cat", "model": "gen4", "callback_url": callback});
        post_json(&client(), &self.proxy.url(GENERATE), &body)
            .await
            .unwrap()
    }

    /// A second submission, sent from a task of its own so that it can wait its turn
    /// while the test goes on.
    fn submit_in_background(&self) -> tokio::task::JoinHandle<Reply> {
        let url = self.proxy.url(GENERATE);
        let hook = self.subscriber.url("/hook");
        tokio::spawn(async move {
            let body = json!({"prompt": "a dog", "model": "gen4", "callback_url": hook});
            post_json(&client(), &url, &body).await.unwrap()
        })
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let text = metrics_text(&self.proxy).await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

#[tokio::test]
async fn a_request_waiting_its_turn_goes_on_under_the_new_rate_limit() {
    // One submission per 30 s: the second waits 30 s for its turn (max_wait is longer),
    // unless the reload lets it go at once.
    let slow = "[limit]\nsubmit_rate = \"2/min burst 1\"\nmax_wait = \"60s\"\n";
    let setup = Setup::start(slow).await;
    assert_eq!(setup.submit(None).await.json()["code"], 200);
    let waiting = setup.submit_in_background();
    eventually("the second submission waits its turn", WAIT, async || {
        setup.metric("runway_proxy_limit_waiting").await == Some(1.0)
    })
    .await;
    let (status, report) = setup
        .reload("[limit]\nsubmit_rate = \"100/s\"\nmax_wait = \"60s\"\n")
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["limit.submit_rate"]));
    assert_eq!(report["restart_needed"], json!([]));
    // Well before its turn under the old rate: the waiter took the new one.
    let reply = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting submission went on under the new rate")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    assert_eq!(reply.json()["code"], 200);
    assert_eq!(setup.mock.stats().received(GENERATE), 2);
    assert_eq!(
        setup
            .metric("runway_proxy_limit_refusals_total{reason=\"max_wait\"}")
            .await,
        Some(0.0)
    );
    assert_eq!(
        setup
            .metric("runway_proxy_config_reloads_total{result=\"applied\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn retry_settings_and_rules_change_live() {
    let setup = Setup::start("[retry]\nmax_attempts = 1\nbase_delay = \"10ms\"\n").await;
    setup.mock.inject(GENERATE, Fault::busy(), 2);
    let reply = setup.submit(None).await;
    assert_eq!(reply.json()["code"], 500, "one attempt: the busy answer stands");
    assert_eq!(setup.mock.stats().received(GENERATE), 1);

    let (status, report) = setup
        .reload("[retry]\nmax_attempts = 3\nbase_delay = \"10ms\"\n")
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["retry.max_attempts"]));
    let reply = setup.submit(None).await;
    assert_eq!(
        reply.json()["code"],
        200,
        "retried past the second busy: {:?}",
        reply.json()
    );
    assert_eq!(setup.mock.stats().received(GENERATE), 3);

    // A rule of the file's own: "busy" is not retried any more.
    let rules = "[retry]\nmax_attempts = 3\nbase_delay = \"10ms\"\n\
                 [[retry.rules]]\nname = \"busy-is-final\"\nmsg_contains = \"busy\"\naction = \"fail\"\n";
    let (status, report) = setup.reload(rules).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["retry.rules"]));
    setup.mock.inject(GENERATE, Fault::busy(), 1);
    let reply = setup.submit(None).await;
    assert_ne!(reply.json()["code"], 200);
    assert_eq!(setup.mock.stats().received(GENERATE), 4, "not retried");
}

#[tokio::test]
async fn the_callback_allow_list_and_token_keys_change_live() {
    let subscriber = Subscriber::start().await;
    let hook = subscriber.url("/hook");
    let config = |hosts: &str, keys: &str| {
        format!(
            "webhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
             [callback]\nallow_private = true\nallowed_hosts = [{hosts}]\ntoken_keys = \"{keys}\"\n"
        )
    };
    let setup = Setup::start(&config("\"127.0.0.1\"", FIRST_KEY)).await;
    assert_eq!(setup.submit(Some(&hook)).await.json()["code"], 200);
    subscriber.wait_for(2, WAIT).await;
    let first_hook = setup.mock.tasks()[0].callback_url.clone().expect("a hook URL");

    // Another host only: the same subscriber is refused before anything is sent.
    let (status, report) = setup.reload(&config("\"hooks.example.com\"", FIRST_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["callback.allowed_hosts"]));
    let refused = setup.submit(Some(&hook)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{:?}", refused.json());
    assert_eq!(setup.mock.stats().received(GENERATE), 1);

    // A second key: new tokens are minted with it, tokens of the first still verify.
    let (status, report) = setup
        .reload(&config("\"127.0.0.1\"", &format!("{FIRST_KEY},{SECOND_KEY}")))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["changed"],
        json!(["callback.allowed_hosts", "callback.token_keys"])
    );
    assert_eq!(setup.submit(Some(&hook)).await.json()["code"], 200);
    subscriber.wait_for(4, WAIT).await;
    let tasks = setup.mock.tasks();
    let second_hook = tasks
        .iter()
        .filter_map(|t| t.callback_url.clone())
        .find(|url| *url != first_hook)
        .expect("a second hook URL");
    let token = |url: &str| url.rsplit('/').next().unwrap().to_owned();
    assert_ne!(
        token(&first_hook)[..4],
        token(&second_hook)[..4],
        "minted with another key"
    );
    // A late status of the task each hook URL belongs to (a hook URL is good for its own
    // task only).
    let task_of = |url: &str| {
        tasks
            .iter()
            .find(|t| t.callback_url.as_deref() == Some(url))
            .map(|t| t.id.clone())
            .expect("the hook's task")
    };
    let late = |url: String| {
        let body = json!({"task_id": task_of(&url), "status": "1", "update_time": "late"}).to_string();
        async move {
            let request = Request::post(url)
                .header("content-type", "application/json")
                .body(Full::from(body))
                .unwrap();
            send(&client(), request).await.unwrap().status
        }
    };
    assert_eq!(
        late(first_hook.clone()).await,
        StatusCode::OK,
        "the first key still verifies"
    );

    // The first key retired: its tokens no longer open.
    let (status, _) = setup.reload(&config("\"127.0.0.1\"", SECOND_KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(late(first_hook).await, StatusCode::NOT_FOUND);
    assert_eq!(late(second_hook.clone()).await, StatusCode::OK);

    // Unset, the keys would be the data dir's (never made here): a reload keeps the ones
    // in force and says a restart is needed for that.
    let unset = "webhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
                 [callback]\nallow_private = true\nallowed_hosts = [\"127.0.0.1\"]\n";
    let (status, report) = setup.reload(unset).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["restart_needed"], json!(["callback.token_keys"]));
    assert_eq!(late(second_hook).await, StatusCode::OK);
}

#[tokio::test]
async fn the_admin_token_changes_live() {
    let setup = Setup::start("").await;
    let url = setup.proxy.url("/-/tasks");
    let get = |token: Option<&str>| {
        let mut request = Request::get(&url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::default()).unwrap();
        async move { send(&client(), request).await }
    };
    assert_eq!(
        get(None).await.unwrap().status,
        StatusCode::OK,
        "loopback, no token"
    );
    let token = "a-new-admin-token-of-some-length";
    let (status, report) = setup.reload(&format!("admin_token = \"{token}\"\n")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["admin_token"]));
    assert_eq!(get(None).await.unwrap().status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(Some(token)).await.unwrap().status, StatusCode::OK);
    // /-/reload itself needs it now.
    let reply = send(
        &client(),
        Request::post(setup.proxy.url("/-/reload"))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // The report names secrets by key only.
    assert!(!report.to_string().contains(token));
}

#[tokio::test]
async fn the_delivery_schedule_and_workers_change_live() {
    let config = |schedule: &str, workers: u32| {
        format!("[delivery]\nschedule = \"{schedule}\"\nworkers = {workers}\n")
    };
    // A task calls back twice (running, then done), a second apart, so each webhook's
    // attempts are over before the next one comes.
    let step = MockConfig::default().step(Duration::from_secs(1));
    // One attempt each: a failure is final.
    let setup = Setup::start_with(&config("0s", 1), step).await;
    setup.subscriber.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(setup.submit(None).await.json()["code"], 200);
    let dead = "runway_proxy_deliveries_total{result=\"dead\"}";
    let retried = "runway_proxy_deliveries_total{result=\"retried\"}";
    eventually(
        "both webhooks of the first task are dead letters",
        WAIT,
        async || setup.metric(dead).await == Some(2.0),
    )
    .await;
    assert_eq!(setup.subscriber.received().len(), 2);
    assert_eq!(setup.metric(retried).await, Some(0.0));

    // Three attempts each, by three workers.
    let (status, report) = setup.reload(&config("0s,100ms,100ms", 3)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["changed"],
        json!(["delivery.schedule", "delivery.workers"])
    );
    assert_eq!(setup.submit(None).await.json()["code"], 200);
    eventually(
        "both webhooks of the second task are tried three times",
        WAIT,
        async || setup.metric(dead).await == Some(4.0),
    )
    .await;
    assert_eq!(
        setup.subscriber.received().len(),
        2 + 6,
        "1 attempt each, then 3 each"
    );
    assert_eq!(setup.metric(retried).await, Some(4.0));
}

/// `delivery.max_in_flight_per_worker` bounds what one worker sends at once, and a
/// reload changes it.
#[tokio::test]
async fn deliveries_in_flight_per_worker_change_live() {
    let config =
        |in_flight: u32| format!("[delivery]\nworkers = 1\nmax_in_flight_per_worker = {in_flight}\n");
    let setup = Setup::start(&config(1)).await;
    // Slow answers, so that webhooks queue up behind the one being answered.
    setup.subscriber.set_delay(Duration::from_millis(150));
    let tasks = 4;
    for _ in 0..tasks {
        assert_eq!(setup.submit(None).await.json()["code"], 200);
    }
    // Each task calls back running, then done (a running webhook still waiting when
    // its task's done one comes is superseded): wait for every task's end.
    let ended = async |n: usize| {
        let finals = || {
            let received = setup.subscriber.received();
            received
                .iter()
                .filter(|(_, body)| serde_json::from_slice::<Value>(body).is_ok_and(|b| b["status"] == "3"))
                .count()
        };
        eventually("every task's final webhook arrives", WAIT, async || finals() >= n).await;
    };
    ended(tasks).await;
    assert_eq!(
        setup.subscriber.take_most_at_once(),
        1,
        "one worker, one at a time"
    );

    let (status, report) = setup.reload(&config(8)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["delivery.max_in_flight_per_worker"]));
    for _ in 0..tasks {
        assert_eq!(setup.submit(None).await.json()["code"], 200);
    }
    ended(2 * tasks).await;
    let most = setup.subscriber.take_most_at_once();
    assert!(
        (2..=8).contains(&most),
        "one worker now sends several at once: {most} at most"
    );
    assert_eq!(
        setup.subscriber.overlaps(),
        0,
        "and never one webhook twice at once"
    );
}

#[tokio::test]
async fn settings_read_at_start_are_named_and_kept_and_an_invalid_config_changes_nothing() {
    let setup = Setup::start("[limit]\nsubmit_rate = \"100/s\"\n").await;
    // Both a live and a start-only change: the first is applied, the second named.
    let (status, report) = setup
        .reload("request_timeout = \"5s\"\n[limit]\nsubmit_rate = \"50/s\"\n[idempotency]\nttl = \"1h\"\n")
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["limit.submit_rate"]));
    assert_eq!(
        report["restart_needed"],
        json!(["request_timeout", "idempotency.ttl"])
    );

    // Not valid: refused with the reason, nothing changes, and it is counted.
    let (status, refused) = setup
        .reload("[limit]\nsubmit_rate = \"1/min\"\n[retry]\nbase_delay = \"10s\"\nmax_delay = \"1s\"\n")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let msg = refused["msg"].as_str().unwrap();
    assert!(
        msg.contains("the one in force stays") && msg.contains("retry."),
        "{msg}"
    );
    assert_eq!(
        setup
            .metric("runway_proxy_config_reloads_total{result=\"refused\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        setup.metric("runway_proxy_config_last_reload_successful").await,
        Some(0.0)
    );
    // Still 50/s, not 1/min: three at once pass at once.
    for _ in 0..3 {
        assert_eq!(setup.submit(None).await.status, StatusCode::OK);
    }
    let (status, _) = setup.reload("not toml at all = = =\n").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        setup
            .metric("runway_proxy_config_reloads_total{result=\"refused\"}")
            .await,
        Some(2.0)
    );
    // A good one again.
    let (status, _) = setup.reload("[limit]\nsubmit_rate = \"100/s\"\n").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        setup.metric("runway_proxy_config_last_reload_successful").await,
        Some(1.0)
    );
    // Only POST.
    let get = send(
        &client(),
        Request::get(setup.proxy.url("/-/reload"))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_submission_waiting_for_a_task_slot_goes_on_when_the_limit_is_raised() {
    // Tasks that do not finish during the test: one in flight holds the only slot.
    let config = |most: u32| format!("[guard]\nmax_tasks_in_flight = {most}\n[limit]\nmax_wait = \"60s\"\n");
    let setup = Setup::start_with(&config(1), MockConfig::default().step(Duration::from_secs(600))).await;
    assert_eq!(setup.submit(None).await.json()["code"], 200);
    let waiting = setup.submit_in_background();
    eventually("the second submission waits for a slot", WAIT, async || {
        setup.metric("runway_proxy_guard_waiting").await == Some(1.0)
    })
    .await;
    let (status, report) = setup.reload(&config(2)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["guard.max_tasks_in_flight"]));
    // Its slot would otherwise come free only when the first task ends, in 10 minutes,
    // and it would be refused at max_wait (60 s).
    let reply = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting submission went on under the new limit")
        .unwrap();
    assert_eq!(reply.json()["code"], 200, "{:?}", reply.json());
    assert_eq!(setup.mock.stats().received(GENERATE), 2);
}

#[cfg(feature = "otel")]
#[tokio::test]
async fn the_trace_sampler_changes_live() {
    let collector = Subscriber::start().await;
    let config = |sampler: &str| {
        format!(
            "[otel]\nendpoint = \"{}\"\nsampler = \"{sampler}\"\n",
            collector.url("")
        )
    };
    let setup = Setup::start(&config("always_off")).await;
    let read = async || {
        let request = Request::get(setup.proxy.url("/v1/models"))
            .header("authorization", "Bearer sk-test")
            .body(Full::default())
            .unwrap();
        send(&client(), request).await.unwrap();
        let sent = setup.mock.requests();
        let traceparent = sent.last().unwrap().headers["traceparent"].to_str().unwrap();
        runway_proxy::trace::SpanContext::from_traceparent(traceparent).unwrap()
    };
    assert!(
        !read().await.sampled,
        "always_off: left out, and said so upstream"
    );

    let (status, report) = setup.reload(&config("always_on")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["otel.sampler"]));
    assert_eq!(report["restart_needed"], json!([]));
    assert!(read().await.sampled, "always_on from the reload on");
    // The request span and its attempt: only the second request's.
    eventually("the sampled request's spans are exported", WAIT, async || {
        setup.metric("runway_proxy_trace_spans_exported_total").await == Some(2.0)
    })
    .await;
}
