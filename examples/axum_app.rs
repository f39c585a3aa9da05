//! An axum application that submits Runway tasks through a `RunwayLayer`-wrapped client,
//! mounts runway-proxy's webhook receiver, and gets each result relayed, signed, to its
//! own webhook handler.
//!
//! Everything runs in this one process against the built-in CometAPI stand-in:
//!
//! ```sh
//! cargo run --example axum_app
//! ```
//!
//! Against the real CometAPI, point `UPSTREAM` at `https://api.cometapi.com`, serve the
//! receiver on a public URL, and keep the secrets somewhere safer than this file.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use runway_proxy::body::{Body, BoxError};
use runway_proxy::callback::{Callbacks, Keyring, SubscriberPolicy};
use runway_proxy::mock::{MockConfig, MockUpstream};
use runway_proxy::relay::{Relay, SqliteOutbox, WebhookSigner};
use runway_proxy::{Runway, RunwayLayer};
use tokio::sync::mpsc;
use tower::ServiceExt;

#[derive(Clone)]
struct App {
    runway: Runway<Client<HttpConnector, Body>>,
    upstream: String,
    my_hook: String,
    signer: WebhookSigner,
    results: mpsc::UnboundedSender<serde_json::Value>,
}

/// `POST /videos`: submit a text-to-video task. The `callback_url` we send is our own
/// webhook handler; the layer swaps it for a route back through the receiver.
async fn create_video(State(app): State<App>, prompt: String) -> Result<String, (StatusCode, String)> {
    let submission = serde_json::json!({"prompt": prompt, "model": "gen4", "callback_url": app.my_hook});
    let request = http::Request::post(format!("{}/runway/pro/generate", app.upstream))
        .header("authorization", "Bearer sk-your-cometapi-key")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(submission.to_string())))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let response = app
        .runway
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| match e {})?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// `POST /my-webhook`: where relayed results arrive, signed per Standard Webhooks.
async fn my_webhook(State(app): State<App>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let timestamp = header("webhook-timestamp").parse().unwrap_or(0);
    if !app.signer.verify(
        header("webhook-id"),
        timestamp,
        &body,
        header("webhook-signature"),
    ) {
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(result) => {
            let _ = app.results.send(result);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The CometAPI stand-in: tasks move queued -> running -> done, 300 ms apart.
    let cometapi = MockUpstream::start(
        ([127, 0, 0, 1], 0).into(),
        MockConfig::default().step(Duration::from_millis(300)),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    // Secrets: route-token keys for the rewrite and the receiver, and the signing secret
    // our own webhook handler verifies.
    let keys: Keyring = "1:example-only-secret-of-at-least-32-bytes".parse()?;
    let signer = WebhookSigner::from_secret(&WebhookSigner::generate_secret())?;
    // One value for the rewrite and the relay: where webhooks come back, the token keys,
    // and which subscribers are accepted (everything here is on loopback, which is
    // refused by default).
    let callbacks = Callbacks::new(&format!("http://{addr}"), keys)?
        .with_policy(SubscriberPolicy::default().allow_private(true));

    let data = tempfile::tempdir()?;
    let outbox = Arc::new(SqliteOutbox::open(&data.path().join("outbox.sqlite3"))?);
    let relay = Relay::builder(&callbacks, outbox, signer.clone()).start()?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let runway = tower::ServiceBuilder::new()
        .layer(RunwayLayer::builder().callbacks(callbacks).build()?)
        .service(client);
    let (results, mut relayed) = mpsc::unbounded_channel();
    let my_hook = format!("http://{addr}/my-webhook");
    let app = App {
        runway,
        upstream: cometapi.url(),
        my_hook,
        signer,
        results,
    };
    let router = Router::new()
        .route("/videos", post(create_video))
        .route("/my-webhook", post(my_webhook))
        .route_service("/hooks/runway/{token}", relay.receiver())
        .with_state(app);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    // Be our own user: ask the app for a video.
    let answer =
        reqwest_like_post(&format!("http://{addr}/videos"), "a paper boat on a rainy street").await?;
    println!("submitted: {answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let result = tokio::time::timeout_at(deadline, relayed.recv())
            .await?
            .ok_or("channel closed")?;
        println!(
            "relayed, signature verified: task {} status {}",
            result["task_id"], result["status"]
        );
        if result["status"] == "3" {
            println!("done: {}", result["video_url"]);
            break;
        }
    }
    relay.shutdown(Duration::from_secs(5)).await;
    server.abort();
    cometapi.shutdown().await;
    Ok(())
}

/// A plain POST with hyper-util, standing in for the application's own users.
async fn reqwest_like_post(url: &str, body: &str) -> Result<String, BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::post(url).body(Full::new(Bytes::from(body.to_owned())))?;
    let response = client.request(request).await?;
    Ok(String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned())
}
