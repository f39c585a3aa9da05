//! The callback_url rewrite beside a `serde_json::Value` parse-and-serialize of the same
//! body (what a naive rewrite would do, losing field order, escapes and number forms).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use runway_proxy::callback::CallbackUrl;
use serde_json::Value;
use std::hint::black_box;

/// A submission of about `size` bytes: the usual fields plus a long prompt.
fn submission(size: usize) -> Vec<u8> {
    let base = r#"{"prompt":"","ratio":"16:9","model":"gen4","style":"cinematic","options":{"seconds":10,"motion_vector":{"x":0,"y":0,"z":0,"r":0,"bg_x_pan":0,"bg_y_pan":0}},"image":"https://cdn.example.com/ref/8af2304880d6b32bfff5f0ea33007566.png","callback_url":"https://hooks.example.com/runway/callback?tenant=42"}"#;
    let filler = "a slow dolly shot through a rain-soaked neon market at night ".repeat(size / 60 + 1);
    let prompt = &filler[..size.saturating_sub(base.len()).max(1)];
    base.replacen(r#""prompt":"""#, &format!(r#""prompt":"{prompt}""#), 1)
        .into_bytes()
}

const NEW_URL: &str = "http://127.0.0.1:8081/hooks/runway/AQEAAAAAZ0FBQUFBQUFBQUFBeyJ0YXNrIjoid2hhdGV2ZXIifQ";

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("rewrite");
    for (name, size) in [("1KB", 1024), ("64KB", 64 * 1024)] {
        let body = submission(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("callback_rewrite", name), &body, |b, body| {
            b.iter(|| {
                let found = CallbackUrl::find(black_box(body))
                    .expect("valid")
                    .expect("has callback_url");
                found.replace(body, NEW_URL)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("serde_json_value_round_trip", name),
            &body,
            |b, body| {
                b.iter(|| {
                    let mut value: Value = serde_json::from_slice(black_box(body)).expect("valid");
                    value["callback_url"] = Value::from(NEW_URL);
                    serde_json::to_vec(&value).expect("serializable")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
