//! callback_url rewrite and the webhook relay, end to end over loopback: the stand-in,
//! the proxy (with its SQLite outbox in a temporary directory) and a real subscriber.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::callback::Keyring;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use runway_proxy::relay::WebhookSigner;
use serde_json::{Value, json};

const GENERATE: &str = "/runway/pro/generate";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";
const WAIT: Duration = Duration::from_secs(10);

fn relay_flags(extra: &[(&'static str, &str)]) -> Overrides {
    let mut flags = Overrides::from([
        ("webhook_secret", SECRET.to_owned()),
        ("callback.token_keys", TOKEN_KEYS.to_owned()),
        ("callback.allow_private", "true".to_owned()),
        ("delivery.schedule", "0s,100ms,200ms,400ms".to_owned()),
        ("retry.base_delay", "10ms".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    flags
}

async fn setup(extra: &[(&'static str, &str)]) -> (MockUpstream, RunningProxy, Subscriber) {
    setup_with_step(Duration::from_millis(50), extra).await
}

/// `step` apart, a task's two callbacks: long enough apart, the first one's retries are
/// settled before the terminal status arrives (which would supersede them).
async fn setup_with_step(
    step: Duration,
    extra: &[(&'static str, &str)],
) -> (MockUpstream, RunningProxy, Subscriber) {
    let mock = start_mock(MockConfig::default().step(step)).await;
    let proxy = start_proxy_with(None, &mock.url(), &relay_flags(extra)).await;
    (mock, proxy, Subscriber::start().await)
}

async fn submit(proxy: &RunningProxy, callback: &str) -> Reply {
    post_json(
        &client(),
        &proxy.url(GENERATE),
        &json!({"prompt": "a cat", "callback_url": callback, "model": "gen4"}),
    )
    .await
    .unwrap()
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Check the Standard Webhooks signature of a relayed request.
fn verified(headers: &http::HeaderMap, body: &[u8]) -> bool {
    signed_by(SECRET, headers, body)
}

async fn get_json(url: String) -> Value {
    send(&client(), Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap()
        .json()
}

/// Wait until `check` holds, polling, for up to `WAIT`.
async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    common::eventually(what, WAIT, check).await;
}

#[tokio::test]
async fn callbacks_reach_the_subscriber_signed_with_the_original_bytes() {
    let (mock, proxy, subscriber) = setup(&[]).await;
    let hook = subscriber.url("/my/webhook?tenant=42");
    let reply = submit(&proxy, &hook).await;
    assert_eq!(reply.json()["code"], 200);

    // The upstream saw the proxy's route, never the subscriber's URL.
    let upstream_body = String::from_utf8(mock.requests()[0].body.to_vec()).unwrap();
    let sent: Value = serde_json::from_str(&upstream_body).unwrap();
    let rewritten = sent["callback_url"].as_str().unwrap();
    assert!(
        rewritten.starts_with(&format!("http://{}/hooks/runway/", proxy.webhook_addr)),
        "{rewritten}"
    );
    assert!(
        !upstream_body.contains("/my/webhook") && !upstream_body.contains("tenant"),
        "{upstream_body}"
    );
    assert!(
        !upstream_body.contains(&subscriber.addr.port().to_string()),
        "{upstream_body}"
    );

    let received = subscriber.wait_for(2, WAIT).await;
    // The stand-in records a callback once the proxy has answered it.
    eventually("both callbacks recorded", async || mock.callbacks().len() == 2).await;
    let from_upstream = mock.callbacks();
    for ((headers, body), original) in received.iter().zip(&from_upstream) {
        assert_eq!(
            body, &original.body,
            "the relayed body is the upstream's, byte for byte"
        );
        assert!(verified(headers, body), "signature verifies");
        assert_eq!(header(headers, "content-type"), "application/json");
        assert!(header(headers, "webhook-id").starts_with("msg_"));
    }
    let statuses: Vec<Value> = received
        .iter()
        .map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap()["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("1"), json!("3")]);
    assert!(
        from_upstream.iter().all(|c| c.accepted),
        "the proxy acknowledged every callback"
    );
    // Recorded as delivered once the worker has the subscriber's answer; the
    // subscriber's own path and query are kept.
    eventually("two deliveries recorded", async || {
        get_json(proxy.url("/-/deliveries?state=delivered")).await["deliveries"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    // The admin listing hides the subscriber's query (secrets live there)...
    let delivered = get_json(proxy.url("/-/deliveries?state=delivered")).await;
    let shown = hook.split_once('?').unwrap().0.to_owned() + "?";
    assert_eq!(delivered["deliveries"][0]["target_url"], shown);
    // ...and shows it whole only to a holder of the admin token, which is not set here.
    let reveal = send(
        &client(),
        Request::get(proxy.url("/-/deliveries?state=delivered&reveal=1"))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reveal.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unsafe_callback_urls_are_refused_before_any_upstream_call() {
    let mock = start_mock(MockConfig::default()).await;
    let mut flags = relay_flags(&[]);
    flags.remove("callback.allow_private");
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    for (url, reason) in [
        ("http://127.0.0.1:9000/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://10.1.2.3/hook", "private"),
        ("http://[::ffff:192.168.0.1]/hook", "IPv4-mapped"),
        ("http://localhost/hook", "loopback name"),
        ("ftp://hooks.example.com/", "only http and https"),
        ("https://user:pw@hooks.example.com/", "credentials"),
    ] {
        let reply = submit(&proxy, url).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{url}");
        let msg = reply.json()["msg"].as_str().unwrap().to_owned();
        assert!(
            msg.starts_with("callback_url refused: ") && msg.contains(reason),
            "{url}: {msg}"
        );
    }
    assert_eq!(mock.stats().received(GENERATE), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn bodies_that_cannot_be_rewritten_never_reach_the_upstream() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = start_proxy_with(
        None,
        &mock.url(),
        &relay_flags(&[("callback.body_limit", "4KiB")]),
    )
    .await;
    let client = client();
    let post = |body: Vec<u8>| {
        Request::post(proxy.url(GENERATE))
            .header("authorization", "Bearer sk-test")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    for (body, status, msg) in [
        (b"[1,2]".to_vec(), StatusCode::BAD_REQUEST, "not a JSON object"),
        (
            b"{\"prompt\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "not a JSON object",
        ),
        (b"\xff\xfe".to_vec(), StatusCode::BAD_REQUEST, "not valid UTF-8"),
        // Invalid UTF-8 inside a string the rewrite would otherwise skip over.
        (
            b"{\"callback_url\":\"http://a.example/\",\"prompt\":\"\xc3\x28\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "not valid UTF-8",
        ),
        // A second spelling a case-insensitive decoder (Go's encoding/json) would use.
        (
            br#"{"callback_url":"http://a.example/","CALLBACK_URL":"http://169.254.169.254/latest"}"#
                .to_vec(),
            StatusCode::BAD_REQUEST,
            "CALLBACK_URL",
        ),
        (
            br#"{"Callback_Url":"http://169.254.169.254/latest"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "case-insensitive",
        ),
        (
            br#"{"callback_url": 7}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "must be a string",
        ),
        (
            br#"{"callback_url":"http://a.example/","callback_url":"http://b.example/"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "more than once",
        ),
        (
            format!("{{\"prompt\":\"{}\"}}", "x".repeat(5000)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 4096 bytes",
        ),
    ] {
        let reply = send(&client, post(body)).await.unwrap();
        assert_eq!(reply.status, status);
        let envelope = reply.json();
        assert_eq!(envelope["code"], status.as_u16());
        assert!(envelope["msg"].as_str().unwrap().contains(msg), "{envelope}");
    }
    assert_eq!(mock.stats().received(GENERATE), 0);

    // Without callback_url: passed on byte for byte (CometAPI answers callback_url_empty).
    let body = b"{ \"prompt\" : \"caf\\u00e9\" ,\"seconds\":5.0 }".to_vec();
    let reply = send(&client, post(body.clone())).await.unwrap();
    assert_eq!(reply.json()["msg"], "callback_url_empty");
    assert_eq!(mock.requests()[0].body, body);
}

#[tokio::test]
async fn forged_altered_and_foreign_tokens_are_refused_and_nothing_is_stored() {
    let (_mock, proxy, _subscriber) = setup(&[]).await;
    let client = client();
    let ours = Keyring::parse(TOKEN_KEYS)
        .unwrap()
        .mint("http://127.0.0.1:1/hook");
    let mut altered = ours.clone().into_bytes();
    let last = altered.len() - 3;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let foreign = Keyring::parse("1:another-secret-of-at-least-32-bytes")
        .unwrap()
        .mint("http://127.0.0.1:1/hook");
    // Genuine, but not a callback token: what an output link carries (an object's key).
    let not_a_route = Keyring::parse(TOKEN_KEYS)
        .unwrap()
        .mint("archive:2026/12/06/t/0-0123456789abcdef.mp4");
    let body = br#"{"task_id":"t","status":"3","update_time":"1"}"#;
    for token in [
        "forged",
        &String::from_utf8(altered).unwrap(),
        &foreign,
        "",
        &not_a_route,
    ] {
        let request = Request::post(format!("http://{}/hooks/runway/{token}", proxy.webhook_addr))
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let reply = send(&client, request).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "token {token:?}");
    }
    for state in ["pending", "delivered", "dead", "superseded"] {
        let page = get_json(proxy.url(&format!("/-/deliveries?state={state}"))).await;
        assert_eq!(page["deliveries"], json!([]), "{state}");
    }
    // The genuine token works, and the webhook listener answers nothing else.
    let request = Request::post(format!("http://{}/hooks/runway/{ours}", proxy.webhook_addr))
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    assert_eq!(send(&client, request).await.unwrap().status, StatusCode::OK);
    let request = Request::get(format!("http://{}/-/deliveries", proxy.webhook_addr))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client, request).await.unwrap().status,
        StatusCode::NOT_FOUND,
        "admin paths stay private"
    );
}

#[tokio::test]
async fn webhook_bodies_are_bounded_and_odd_shapes_still_relayed() {
    let (_mock, proxy, subscriber) = setup(&[("callback.webhook_body_limit", "1KiB")]).await;
    let client = client();
    let token = Keyring::parse(TOKEN_KEYS).unwrap().mint(&subscriber.url("/odd"));
    let url = format!("http://{}/hooks/runway/{token}", proxy.webhook_addr);
    let big = Request::post(&url)
        .body(Full::new(Bytes::from(vec![b' '; 2048])))
        .unwrap();
    assert_eq!(
        send(&client, big).await.unwrap().status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let odd = Bytes::from_static(b"{\"event\":\"something new\",\"n\":[1,2]}");
    let request = Request::post(&url).body(Full::new(odd.clone())).unwrap();
    assert_eq!(send(&client, request).await.unwrap().status, StatusCode::OK);
    let received = subscriber.wait_for(1, WAIT).await;
    assert_eq!(received[0].1, odd);
    assert!(verified(&received[0].0, &received[0].1));
}

#[tokio::test]
async fn a_two_mib_webhook_is_refused_by_default_and_stored_nowhere() {
    // Submissions may be 16 MiB (data URIs); webhooks have a limit of their own, 1 MiB.
    let (_mock, proxy, subscriber) = setup(&[]).await;
    let token = Keyring::parse(TOKEN_KEYS).unwrap().mint(&subscriber.url("/hook"));
    let url = format!("http://{}/hooks/runway/{token}", proxy.webhook_addr);
    let mut body = br#"{"task_id":"t-big","status":"3","pad":""#.to_vec();
    body.resize(2 * 1024 * 1024, b'x');
    body.extend_from_slice(br#""}"#);
    let reply = send(
        &client(),
        Request::post(&url).body(Full::new(Bytes::from(body))).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        String::from_utf8_lossy(&reply.body).contains("1048576 bytes"),
        "{:?}",
        reply.body
    );
    for state in ["pending", "in_flight", "delivered", "dead"] {
        let listed = get_json(proxy.url(&format!("/-/deliveries?state={state}"))).await;
        assert_eq!(listed["deliveries"], json!([]), "nothing stored ({state})");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(subscriber.received().is_empty());
}

#[tokio::test]
async fn duplicate_callbacks_are_delivered_once() {
    let (mock, proxy, subscriber) = setup(&[]).await;
    mock.inject(GENERATE, Fault::DuplicateCallbacks, 1);
    submit(&proxy, &subscriber.url("/hook")).await;
    eventually("four callbacks from the upstream", async || {
        mock.callbacks().len() == 4
    })
    .await;
    let received = subscriber.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.received().len(), 2, "each status once: {received:?}");
    let text = metrics_text(&proxy).await;
    assert!(text.contains("runway_proxy_webhooks_duplicate_total 2"), "{text}");
}

#[tokio::test]
async fn an_old_status_after_the_terminal_one_is_not_delivered() {
    let (mock, proxy, subscriber) = setup(&[]).await;
    mock.inject(GENERATE, Fault::OutOfOrderCallbacks, 1);
    submit(&proxy, &subscriber.url("/hook")).await;
    eventually("both callbacks from the upstream", async || {
        mock.callbacks().len() == 2
    })
    .await;
    let received = subscriber.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let statuses: Vec<Value> = subscriber
        .received()
        .iter()
        .map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap()["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("3")], "{received:?}");
    let superseded = get_json(proxy.url("/-/deliveries?state=superseded")).await;
    assert_eq!(superseded["deliveries"][0]["status"], "1");
}

#[tokio::test]
async fn a_failing_subscriber_that_recovers_gets_the_webhook() {
    let (_mock, proxy, subscriber) = setup_with_step(Duration::from_millis(400), &[]).await;
    subscriber.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    submit(&proxy, &subscriber.url("/hook")).await;
    subscriber.wait_for(1, WAIT).await;
    subscriber.set_status(StatusCode::OK);
    eventually("the final status delivered", async || {
        let delivered = get_json(proxy.url("/-/deliveries?state=delivered")).await;
        delivered["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == "3")
    })
    .await;
    let received = subscriber.received();
    assert!(received.len() >= 2, "a failed attempt, then the delivery");
    assert!(received.iter().all(|(h, b)| verified(h, b)));
    let last: Value = serde_json::from_slice(&received.last().unwrap().1).unwrap();
    assert_eq!(last["status"], "3");
    let text = metrics_text(&proxy).await;
    assert!(
        text.contains("runway_proxy_deliveries_total{result=\"retried\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn gone_stops_retrying_at_once() {
    let (_mock, proxy, subscriber) = setup(&[]).await;
    subscriber.set_status(StatusCode::GONE);
    submit(&proxy, &subscriber.url("/hook")).await;
    eventually("two dead letters", async || {
        get_json(proxy.url("/-/deliveries?state=dead")).await["deliveries"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let dead = get_json(proxy.url("/-/deliveries?state=dead")).await;
    assert_eq!(dead["deliveries"][0]["attempts"], 1);
    assert!(
        dead["deliveries"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(subscriber.received().len(), 2, "one attempt each, no retries");
}

#[tokio::test]
async fn an_exhausted_schedule_makes_a_dead_letter_that_replay_delivers() {
    let (_mock, proxy, subscriber) =
        setup_with_step(Duration::from_millis(400), &[("delivery.schedule", "0s,50ms")]).await;
    subscriber.set_status(StatusCode::SERVICE_UNAVAILABLE);
    submit(&proxy, &subscriber.url("/hook")).await;

    // Both statuses run out of attempts, the running one long before the final one comes.
    eventually("two dead letters", async || {
        get_json(proxy.url("/-/deliveries?state=dead")).await["deliveries"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let first_page = get_json(proxy.url("/-/deliveries?state=dead&limit=1")).await;
    assert_eq!(first_page["deliveries"][0]["status"], "1");
    let after = first_page["next"]
        .as_i64()
        .expect("a full page says where the next one starts");
    let dead = get_json(proxy.url(&format!("/-/deliveries?state=dead&limit=1&after={after}"))).await;
    assert_eq!(dead["deliveries"][0]["status"], "3");
    assert_eq!(dead["deliveries"][0]["attempts"], 2);
    assert!(
        dead["deliveries"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("503")
    );
    let id = dead["deliveries"][0]["id"].as_i64().unwrap();
    let before = subscriber.received().len();
    subscriber.set_status(StatusCode::OK);
    let replay = Request::post(proxy.url(&format!("/-/deliveries/{id}/replay")))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client(), replay).await.unwrap().status, StatusCode::OK);
    let received = subscriber.wait_for(before + 1, WAIT).await;
    assert!(verified(&received[before].0, &received[before].1));
    eventually("the replayed delivery recorded", async || {
        get_json(proxy.url("/-/deliveries?state=delivered")).await["deliveries"][0]["id"] == id
    })
    .await;
    // The depth gauge follows the store through dead letters and a replay: nothing left.
    eventually("an empty outbox in the metrics", async || {
        metrics_text(&proxy)
            .await
            .contains("\nrunway_proxy_outbox_depth 0\n")
    })
    .await;
    let missing = Request::post(proxy.url("/-/deliveries/999999/replay"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client(), missing).await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    let bad = get_json(proxy.url("/-/deliveries?state=lost")).await;
    assert_eq!(bad["code"], 400);
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid() {
    let old = Keyring::parse(TOKEN_KEYS).unwrap();
    let rotated = format!("{TOKEN_KEYS},2:second-secret-of-at-least-32-bytes");
    let (_mock, proxy, subscriber) = setup(&[("callback.token_keys", &rotated)]).await;
    let token = old.mint(&subscriber.url("/old"));
    let request = Request::post(format!("http://{}/hooks/runway/{token}", proxy.webhook_addr))
        .body(Full::new(Bytes::from_static(
            br#"{"task_id":"t-old","status":"3","update_time":"9"}"#,
        )))
        .unwrap();
    assert_eq!(send(&client(), request).await.unwrap().status, StatusCode::OK);
    let received = subscriber.wait_for(1, WAIT).await;
    assert!(verified(&received[0].0, &received[0].1));
}

#[tokio::test]
async fn the_receiver_answers_503_when_the_store_fails() {
    use runway_proxy::callback::Callbacks;
    use runway_proxy::relay::Relay;
    use runway_proxy::store::{
        BoxFuture, Completion, Delivery, DeliveryState, Depth, Enqueued, Error as StoreError, ErrorKind,
        Fairness, Health, NewDelivery, Outbox, ReplayFilter, SubscriberReport, Transition,
    };
    use std::sync::Arc;

    /// A store whose disk is full.
    struct FullDisk;
    impl Outbox for FullDisk {
        fn enqueue(&self, _: NewDelivery) -> BoxFuture<'_, Result<Enqueued, StoreError>> {
            Box::pin(async { Err(StoreError::new(ErrorKind::Full, "database or disk is full")) })
        }
        fn claim_within(
            &self,
            _: String,
            _: usize,
            _: Duration,
            _: Fairness,
        ) -> BoxFuture<'_, Result<Vec<Delivery>, StoreError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn finish_attempt(
            &self,
            _: i64,
            _: String,
            _: Option<String>,
            _: Completion,
            _: Health,
        ) -> BoxFuture<'_, Result<Transition, StoreError>> {
            Box::pin(async { Ok(Transition::Unchanged) })
        }
        fn subscribers(
            &self,
            _: String,
            _: usize,
        ) -> BoxFuture<'_, Result<Vec<SubscriberReport>, StoreError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn pause_subscriber(&self, _: String) -> BoxFuture<'_, Result<bool, StoreError>> {
            Box::pin(async { Ok(false) })
        }
        fn resume_subscriber(&self, _: String) -> BoxFuture<'_, Result<bool, StoreError>> {
            Box::pin(async { Ok(false) })
        }
        fn replay_dead(&self, _: ReplayFilter) -> BoxFuture<'_, Result<u64, StoreError>> {
            Box::pin(async { Ok(0) })
        }
        fn expire(&self, _: Duration) -> BoxFuture<'_, Result<u64, StoreError>> {
            Box::pin(async { Ok(0) })
        }
        fn release(&self, _: i64, _: String) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
        fn list(
            &self,
            _: DeliveryState,
            _: i64,
            _: usize,
        ) -> BoxFuture<'_, Result<Vec<Delivery>, StoreError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn deliveries_of_task(
            &self,
            _: String,
            _: usize,
        ) -> BoxFuture<'_, Result<Vec<Delivery>, StoreError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn replay(&self, _: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
            Box::pin(async { Ok(false) })
        }
        fn next_due(&self) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
            Box::pin(async { Ok(None) })
        }
        fn depth(&self) -> BoxFuture<'_, Result<Depth, StoreError>> {
            Box::pin(async { Ok(Depth::default()) })
        }
    }

    let keys = Arc::new(Keyring::parse(TOKEN_KEYS).unwrap());
    let callbacks = Callbacks::new("http://127.0.0.1", Arc::clone(&keys)).unwrap();
    let signer = WebhookSigner::from_secret(&WebhookSigner::generate_secret()).unwrap();
    let relay = Relay::builder(&callbacks, Arc::new(FullDisk), signer)
        .start()
        .unwrap();
    let receiver = relay.receiver();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(runway_proxy::server::serve(
        listener,
        receiver,
        std::future::pending(),
        Duration::from_secs(1),
        runway_proxy::server::ConnectionLimits::default(),
    ));
    let token = keys.mint("https://hooks.example.com/");
    let request = Request::post(format!("http://{addr}/hooks/runway/{token}"))
        .body(Full::new(Bytes::from_static(
            br#"{"task_id":"t","status":"3","update_time":"1"}"#,
        )))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "never a 2xx for a webhook that is not stored"
    );
}
