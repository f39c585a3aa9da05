//! Requests per second through `serve` versus straight to the upstream stand-in, over
//! loopback with HTTP/1.1 keep-alive, for feed reads and for submissions, with 1 and 64
//! concurrent clients.
//!
//! Client, proxy and upstream run in one process and share the machine's cores, so what
//! to read is the ratio of the two rows, not the absolute numbers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use runway_proxy::app::Proxy;
use runway_proxy::config::{Config, Overrides};
use runway_proxy::mock::{MockConfig, MockUpstream};

/// Requests per measured batch, split over the clients.
const BATCH: usize = 256;

type BenchClient = Client<HttpConnector, Full<Bytes>>;

async fn call(client: &BenchClient, url: &str, body: &Bytes) {
    let request = Request::post(url)
        .header("authorization", "Bearer sk-bench")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert!(
        body.starts_with(b"{\"code\":200"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// `BATCH` requests from `clients` concurrent callers, `iters` times; the total time.
async fn run(client: &BenchClient, url: Arc<str>, body: Bytes, clients: usize, iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (client, url, body) = (client.clone(), Arc::clone(&url), body.clone());
            callers.spawn(async move {
                for _ in 0..BATCH / clients {
                    call(&client, &url, &body).await;
                }
            });
        }
        while callers.join_next().await.is_some() {}
    }
    started.elapsed()
}

/// A runtime on threads of its own, as if it were another process: the clients, the
/// proxy and the upstream each get one.
fn own_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let runtime = own_runtime();
    let upstream_runtime = own_runtime();
    let proxy_runtime = own_runtime();
    let data = tempfile::tempdir().expect("tempdir");
    let client: BenchClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .build_http();
    // Tasks never finish during the run, so no callbacks compete for the cores.
    let upstream = upstream_runtime.block_on(async {
        MockUpstream::start(
            ([127, 0, 0, 1], 0).into(),
            MockConfig::default().step(Duration::from_secs(3600)),
        )
        .await
        .expect("mock")
    });
    let proxy = proxy_runtime.block_on(async {
        let flags = Overrides::from([
            ("listen", "127.0.0.1:0".to_owned()),
            ("webhook_listen", "127.0.0.1:0".to_owned()),
            ("upstream", upstream.url()),
            ("data_dir", data.path().display().to_string()),
            ("callback.allow_private", "true".to_owned()),
        ]);
        let config = Config::load(None, &|_| None, &flags).expect("config");
        let proxy = Proxy::bind(&config).await.expect("proxy");
        let addr = proxy.local_addr();
        tokio::spawn(proxy.run(std::future::pending()));
        addr
    });
    let task_id = runtime.block_on(async {
        // One task for the feed reads to find.
        let created = Request::post(format!("{}/runway/pro/generate", upstream.url()))
            .header("authorization", "Bearer sk-bench")
            .body(Full::new(Bytes::from_static(
                br#"{"prompt":"x","callback_url":"http://127.0.0.1:9/h"}"#,
            )))
            .expect("request");
        let response = client.request(created).await.expect("created");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let envelope: serde_json::Value = serde_json::from_slice(&body).expect("json");
        envelope["data"]["task_id"].as_str().expect("task id").to_owned()
    });
    let feed = Bytes::from(serde_json::json!({ "task_id": task_id }).to_string());
    let submission = Bytes::from_static(
        br#"{"prompt":"a cat in the rain","model":"gen4","ratio":"16:9","callback_url":"http://127.0.0.1:9/hook"}"#,
    );
    let routes = [
        ("feed_read", "/runway/feed", feed),
        ("submission", "/runway/pro/generate", submission),
    ];
    for (name, path, body) in routes {
        let mut group = c.benchmark_group(format!("proxy_throughput/{name}"));
        group
            .throughput(Throughput::Elements(BATCH as u64))
            .sample_size(20)
            .measurement_time(Duration::from_secs(6));
        for clients in [1usize, 64] {
            for (target, base) in [
                ("direct", upstream.url()),
                ("through_proxy", format!("http://{proxy}")),
            ] {
                let url: Arc<str> = format!("{base}{path}").into();
                let (client, body) = (client.clone(), body.clone());
                group.bench_function(BenchmarkId::new(target, format!("{clients}_clients")), |b| {
                    b.to_async(&runtime).iter_custom(|iters| {
                        let (client, url, body) = (client.clone(), Arc::clone(&url), body.clone());
                        async move { run(&client, url, body, clients, iters).await }
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
