//! The rate limiter's cost per request when no quota is hit, beside the bare service.
//!
//! Every quota and cap is set (global, per key, per class, concurrency) but far above the
//! request rate, so this measures the bookkeeping a request pays on the fast path.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use runway_proxy::limit::{QuotaSpec, RateLimitLayer};
use tower::{ServiceBuilder, ServiceExt};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bare = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(br#"{"code":200}"#))))
    });
    let quota = |text: &str| QuotaSpec::parse(text).expect("quota");
    let limited = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .rate(quota("1000000000/s"))
                .rate_per_key(quota("1000000000/s"))
                .submit_rate(quota("1000000000/s"))
                .max_concurrency(1_000_000)
                .max_concurrency_per_key(1_000_000)
                .build()
                .expect("valid limits"),
        )
        .service(bare);
    let request = || {
        Request::post("http://api.cometapi.com/runway/pro/generate")
            .header("authorization", "Bearer sk-bench-0123456789")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request")
    };

    let mut group = c.benchmark_group("limit/not_limited");
    group.bench_function("bare_service", |b| {
        b.to_async(&runtime)
            .iter(|| async { bare.oneshot(request()).await.expect("ok") })
    });
    group.bench_function("with_rate_limit_layer", |b| {
        b.to_async(&runtime)
            .iter(|| async { limited.clone().oneshot(request()).await.expect("ok") })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
