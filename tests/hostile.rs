//! The proxy against an attacker and an unlucky operator, over real loopback sockets: no
//! spelling of a route slips past its checks, slow clients don't hold listeners open,
//! one route token can't suppress another's webhooks, admin paths need their token,
//! and route tokens age out. (Ambiguous submission bodies are in `relay.rs`'s table of
//! refused bodies; two processes on one data directory in `cli.rs`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use runway_proxy::callback::{Callbacks, Keyring, SubscriberPolicy};
use runway_proxy::config::Overrides;
use runway_proxy::mock::MockConfig;
use runway_proxy::relay::{Relay, SqliteOutbox, WebhookSigner};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN_KEYS: &str = "1:first-secret-of-at-least-32-bytes!!";
const ADMIN_TOKEN: &str = "admin-token-of-at-least-16";
const WAIT: Duration = Duration::from_secs(10);

fn flags(extra: &[(&'static str, &str)]) -> Overrides {
    let mut flags = Overrides::from([
        ("webhook_secret", SECRET.to_owned()),
        ("callback.token_keys", TOKEN_KEYS.to_owned()),
        ("delivery.schedule", "0s,100ms,200ms".to_owned()),
    ]);
    for (key, value) in extra {
        flags.insert(key, (*value).to_owned());
    }
    flags
}

async fn setup(extra: &[(&'static str, &str)]) -> (runway_proxy::mock::MockUpstream, RunningProxy) {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(extra)).await;
    (mock, proxy)
}

async fn get(url: String, token: Option<&str>) -> Reply {
    let mut request = Request::get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(&client(), request.body(Full::default()).unwrap())
        .await
        .unwrap()
}

async fn post_hook(addr: std::net::SocketAddr, token: &str, body: &serde_json::Value) -> Reply {
    let request = Request::post(format!("http://{addr}/hooks/runway/{token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(&client(), request).await.unwrap()
}

#[tokio::test]
async fn no_spelling_of_a_submission_route_slips_past_the_callback_check() {
    let (mock, proxy) = setup(&[]).await;
    let metadata = json!({"prompt": "x", "callback_url": "http://169.254.169.254/latest/meta-data"});
    for path in [
        "/runway/pro/generate/",
        "//runway/pro/generate",
        "/runway//pro/generate",
        "/runway/pro/./generate",
        "/runway/x/../pro/generate",
        "/Runway/pro/generate",
        "/runway/PRO/generate",
        "/runway%2Fpro/generate",
        "/runway/%70ro/generate",
        "/runway/pro;v=1/generate",
        "/RUNWAYML/v1/image_to_video",
    ] {
        let reply = post_json(&client(), &proxy.url(path), &metadata).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {:?}", reply.body);
        let text = String::from_utf8_lossy(&reply.body);
        assert!(text.contains("canonical"), "{path}: {text}");
    }
    // The canonical spelling gets the callback check itself (and is refused by it).
    let reply = post_json(&client(), &proxy.url("/runway/pro/generate"), &metadata)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&reply.body).contains("callback_url"));
    assert!(
        mock.requests().is_empty(),
        "nothing reached the upstream: {:?}",
        mock.requests()
    );
    // Odd spellings of paths that are no CometAPI route are not refused for it.
    let reply = post_json(&client(), &proxy.url("/v1//models"), &json!({}))
        .await
        .unwrap();
    assert_ne!(reply.status, StatusCode::BAD_REQUEST);
}

/// A connection that sends a request head one byte at a time, never finishing; resolves
/// with how long the server kept it open.
async fn slow_client(addr: std::net::SocketAddr) -> Duration {
    let started = tokio::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"POST /hooks/runway/x HTTP/1.1\r\nHost: a\r\nX-Slow: "
            .iter()
            .cycle()
            .take(600)
        {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut sink = Vec::new();
    // Closed (EOF or reset) once the server gives up on the head.
    let closed = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut sink)).await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "the server kept a connection that never sent its head"
    );
    started.elapsed()
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_never_lock_the_listeners() {
    let (_mock, proxy) = setup(&[
        ("connections.header_read_timeout", "500ms"),
        ("connections.max_connections", "8"),
    ])
    .await;
    // Every slot of the webhook listener, and some of the proxy listener, taken by
    // clients that trickle their head.
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(tokio::spawn(slow_client(proxy.webhook_addr)));
    }
    for _ in 0..4 {
        slow.push(tokio::spawn(slow_client(proxy.addr)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The proxy listener has free slots: its requests are answered meanwhile.
    for _ in 0..5 {
        let reply = get(proxy.url("/-/healthz"), None).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // The full webhook listener takes the next connection once the slow ones are cut off.
    let reply = tokio::time::timeout(
        WAIT,
        post_hook(proxy.webhook_addr, "not-a-token", &json!({"task_id": "t"})),
    )
    .await
    .expect("a request to a full listener is answered once slow clients are cut off");
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    for held in slow {
        let held = held.await.unwrap();
        assert!(
            held < Duration::from_secs(5),
            "a slow client was held for {held:?}"
        );
    }
}

#[tokio::test]
async fn one_route_tokens_webhook_never_suppresses_anothers() {
    let (_mock, proxy) = setup(&[("callback.allow_private", "true")]).await;
    let victim = Subscriber::start().await;
    let attacker = Subscriber::start().await;
    let keys = Keyring::parse(TOKEN_KEYS).unwrap();
    let victims_token = keys.mint(&victim.url("/hook"));
    let attackers_token = keys.mint(&attacker.url("/hook"));
    // The attacker posts the victim's task fields through its own token first...
    let forged = json!({"task_id": "victim-task", "status": "3", "update_time": "1728622955", "video_url": "https://evil.example/x.mp4"});
    let reply = post_hook(proxy.webhook_addr, &attackers_token, &forged).await;
    assert_eq!(reply.status, StatusCode::OK);
    // ...and the real callback to the victim's token is still stored and delivered.
    let real = json!({"task_id": "victim-task", "status": "3", "update_time": "1728622955", "video_url": "https://cdn.example/real.mp4"});
    let reply = post_hook(proxy.webhook_addr, &victims_token, &real).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["msg"], "stored", "{:?}", reply.json());
    let delivered = victim.wait_for(1, WAIT).await;
    let body: serde_json::Value = serde_json::from_slice(&delivered[0].1).unwrap();
    assert_eq!(body["video_url"], "https://cdn.example/real.mp4");
    attacker.wait_for(1, WAIT).await;
    // A repeat to the same token is still a duplicate.
    let reply = post_hook(proxy.webhook_addr, &victims_token, &real).await;
    assert!(reply.json()["msg"].as_str().unwrap().starts_with("duplicate"));
}

#[tokio::test]
async fn route_tokens_age_out() {
    let (_mock, proxy) = setup(&[
        ("callback.allow_private", "true"),
        ("callback.token_lifetime", "1s"),
    ])
    .await;
    let subscriber = Subscriber::start().await;
    let keys = Keyring::parse(TOKEN_KEYS).unwrap();
    let old = keys.mint(&subscriber.url("/hook"));
    // Token times are whole seconds: past the lifetime for certain.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = keys.mint(&subscriber.url("/hook"));
    let body = json!({"task_id": "t-1", "status": "3", "update_time": "1"});
    let reply = post_hook(proxy.webhook_addr, &old, &body).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "an expired token is refused");
    let reply = post_hook(proxy.webhook_addr, &fresh, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "a fresh one is honoured");
    assert_eq!(subscriber.wait_for(1, WAIT).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        subscriber.received().len(),
        1,
        "nothing relayed for the expired token"
    );
    assert!(
        metrics_text(&proxy)
            .await
            .contains(r#"runway_proxy_webhooks_rejected_total{reason="token"} 1"#)
    );
}

#[tokio::test]
async fn admin_paths_need_the_token_when_one_is_set() {
    let (_mock, proxy) = setup(&[("admin_token", ADMIN_TOKEN), ("callback.allow_private", "true")]).await;
    for path in ["/-/healthz", "/-/readyz"] {
        assert_eq!(
            get(proxy.url(path), None).await.status,
            StatusCode::OK,
            "{path}: probes need no token"
        );
    }
    for path in ["/-/metrics", "/-/deliveries", "/-/deliveries?state=dead"] {
        let reply = get(proxy.url(path), None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(reply.headers.contains_key("www-authenticate"));
        let wrong = get(proxy.url(path), Some("admin-token-of-at-least-1")).await;
        assert_eq!(
            wrong.status,
            StatusCode::UNAUTHORIZED,
            "{path}: a prefix of the token"
        );
        assert_eq!(
            get(proxy.url(path), Some(ADMIN_TOKEN)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let replay = Request::post(proxy.url("/-/deliveries/1/replay"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client(), replay).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );

    // With the token, reveal=1 shows the subscriber URL whole; without it, no query.
    let subscriber = Subscriber::start().await;
    let hook = subscriber.url("/hook?secret=s3cr3t");
    let token = Keyring::parse(TOKEN_KEYS).unwrap().mint(&hook);
    post_hook(
        proxy.webhook_addr,
        &token,
        &json!({"task_id": "t", "status": "3"}),
    )
    .await;
    subscriber.wait_for(1, WAIT).await;
    let listed = |reveal: bool| {
        let url = proxy.url(if reveal {
            "/-/deliveries?state=delivered&reveal=1"
        } else {
            "/-/deliveries?state=delivered"
        });
        async move {
            for _ in 0..100 {
                let page = get(url.clone(), Some(ADMIN_TOKEN)).await.json();
                if let Some(url) = page["deliveries"][0]["target_url"].as_str() {
                    return url.to_owned();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the delivery was never recorded as delivered");
        }
    };
    assert_eq!(listed(false).await, subscriber.url("/hook?"));
    assert_eq!(listed(true).await, hook);
}

#[tokio::test]
async fn without_a_token_the_relays_admin_paths_are_refused_off_loopback() {
    let mock = start_mock(MockConfig::default()).await;
    let mut flags = flags(&[]);
    flags.insert("listen", "0.0.0.0:0".to_owned());
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", proxy.addr.port());
    let reply = get(url("/-/deliveries"), None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&reply.body).contains("--admin-token"));
    let replay = Request::post(url("/-/deliveries/1/replay"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client(), replay).await.unwrap().status,
        StatusCode::FORBIDDEN
    );
    // Probes and metrics stay open (they list no subscriber and change nothing).
    for path in ["/-/healthz", "/-/metrics"] {
        assert_eq!(get(url(path), None).await.status, StatusCode::OK, "{path}");
    }
}

/// The route token of the hook URL a submission through `proxy` gave the stand-in.
fn token_sent_upstream(mock: &runway_proxy::mock::MockUpstream) -> String {
    let sent: serde_json::Value = serde_json::from_slice(&mock.requests()[0].body).unwrap();
    let hook = sent["callback_url"].as_str().unwrap();
    hook.rsplit('/').next().unwrap().to_owned()
}

async fn listed(proxy: &RunningProxy, state: &str) -> usize {
    get(proxy.url(&format!("/-/deliveries?state={state}")), None)
        .await
        .json()["deliveries"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn a_callback_url_is_good_for_its_own_task_only() {
    // The callbacks come late: the forger posts first, through the genuine hook URL.
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(1500))).await;
    let proxy = start_proxy_with(None, &mock.url(), &flags(&[("callback.allow_private", "true")])).await;
    let subscriber = Subscriber::start().await;
    let reply = post_json(
        &client(),
        &proxy.url("/runway/pro/generate"),
        &json!({"prompt": "a cat", "callback_url": subscriber.url("/hook"), "model": "gen4"}),
    )
    .await
    .unwrap();
    let task_id = reply.json()["data"]["task_id"].as_str().unwrap().to_owned();
    let token = token_sent_upstream(&mock);

    for forged in [
        json!({"task_id": "someone-elses-task", "status": "3", "update_time": "1", "video_url": "https://evil.example/x.mp4"}),
        json!({"event": "no task named at all"}),
    ] {
        let reply = post_hook(proxy.webhook_addr, &token, &forged).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{forged}");
        assert_eq!(reply.json()["msg"], "this callback URL belongs to another task");
    }
    for state in ["pending", "in_flight", "delivered", "dead", "superseded"] {
        assert_eq!(listed(&proxy, state).await, 0, "nothing stored ({state})");
    }
    assert!(
        metrics_text(&proxy)
            .await
            .contains(r#"runway_proxy_webhooks_rejected_total{reason="other_task"} 2"#)
    );
    // The task's own callbacks still come through, and only they reach the subscriber.
    let received = subscriber.wait_for(2, WAIT).await;
    for (_, body) in &received {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["task_id"], task_id.as_str());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.received().len(), 2);
}

#[tokio::test]
async fn without_a_watch_list_a_token_binds_to_the_first_task_it_carries() {
    let keys = Arc::new(Keyring::parse(TOKEN_KEYS).unwrap());
    let signer = WebhookSigner::from_secret(SECRET).unwrap();
    let data = tempfile::tempdir().unwrap();
    let outbox = Arc::new(SqliteOutbox::open(&data.path().join("outbox.sqlite3")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let callbacks = Callbacks::new(&format!("http://{addr}"), Arc::clone(&keys))
        .unwrap()
        .with_policy(SubscriberPolicy::default().allow_private(true));
    // No watch list: nothing binds a token at submission.
    let relay = Relay::builder(&callbacks, outbox, signer).start().unwrap();
    tokio::spawn(runway_proxy::server::serve(
        listener,
        relay.receiver(),
        std::future::pending(),
        Duration::from_secs(1),
        runway_proxy::server::ConnectionLimits::default(),
    ));
    let subscriber = Subscriber::start().await;
    let token = keys.mint(&subscriber.url("/hook"));
    let first = json!({"task_id": "task-a", "status": "1", "update_time": "1"});
    assert_eq!(post_hook(addr, &token, &first).await.status, StatusCode::OK);
    let other = json!({"task_id": "task-b", "status": "3", "update_time": "2"});
    assert_eq!(
        post_hook(addr, &token, &other).await.status,
        StatusCode::FORBIDDEN
    );
    let done = json!({"task_id": "task-a", "status": "3", "update_time": "2"});
    assert_eq!(post_hook(addr, &token, &done).await.status, StatusCode::OK);
    let received = subscriber.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(subscriber.received().len(), 2);
    for (_, body) in received {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["task_id"], "task-a");
    }
    relay.shutdown(Duration::from_secs(1)).await;
}
