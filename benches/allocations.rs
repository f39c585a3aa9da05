//! Heap allocations per request made by `RunwayLayer` itself: the same requests through
//! the bare in-memory upstream and through the layer (every limit set, the callback
//! rewrite on), counted by a counting global allocator, averaged over many requests.
//! Prints a table; `cargo bench --bench allocations`.

#[path = "support/layer.rs"]
mod layer;

use std::alloc::System;

use http_body_util::BodyExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 10_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (bare, layered) = layer::stacks();
    println!(
        "{:<16} {:>14} {:>14} {:>12} {:>14}",
        "request", "bare allocs", "layer allocs", "added", "added bytes"
    );
    for (name, path, body) in layer::cases() {
        let count = |stack: &layer::Stack| {
            let requests = async |n: usize| {
                for _ in 0..n {
                    let request = layer::request(path, &body);
                    let response = stack.clone().oneshot(request).await.expect("ok");
                    let _ = response.into_body().collect().await;
                }
            };
            runtime.block_on(async {
                // Warm up: first-use allocations (limiter keys, caches) are not per request.
                requests(100).await;
                let region = Region::new(GLOBAL);
                requests(REQUESTS).await;
                let stats = region.change();
                (
                    stats.allocations as f64 / REQUESTS as f64,
                    stats.bytes_allocated as f64 / REQUESTS as f64,
                )
            })
        };
        let (bare_allocs, bare_bytes) = count(&bare);
        let (layer_allocs, layer_bytes) = count(&layered);
        println!(
            "{:<16} {:>14.1} {:>14.1} {:>12.1} {:>14.0}",
            name,
            bare_allocs,
            layer_allocs,
            layer_allocs - bare_allocs,
            layer_bytes - bare_bytes
        );
    }
}
