//! What a shared limit decision costs: `SharedLimits::check` (one GCRA script over one
//! and over three quotas, one round trip to Redis on loopback) and a request through
//! `RateLimitLayer` with its quotas (and a concurrency cap) in Redis, beside a bare `PING`
//! to the same server and the same layer in memory, all in the same run.
//!
//! Needs Redis: `scripts/test-services` starts one (installing it when missing).
//! `cargo bench --bench shared_limit --features redis`.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use runway_proxy::limit::{LimitSettings, QuotaSpec, RateLimitLayer, ServiceUrl, SharedLimits};
use tower::{ServiceBuilder, ServiceExt};

#[path = "../tests/common/services.rs"]
#[allow(dead_code)]
mod services;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = services::redis_url().to_owned();
    let quota = |text: &str| QuotaSpec::parse(text).expect("quota");
    // Far above the request rate: every decision admits, as on the fast path.
    let roomy = quota("1000000000/s");
    let limits = runtime
        .block_on(SharedLimits::connect(&url, "bench-shared-limit"))
        .expect("Redis answers");
    let client = redis::Client::open(url.as_str()).expect("url");
    let connection = runtime
        .block_on(client.get_multiplexed_async_connection())
        .expect("connection");

    let mut group = c.benchmark_group("shared_limit/decision");
    group.bench_function("redis_ping", |b| {
        b.to_async(&runtime).iter(|| {
            let mut connection = connection.clone();
            async move {
                let _: String = redis::cmd("PING")
                    .query_async(&mut connection)
                    .await
                    .expect("PONG");
            }
        })
    });
    group.bench_function("check_one_quota", |b| {
        b.to_async(&runtime)
            .iter(|| async { limits.check(&[("global", roomy)]).await.expect("decision") })
    });
    group.bench_function("check_three_quotas", |b| {
        b.to_async(&runtime).iter(|| async {
            limits
                .check(&[("key:0123", roomy), ("submission", roomy), ("global", roomy)])
                .await
                .expect("decision")
        })
    });
    group.finish();

    let bare = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(br#"{"code":200}"#))))
    });
    let layer = |redis: Option<&str>, cap: Option<u32>| {
        let mut settings = LimitSettings::default();
        settings.rate = Some(roomy);
        settings.rate_per_key = Some(roomy);
        settings.submit_rate = Some(roomy);
        settings.max_concurrency = cap;
        settings.redis_url = redis.map(ServiceUrl::new);
        RateLimitLayer::builder()
            .settings(settings)
            .build()
            .expect("valid limits")
    };
    let in_memory = ServiceBuilder::new().layer(layer(None, None)).service(bare);
    let in_redis = ServiceBuilder::new().layer(layer(Some(&url), None)).service(bare);
    // A cap far above what one bench loop holds: every request takes a lease and gives
    // it back, as on the fast path.
    let capped = ServiceBuilder::new()
        .layer(layer(Some(&url), Some(1_000_000)))
        .service(bare);
    let request = || {
        Request::post("http://api.cometapi.com/runway/pro/generate")
            .header("authorization", "Bearer sk-bench-0123456789")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request")
    };
    let mut group = c.benchmark_group("shared_limit/layer");
    group.bench_function("quotas_in_memory", |b| {
        b.to_async(&runtime)
            .iter(|| async { in_memory.clone().oneshot(request()).await.expect("ok") })
    });
    group.bench_function("quotas_in_redis", |b| {
        b.to_async(&runtime)
            .iter(|| async { in_redis.clone().oneshot(request()).await.expect("ok") })
    });
    // The response is dropped at once, so its lease is given back (in the background)
    // while the next request takes its own.
    group.bench_function("quotas_and_a_cap_in_redis", |b| {
        b.to_async(&runtime)
            .iter(|| async { capped.clone().oneshot(request()).await.expect("ok") })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
