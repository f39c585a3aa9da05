//! Embedding: `RunwayLayer` around a hyper-util client, and the relay's axum router,
//! in one application on loopback.
#![cfg(feature = "axum")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use runway_proxy::RunwayLayer;
use runway_proxy::body::Body;
use runway_proxy::callback::{Callbacks, Keyring, SubscriberPolicy};
use runway_proxy::limit::{LimitSettings, QuotaSpec};
use runway_proxy::mock::{Fault, MockConfig};
use runway_proxy::relay::{Relay, SqliteOutbox, WebhookSigner};
use runway_proxy::retry::RetrySettings;
use tower::ServiceExt;

#[tokio::test]
async fn an_embedding_app_submits_through_the_layer_and_receives_relayed_results() {
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(50))).await;
    mock.inject("/runway/pro/generate", Fault::busy(), 1);
    let subscriber = Subscriber::start().await;

    let keys = Arc::new(Keyring::parse("1:embedded-secret-of-at-least-32-bytes").unwrap());
    let signer = WebhookSigner::from_secret(&WebhookSigner::generate_secret()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let outbox = Arc::new(SqliteOutbox::open(&data.path().join("outbox.sqlite3")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    // One value for the rewrite and the relay: the keys and the policy are given once.
    let callbacks = Callbacks::new(&format!("http://{app_addr}"), Arc::clone(&keys))
        .unwrap()
        .with_policy(SubscriberPolicy::default().allow_private(true));
    let relay = Relay::builder(&callbacks, outbox, signer.clone())
        .start()
        .unwrap();

    // The application's router, with the relay's receiver merged in.
    let router: axum::Router = axum::Router::new().merge(relay.router());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let mut retry = RetrySettings::default();
    retry.base_delay = Duration::from_millis(10);
    let mut limits = LimitSettings::default();
    limits.submit_rate = Some(QuotaSpec::parse("10/s").unwrap());
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let runway = tower::ServiceBuilder::new()
        .layer(
            RunwayLayer::builder()
                .retry(retry)
                .rate_limit(limits)
                .callbacks(callbacks)
                .build()
                .unwrap(),
        )
        .service(client);
    let request = http::Request::post(format!("{}/runway/pro/generate", mock.url()))
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from(
            serde_json::json!({"prompt": "a cat", "callback_url": subscriber.url("/results")}).to_string(),
        )))
        .unwrap();
    let response = runway.oneshot(request).await.unwrap();
    assert_eq!(
        response.headers()["x-runway-proxy-attempts"],
        "2",
        "the busy answer was retried"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], 200);

    let received = subscriber.wait_for(2, Duration::from_secs(10)).await;
    for (headers, body) in &received {
        let get = |name: &str| headers[name].to_str().unwrap().to_owned();
        assert!(signer.verify(
            &get("webhook-id"),
            get("webhook-timestamp").parse().unwrap(),
            body,
            &get("webhook-signature")
        ));
    }
    let last: serde_json::Value = serde_json::from_slice(&received[1].1).unwrap();
    assert_eq!(last["status"], "3");
    relay.shutdown(Duration::from_secs(1)).await;
    server.abort();
}
