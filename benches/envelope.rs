//! Envelope parsing plus retry classification, beside a plain `serde_json::Value` parse of
//! the same body: the retry layer's per-attempt cost of reading the answer.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::StatusCode;
use runway_proxy::envelope::Envelope;
use runway_proxy::retry::{Action, Rules};
use runway_proxy::route::RouteClass;
use serde_json::Value;
use std::hint::black_box;

fn feed_result() -> Vec<u8> {
    // A feed answer of about 4 KB: a long prompt and its translation, and the media URLs.
    let prompt = "a slow dolly shot through a rain-soaked neon market at night, ".repeat(28);
    serde_json::to_vec(&serde_json::json!({
        "code": 200, "msg": "success",
        "data": {
            "task_id": "d51c94db-f7fa-4ad3-a083-b8918686c478", "state": "succeeded", "status": "3",
            "prompt": prompt, "prompt_en": prompt,
            "video_url": "https://runwaycdn.cometapi.com/attachments/video/runway/20241011/8af2304880d6b32bfff5f0ea33007566.mp4",
            "poster": "https://runwaycdn.cometapi.com/attachments/video/runway/20241011/6771c68bf540b62a96e7c4a5b2b375a7.png",
            "last_frame": "https://runwaycdn.cometapi.com/attachments/video/runway/20241011/8af7cc2b46fc7ad5d1e0efedd0bd0893.png",
            "msg": null, "point": "320", "refund": "0", "create_time": "1728622596", "update_time": "1728622955"
        }
    }))
    .expect("serializable")
}

fn bench(c: &mut Criterion) {
    let rules = Rules::default();
    let feed = feed_result();
    let bodies: [(&str, &[u8], RouteClass, &str, Action); 3] = [
        (
            "success",
            br#"{"code":200,"msg":"success","data":{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478"},"exec_time":0.41}"#,
            RouteClass::Submission,
            "/runway/pro/generate",
            Action::Success,
        ),
        ("error", br#"{"code":500,"msg":"system busy, please try again","data":null}"#, RouteClass::Submission, "/runway/pro/generate", Action::Retry),
        ("feed_4k", &feed, RouteClass::Read, "/runway/feed", Action::Success),
    ];
    let mut group = c.benchmark_group("envelope");
    for (name, body, class, path, expected) in bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse_and_classify", name), body, |b, body| {
            b.iter(|| {
                let envelope = Envelope::parse(black_box(body));
                let verdict = rules.classify(class, path, StatusCode::OK, envelope.as_ref());
                assert_eq!(verdict.action, expected);
                verdict.action
            })
        });
        group.bench_with_input(BenchmarkId::new("serde_json_value", name), body, |b, body| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body)).expect("json"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
