//! The stack `layer_overhead` and `allocations` measure: `RunwayLayer` with every limit
//! set (far above the request rate) and the callback rewrite on, around an in-memory
//! upstream, beside the same upstream bare.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use runway_proxy::RunwayLayer;
use runway_proxy::body::Body;
use runway_proxy::callback::{Callbacks, Keyring};
use runway_proxy::limit::{LimitSettings, QuotaSpec};
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceBuilder};

pub const ACCEPTED: &[u8] =
    br#"{"code":200,"msg":"success","data":{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478"},"exec_time":0.41}"#;

pub fn feed_answer() -> Bytes {
    Bytes::from(
        serde_json::json!({"code": 200, "msg": "success", "data": {
            "task_id": "d51c94db-f7fa-4ad3-a083-b8918686c478", "state": "succeeded", "status": "3",
            "prompt": "a cat", "prompt_en": "a little kitten.",
            "video_url": "https://runwaycdn.cometapi.com/attachments/video/runway/8af2304880d6b32bfff5f0ea33007566.mp4",
            "poster": "https://runwaycdn.cometapi.com/attachments/video/runway/6771c68bf540b62a96e7c4a5b2b375a7.png",
            "last_frame": "https://runwaycdn.cometapi.com/attachments/video/runway/8af7cc2b46fc7ad5d1e0efedd0bd0893.png",
            "msg": null, "point": "320", "refund": "0", "create_time": "1728622596", "update_time": "1728622955"}})
        .to_string(),
    )
}

pub fn submission_1kb() -> Bytes {
    let prompt = "a slow dolly shot through a rain-soaked neon market at night, ".repeat(13);
    Bytes::from(
        serde_json::json!({"prompt": prompt, "model": "gen4", "ratio": "16:9",
            "options": {"seconds": 10}, "callback_url": "https://hooks.example.com/runway?tenant=42"})
        .to_string(),
    )
}

/// A service under measurement: request in, response (with any body) out.
pub type Stack = BoxCloneService<Request<Full<Bytes>>, Response<Body>, BoxError>;

/// The bare upstream and the same upstream inside `RunwayLayer`.
pub fn stacks() -> (Stack, Stack) {
    stacks_traced(runway_proxy::trace::Tracer::off())
}

/// [`stacks`], with the layer recording its spans through `tracer`.
pub fn stacks_traced(tracer: runway_proxy::trace::Tracer) -> (Stack, Stack) {
    let feed = feed_answer();
    let upstream = tower::service_fn(move |request: Request<Body>| {
        let answer = if request.uri().path() == "/runway/feed" {
            feed.clone()
        } else {
            Bytes::from_static(ACCEPTED)
        };
        async move {
            // Like a real upstream, the request body is read before answering.
            let _ = request.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(Full::new(answer)))
        }
    });
    let quota = |text: &str| QuotaSpec::parse(text).expect("quota");
    let mut limits = LimitSettings::default();
    limits.rate = Some(quota("1000000000/s"));
    limits.submit_rate = Some(quota("1000000000/s"));
    limits.rate_per_key = Some(quota("1000000000/s"));
    limits.max_concurrency = Some(1_000_000);
    let keys = Arc::new(Keyring::parse("1:bench-secret-of-at-least-32-bytes!!").expect("keys"));
    let layered = ServiceBuilder::new()
        .boxed_clone()
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .layer(
            RunwayLayer::builder()
                .rate_limit(limits)
                .callbacks(Callbacks::new("https://proxy.example.com", keys).expect("public URL"))
                .tracer(tracer)
                .build()
                .expect("valid settings"),
        )
        .service(upstream.clone());
    let bare = ServiceBuilder::new()
        .boxed_clone()
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .map_request(|r: Request<Full<Bytes>>| r.map(runway_proxy::body::boxed))
        .map_response(|r: Response<Full<Bytes>>| r.map(runway_proxy::body::boxed))
        .service(upstream);
    (bare, layered)
}

/// The two requests measured: a 1 KB submission and a feed read.
pub fn cases() -> [(&'static str, &'static str, Bytes); 2] {
    [
        ("submission_1KB", "/runway/pro/generate", submission_1kb()),
        (
            "feed_read",
            "/runway/feed",
            Bytes::from_static(br#"{"task_id":"d51c94db-f7fa-4ad3-a083-b8918686c478"}"#),
        ),
    ]
}

pub fn request(path: &str, body: &Bytes) -> Request<Full<Bytes>> {
    Request::post(format!("https://api.cometapi.com{path}"))
        .header("authorization", "Bearer sk-bench-0123456789")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request")
}
