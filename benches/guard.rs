//! What the task guard adds to a submission, on the embedded SQLite store: the same 1 KB
//! submission through `RunwayLayer` with a watch list (each accepted task recorded) and
//! through the same layer with limits set (far above the rate, so nothing waits): the
//! difference is the guard's body read and its reservation, one more store round trip.
//!
//! Each accepted task is ended by a callback right after it is answered (spawned, off the
//! measured path but on the same store writer, as real callbacks are), so the tasks in
//! flight stay few, as they do in use. A budget reads the key's tasks in its window
//! (a covering index range), which fills as the bench runs: a few thousand tasks of one
//! key by the end, more than a day of real use.

#[path = "support/layer.rs"]
mod layer;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use runway_proxy::RunwayLayer;
use runway_proxy::body::Body;
use runway_proxy::callback::{Callbacks, Keyring};
use runway_proxy::guard::GuardSettings;
use runway_proxy::relay::SqliteOutbox;
use runway_proxy::tasks::{TaskReport, TaskStore, WatchSettings};
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

type Stack = BoxCloneService<Request<Full<Bytes>>, Response<Body>, BoxError>;

/// `RunwayLayer` with a watch list on `store` (and `guard`, if any) around an upstream
/// that accepts every submission as a new task and ends it at once.
fn stack(store: Arc<SqliteOutbox>, guard: Option<GuardSettings>) -> Stack {
    let ends = Arc::clone(&store);
    let upstream = tower::service_fn(move |request: Request<Body>| {
        let ends = Arc::clone(&ends);
        async move {
            let _ = request.into_body().collect().await;
            let id = format!("{:032x}", rand::random::<u128>());
            let answer = format!(r#"{{"code":200,"msg":"success","data":{{"task_id":"{id}"}}}}"#);
            tokio::spawn(async move {
                let report = TaskReport {
                    status: Some("3".into()),
                    terminal: true,
                    points: Some(320),
                    refunded: Some(0),
                    progress: Some(100),
                };
                let _ = ends
                    .callback_seen(id, report, std::time::Duration::from_secs(900))
                    .await;
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
        }
    });
    let keys = Arc::new(Keyring::parse("1:bench-secret-of-at-least-32-bytes!!").expect("keys"));
    let mut builder = RunwayLayer::builder()
        .callbacks(Callbacks::new("https://proxy.example.com", keys).expect("public URL"))
        .watch(store, WatchSettings::default());
    if let Some(guard) = guard {
        builder = builder.guard(guard);
    }
    ServiceBuilder::new()
        .boxed_clone()
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .layer(builder.build().expect("valid settings"))
        .service(upstream)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut in_flight = GuardSettings::default();
    in_flight.max_tasks_in_flight = Some(1_000_000);
    in_flight.max_tasks_in_flight_per_key = Some(1_000_000);
    let mut budgets = in_flight.clone();
    budgets.daily_point_budget_per_key = Some(u64::MAX / 2);
    budgets.daily_task_budget = Some(u64::MAX / 2);
    let body = layer::submission_1kb();
    let mut group = c.benchmark_group("guard");
    let cases = [
        ("watch_list", None),
        ("watch_list_and_task_limits", Some(in_flight)),
        ("watch_list_task_limits_and_budgets", Some(budgets)),
    ];
    for (name, guard) in cases {
        // A store of its own for each case: a budget reads the key's tasks in its window,
        // which are the tasks this case submitted (a few thousand by its end).
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).expect("store"));
        let _enter = runtime.enter();
        let stack = stack(store, guard);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let stack = stack.clone();
                let request = layer::request("/runway/pro/generate", &body);
                async move {
                    let response = stack.oneshot(request).await.expect("ok");
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.expect("body").to_bytes()
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
