//! The smallest use of `RunwayLayer`: wrap a hyper-util client, and CometAPI's errors
//! inside a 200 are retried for you, paid submissions are never sent twice, and calls
//! wait their turn under a rate limit.
//!
//! Runs against the built-in CometAPI stand-in, so no key is needed:
//!
//! ```sh
//! cargo run --example hyper_client
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use runway_proxy::RunwayLayer;
use runway_proxy::body::{Body, BoxError};
use runway_proxy::limit::LimitSettings;
use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
use runway_proxy::retry::RetrySettings;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Stand-in for https://api.cometapi.com, answering "system busy" twice first.
    let cometapi = MockUpstream::start(([127, 0, 0, 1], 0).into(), MockConfig::default()).await?;
    cometapi.inject("/runway/pro/generate", Fault::busy(), 2);

    let mut retry = RetrySettings::default();
    retry.base_delay = Duration::from_millis(100); // CometAPI suggests 1 s; quicker here
    let mut limits = LimitSettings::default();
    limits.submit_rate = Some("5/s".parse()?);
    limits.max_concurrency = Some(5);

    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let runway = ServiceBuilder::new()
        .layer(RunwayLayer::builder().retry(retry).rate_limit(limits).build()?)
        .service(client);

    let request = http::Request::post(format!("{}/runway/pro/generate", cometapi.url()))
        .header("authorization", "Bearer sk-your-cometapi-key")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"prompt": "a cat in the rain", "model": "gen4", "callback_url": "https://hooks.example.com/runway"}"#,
        )))?;
    let response = runway.oneshot(request).await?;
    let attempts = response.headers()["x-runway-proxy-attempts"].to_str()?.to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "CometAPI answered {} after {attempts} attempts",
        String::from_utf8_lossy(&body)
    );
    println!(
        "the stand-in saw {} submissions and accepted {} task",
        cometapi.stats().received("/runway/pro/generate"),
        cometapi.stats().accepted("/runway/pro/generate")
    );
    cometapi.shutdown().await;
    Ok(())
}
