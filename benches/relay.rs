//! Webhooks accepted per second into the durable SQLite outbox: many concurrent writers
//! sharing group commits, beside one writer paying a commit (an fsync) per webhook.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runway_proxy::relay::{NewDelivery, Outbox, SqliteOutbox};

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
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Arc::new(SqliteOutbox::open(&dir.path().join("bench.sqlite3"), None).expect("outbox"));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut group = c.benchmark_group("relay/outbox_accept");
    group.sample_size(10).measurement_time(Duration::from_secs(10));

    const CONCURRENT: u64 = 512;
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("512_concurrent_group_commit", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
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
        b.to_async(&runtime).iter(|| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outbox = Arc::clone(&outbox);
            async move { outbox.enqueue(delivery(n)).await.expect("stored") }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
