//! Keep a task's output past its URL's expiry: copy it into storage you own and hand out
//! a link to the copy.
//!
//! Runs against the built-in CometAPI stand-in, whose outputs are real bytes and expire
//! (403) after a few seconds here, and copies into a temporary directory:
//!
//! ```sh
//! cargo run --example archive_output
//! ```
//!
//! For S3, open the store with `s3://bucket/prefix` and the usual `AWS_*` environment
//! (`AWS_ENDPOINT_URL` for an S3-compatible store), and hand out
//! [`ArchiveStore::presigned`] links instead of the proxy's own.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use runway_proxy::archive::{
    ArchiveStore, Archiver, ObjectKey, OutputLinks, OutputServer, SourceHosts, webhook,
};
use runway_proxy::body::BoxError;
use runway_proxy::callback::Keyring;
use runway_proxy::mock::{MockConfig, MockUpstream};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The stand-in's outputs: 4 MiB each, gone 5 s after their task ends.
    let config = MockConfig::default()
        .step(Duration::from_millis(200))
        .output_bytes(4 << 20)
        .outputs_expire_after(Duration::from_secs(5));
    let cometapi = MockUpstream::start(([127, 0, 0, 1], 0).into(), config).await?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();

    // A task, and its result once it succeeded (the official format's task read).
    let submit = http::Request::post(format!("{}/runwayml/v1/image_to_video", cometapi.url()))
        .header("authorization", "Bearer sk-example")
        .body(Full::from(
            r#"{"promptText": "a cat", "promptImage": "https://example.com/cat.png"}"#,
        ))?;
    let created: serde_json::Value = serde_json::from_slice(
        &http
            .request(submit)
            .await?
            .into_body()
            .collect()
            .await?
            .to_bytes(),
    )?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let mut task = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let read = http::Request::get(format!("{}/runwayml/v1/tasks/{id}", cometapi.url()))
            .header("authorization", "Bearer sk-example")
            .body(Full::default())?;
        task = serde_json::from_slice(&http.request(read).await?.into_body().collect().await?.to_bytes())?;
        if task["status"] == "SUCCEEDED" {
            break;
        }
    }

    // Copy every output into a directory, downloading only from the stand-in's host.
    let dir = tempfile::tempdir()?;
    let store = ArchiveStore::open(&format!("file://{}", dir.path().display()))?;
    let archiver = Archiver::new(store.clone(), SourceHosts::new(["127.0.0.1"]))?.max_bytes(64 << 20);

    // Links to the copies, served by the proxy's own server under a signed, expiring token.
    let keys = Arc::new(Keyring::parse("1:an-example-secret-of-at-least-32-bytes")?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let public_url = format!("http://{}", listener.local_addr()?);
    let server = OutputServer::new(store, Arc::clone(&keys), Duration::from_secs(7 * 24 * 3600));
    tokio::spawn(runway_proxy::server::serve(
        listener,
        server,
        std::future::pending(),
        Duration::from_secs(1),
        runway_proxy::server::ConnectionLimits::default(),
    ));
    let links = OutputLinks::new(&public_url, keys);

    let mut copies = Vec::new();
    for (index, output) in webhook::outputs(&task).into_iter().enumerate() {
        let key = ObjectKey::new(&id, index, output.extension());
        let copy = archiver.copy(&output.url, &key).await?;
        println!(
            "copied {} ({} bytes, sha256 {})",
            output.url, copy.bytes, copy.sha256
        );
        let link = links.link(&key);
        copies.push(webhook::Linked { output, copy, link });
    }
    webhook::archived(&mut task, &copies);
    println!(
        "what the subscriber would get:\n{}",
        serde_json::to_string_pretty(&task)?
    );

    // The source expires; the copy stays.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let original = &task["runway_proxy_archive"][0]["original"];
    let source = http
        .request(http::Request::get(original.as_str().unwrap_or_default()).body(Full::default())?)
        .await?;
    let link = task["output"][0].as_str().unwrap_or_default();
    let copy = http
        .request(http::Request::get(link).body(Full::default())?)
        .await?;
    println!(
        "6 s later: the source answers {}, the copy {}",
        source.status(),
        copy.status()
    );
    Ok(())
}
