//! `RunwayLayer` around an in-memory service beside the bare service: what the layer
//! itself costs per request, for a 1 KB submission (read, URL checked, rewritten, retried
//! by its body) and a feed read (classified by its body). Every limit is set but far
//! above the request rate, so the limiter's bookkeeping is paid without waiting.
//!
//! Compare the difference with one loopback round trip (`proxy_throughput`, direct, one
//! client): the target is under 5% of it. `runway_layer_traced` is the same layer with
//! traces exported (a span per attempt, batched to a loopback collector that answers
//! 200): what turning tracing on costs.

#[path = "support/layer.rs"]
mod layer;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (bare, layered) = layer::stacks();
    let traced = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let collector = tower::service_fn(|request: http::Request<runway_proxy::body::Body>| async move {
            let _ = request.into_body().collect().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(runway_proxy::body::empty()))
        });
        tokio::spawn(runway_proxy::server::serve(
            listener,
            collector,
            std::future::pending(),
            std::time::Duration::from_secs(1),
            runway_proxy::server::ConnectionLimits::default(),
        ));
        let mut settings = runway_proxy::trace::TraceSettings::default();
        settings.endpoint = Some(format!("http://{addr}"));
        let (tracer, exporter) = runway_proxy::trace::OtlpExporter::start(&settings).expect("exporter");
        (layer::stacks_traced(tracer).1, exporter)
    });
    let (traced, _exporter) = traced;
    let mut group = c.benchmark_group("layer_overhead");
    for (name, path, body) in layer::cases() {
        let traced = traced.clone();
        let (p2, b3) = (path, body.clone());
        group.bench_function(BenchmarkId::new("runway_layer_traced", name), |b| {
            b.to_async(&runtime).iter(|| {
                let traced = traced.clone();
                let request = layer::request(p2, &b3);
                async move {
                    let response = traced.oneshot(request).await.expect("ok");
                    response.into_body().collect().await.expect("body").to_bytes()
                }
            })
        });
        let bare = bare.clone();
        let (p, b2) = (path, body.clone());
        group.bench_function(BenchmarkId::new("bare_service", name), |b| {
            b.to_async(&runtime).iter(|| {
                let bare = bare.clone();
                let request = layer::request(p, &b2);
                async move {
                    let response = bare.oneshot(request).await.expect("ok");
                    response.into_body().collect().await.expect("body").to_bytes()
                }
            })
        });
        let layered = layered.clone();
        group.bench_function(BenchmarkId::new("runway_layer", name), |b| {
            b.to_async(&runtime).iter(|| {
                let layered = layered.clone();
                let request = layer::request(path, &body);
                async move {
                    let response = layered.oneshot(request).await.expect("ok");
                    assert_eq!(response.headers()["x-runway-proxy-attempts"], "1");
                    response.into_body().collect().await.expect("body").to_bytes()
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
