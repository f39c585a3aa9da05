//! Requests per second through the sidecar versus straight to the stand-in upstream,
//! over loopback with HTTP/1.1 keep-alive, for feed reads.
//!
//! Both sides run in one process on one runtime, as client, proxy and upstream share the
//! machine's cores; the ratio of the two is what to read, not the absolute numbers.

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use runway_proxy::config::{Config, Overrides};
use runway_proxy::mock::{MockConfig, MockUpstream};
use runway_proxy::proxy::Proxy;

const FEED: &[u8] = br#"{"task_id":"00000000-0000-4000-8000-000000000000"}"#;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (upstream, proxy) = runtime.block_on(async {
        let mock = MockUpstream::start(([127, 0, 0, 1], 0).into(), MockConfig::default())
            .await
            .expect("mock");
        let flags = Overrides::from([("listen", "127.0.0.1:0".to_owned()), ("upstream", mock.url())]);
        let config = Config::load(None, &|_| None, &flags).expect("config");
        let proxy = Proxy::bind(&config).await.expect("proxy");
        let addr = proxy.local_addr();
        tokio::spawn(proxy.run(std::future::pending()));
        (mock, addr)
    });
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let read = |base: String| {
        let client = client.clone();
        async move {
            let request = Request::post(format!("{base}/runway/feed"))
                .header("authorization", "Bearer sk-bench")
                .body(Full::new(Bytes::from_static(FEED)))
                .expect("request");
            let response = client.request(request).await.expect("response");
            assert!(response.status().is_success());
            response.into_body().collect().await.expect("body");
        }
    };

    let mut group = c.benchmark_group("proxy_throughput/feed_read/1_client");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let direct = upstream.url();
    group.bench_function("direct", |b| b.to_async(&runtime).iter(|| read(direct.clone())));
    let through = format!("http://{proxy}");
    group.bench_function("through_proxy", |b| {
        b.to_async(&runtime).iter(|| read(through.clone()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
