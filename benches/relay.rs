//! Webhooks accepted per second into each durable outbox: many concurrent writers sharing
//! group commits, beside one writer paying a commit (an fsync) per webhook; then end to
//! end over HTTP; and submissions' task records, which share the writer. On SQLite (the embedded store), and with the `postgres` feature on the
//! PostgreSQL that replicas share (`scripts/test-services` starts one, installing it when
//! missing; durability on: `fsync` and `synchronous_commit`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use runway_proxy::callback::{Callbacks, Keyring, SubscriberPolicy};
use runway_proxy::relay::{NewDelivery, Outbox, Relay, SqliteOutbox, WebhookSigner};
use runway_proxy::store::{NewTask, TaskFormat, TaskStore};

#[cfg(feature = "postgres")]
#[path = "../tests/common/services.rs"]
#[allow(dead_code)]
mod services;

const BODY: &[u8] = br#"{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478","status":"3","prompt":"a cat","prompt_en":"a little kitten.","video_url":"https://cdn.example.com/8af2304880d6b32bfff5f0ea33007566.mp4","poster":"https://cdn.example.com/6771c68bf540b62a96e7c4a5b2b375a7.png","last_frame":"https://cdn.example.com/8af7cc2b46fc7ad5d1e0efedd0bd0893.png","msg":null,"point":"320","refund":"0","create_time":"1728622596","update_time":"1728622955"}"#;

fn delivery(n: u64) -> NewDelivery {
    NewDelivery {
        webhook_id: format!("msg_{n:032x}"),
        dedup_key: format!("task:{n}\u{1f}3\u{1f}1728622955"),
        task_key: format!("task:{n}"),
        status: Some("3".into()),
        terminal: true,
        target_url: "https://hooks.example.com/runway".into(),
        body: Bytes::from_static(BODY),
        trace: None,
        hold_until: None,
        token: None,
        task_id: None,
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| Arc::new(SqliteOutbox::open(&dir.path().join(name)).expect("outbox"));
    let tasks = open("tasks.sqlite3");
    task_records(c, &runtime, "sqlite", tasks);
    stores(c, &runtime, "sqlite", open("bench.sqlite3"), open("e2e.sqlite3"));
    #[cfg(feature = "postgres")]
    {
        use runway_proxy::relay::{DatabaseSettings, PostgresOutbox};
        let connect = || {
            runtime.block_on(async {
                let url = services::fresh_database().await;
                Arc::new(
                    PostgresOutbox::connect(&DatabaseSettings::new(url))
                        .await
                        .expect("outbox"),
                )
            })
        };
        task_records(c, &runtime, "postgres", connect());
        let (bench, e2e) = (connect(), connect());
        stores(c, &runtime, "postgres", bench, e2e);
    }
}

/// A submission's record as the proxy writes it before answering.
fn new_task(n: u64) -> NewTask {
    NewTask {
        task_id: format!("{n:08x}-f7fa-4ad3-a083-b8918686c478"),
        format: TaskFormat::Official,
        route: "/runwayml/v1/image_to_video".into(),
        key_hash: "5e884898da280471".into(),
        key: "bench".into(),
        model: Some("gen4_turbo".into()),
        reservation: None,
        sealed_key: Some("v1.sealed-key-of-about-this-length-0123456789abcdef".into()),
        subscriber: Some("https://hooks.example.com/runway".into()),
        outcome_unknown: false,
        trace: None,
        callback_token: None,
    }
}

/// Task records per second: many submissions at once sharing commits, and one at a time.
fn task_records<S: TaskStore>(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    store: &str,
    tasks: Arc<S>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut group = c.benchmark_group(format!("relay/{store}/task_record"));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    const CONCURRENT: u64 = 512;
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("512_concurrent", |b| {
        b.to_async(runtime).iter_custom(|iters| {
            let (tasks, next) = (Arc::clone(&tasks), Arc::clone(&next));
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let mut records = tokio::task::JoinSet::new();
                    for _ in 0..CONCURRENT {
                        let tasks = Arc::clone(&tasks);
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        records.spawn(async move {
                            tasks
                                .record(new_task(n), Duration::from_secs(60))
                                .await
                                .expect("recorded")
                        });
                    }
                    while let Some(done) = records.join_next().await {
                        done.expect("task");
                    }
                }
                started.elapsed()
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_sequential", |b| {
        b.to_async(runtime).iter(|| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tasks = Arc::clone(&tasks);
            async move {
                tasks
                    .record(new_task(n), Duration::from_secs(60))
                    .await
                    .expect("recorded")
            }
        })
    });
    group.finish();
}

/// The groups for one kind of store: `outbox` for the store alone, `e2e` behind the
/// webhook receiver.
fn stores(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    store: &str,
    outbox: Arc<dyn Outbox>,
    e2e: Arc<dyn Outbox>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut group = c.benchmark_group(format!("relay/{store}/outbox_accept"));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    const CONCURRENT: u64 = 512;
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("512_concurrent_group_commit", |b| {
        b.to_async(runtime).iter_custom(|iters| {
            let outbox = Arc::clone(&outbox);
            let next = Arc::clone(&next);
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let writes = (0..CONCURRENT).map(|_| {
                        let outbox = Arc::clone(&outbox);
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::spawn(async move { outbox.enqueue(delivery(n)).await.expect("stored") })
                    });
                    for write in writes.collect::<Vec<_>>() {
                        write.await.expect("task");
                    }
                }
                started.elapsed()
            }
        })
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("1_sequential_commit_each", |b| {
        b.to_async(runtime).iter(|| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outbox = Arc::clone(&outbox);
            async move { outbox.enqueue(delivery(n)).await.expect("stored") }
        })
    });
    group.finish();

    // End to end: POSTed to the webhook receiver over loopback, stored, delivered to a
    // loopback subscriber that answers 200; timed until the subscriber has them all.
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (receiver, subscriber_addr) = runtime.block_on(async {
        let counter = Arc::clone(&delivered);
        let subscriber = tower::service_fn(move |request: Request<runway_proxy::body::Body>| {
            let counter = Arc::clone(&counter);
            async move {
                let _ = request.into_body().collect().await;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<_, Infallible>(Response::new(runway_proxy::body::empty()))
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let subscriber_addr = listener.local_addr().expect("addr");
        tokio::spawn(runway_proxy::server::serve(
            listener,
            subscriber,
            std::future::pending(),
            Duration::from_secs(1),
            runway_proxy::server::ConnectionLimits::default(),
        ));
        let keys = Arc::new(Keyring::parse("1:bench-secret-of-at-least-32-bytes!!").expect("keys"));
        let signer = WebhookSigner::from_secret(&WebhookSigner::generate_secret()).expect("signer");
        let callbacks = Callbacks::new("http://127.0.0.1", Arc::clone(&keys))
            .expect("public URL")
            .with_policy(SubscriberPolicy::default().allow_private(true));
        let relay = Relay::builder(&callbacks, e2e, signer).start().expect("relay");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let receiver_addr = listener.local_addr().expect("addr");
        tokio::spawn(runway_proxy::server::serve(
            listener,
            relay.receiver(),
            std::future::pending(),
            Duration::from_secs(1),
            runway_proxy::server::ConnectionLimits::default(),
        ));
        std::mem::forget(relay); // runs for the life of the bench
        let token = keys.mint(&format!("http://{subscriber_addr}/hook"));
        (
            format!("http://{receiver_addr}/hooks/runway/{token}"),
            subscriber_addr,
        )
    });
    let _ = subscriber_addr;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut group = c.benchmark_group(format!("relay/{store}/end_to_end"));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    const WEBHOOKS: u64 = 512;
    group.throughput(Throughput::Elements(WEBHOOKS));
    for (name, wait_for_delivery) in [
        ("512_webhooks_32_senders_accepted_durably", false),
        ("512_webhooks_32_senders_received_stored_delivered", true),
    ] {
        group.bench_function(name, |b| {
            b.to_async(runtime).iter_custom(|iters| {
                let (client, url, next, delivered) = (
                    client.clone(),
                    receiver.clone(),
                    Arc::clone(&next),
                    Arc::clone(&delivered),
                );
                async move {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let target = delivered.load(std::sync::atomic::Ordering::Relaxed) + WEBHOOKS;
                        send_webhooks(&client, &url, &next, WEBHOOKS).await;
                        // Without waiting, delivery goes on in the background, competing for
                        // the cores as it would in production.
                        while wait_for_delivery
                            && delivered.load(std::sync::atomic::Ordering::Relaxed) < target
                        {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    started.elapsed()
                }
            })
        });
    }
    group.finish();
}

/// POST `count` webhooks to `url` from 32 concurrent senders, each until its 200.
async fn send_webhooks(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    next: &Arc<std::sync::atomic::AtomicU64>,
    count: u64,
) {
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, url, next) = (client.clone(), url.to_owned(), Arc::clone(next));
        senders.spawn(async move {
            for _ in 0..count / 32 {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = format!(r#"{{"task_id":"t{n}","status":"3","update_time":"1"}}"#);
                let request = Request::post(url.as_str())
                    .body(Full::new(Bytes::from(body)))
                    .expect("request");
                let response = client.request(request).await.expect("response");
                assert!(response.status().is_success());
            }
        });
    }
    while senders.join_next().await.is_some() {}
}

criterion_group!(benches, bench);
criterion_main!(benches);
