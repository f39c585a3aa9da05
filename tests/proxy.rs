//! The sidecar's pass-through behaviour, over real sockets against the stand-in.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use runway_proxy::mock::{Fault, MockConfig};

/// A proxy with retries off: these tests are about forwarding alone (tests/retry.rs
/// covers what the retry layer adds).
async fn passthrough_proxy(upstream: &str, settings: &[(&'static str, &str)]) -> RunningProxy {
    let mut all = vec![("retry.max_attempts", "1")];
    all.extend_from_slice(settings);
    start_proxy(upstream, &all).await
}

fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    // xorshift: every byte value appears, including ones that are not valid UTF-8.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn post_body_of_several_megabytes_arrives_byte_for_byte() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = passthrough_proxy(&mock.url(), &[]).await;
    let payload = pseudo_random_bytes(6 * 1024 * 1024 + 17);
    let request = Request::post(proxy.url("/v1/files?purpose=video&x=%20y"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "the stand-in has no such route"
    );

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].uri, "/v1/files?purpose=video&x=%20y",
        "path and query unchanged"
    );
    assert_eq!(recorded[0].body.len(), payload.len());
    assert!(recorded[0].body == payload, "request body changed in transit");
}

#[tokio::test]
async fn get_response_of_several_megabytes_arrives_byte_for_byte() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = passthrough_proxy(&mock.url(), &[]).await;
    // Valid UTF-8 (the stand-in's canned body is a string) but far from ASCII.
    let body: String = "añ✓🎬\u{0}x".repeat(400_000);
    mock.inject(
        "/runwayml/v1/tasks/big",
        Fault::Respond {
            status: 203,
            headers: vec![("x-upstream".into(), "kept".into())],
            body: body.clone(),
        },
        1,
    );
    let request = Request::get(proxy.url("/runwayml/v1/tasks/big"))
        .body(Full::default())
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert_eq!(reply.headers["x-upstream"], "kept");
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.body == body.as_bytes(), "response body changed in transit");
    assert_eq!(mock.requests()[0].method, http::Method::GET);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_end_to_end_headers_kept() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = passthrough_proxy(&mock.url(), &[]).await;
    mock.inject(
        "/runway/feed",
        Fault::Respond {
            status: 200,
            headers: vec![
                ("connection".into(), "x-response-hop".into()),
                ("x-response-hop".into(), "1".into()),
                ("keep-alive".into(), "timeout=5".into()),
                ("proxy-authenticate".into(), "Basic".into()),
                ("x-end-to-end".into(), "yes".into()),
            ],
            body: "{}".into(),
        },
        1,
    );
    let request = Request::post(proxy.url("/runway/feed"))
        .header("authorization", "Bearer sk-secret")
        .header("x-runway-version", "2024-11-06")
        .header("connection", "x-request-hop")
        .header("x-request-hop", "drop me")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic cHJveHk6cHJveHk=")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("x-forwarded-for", "203.0.113.7")
        .header("host", "proxy.internal")
        .body(Full::new(Bytes::from_static(b"{\"task_id\":\"t\"}")))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-end-to-end"], "yes");
    for dropped in ["x-response-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!reply.headers.contains_key(dropped), "response kept {dropped}");
    }

    let seen = &mock.requests()[0].headers;
    assert_eq!(seen["authorization"], "Bearer sk-secret");
    assert_eq!(seen["x-runway-version"], "2024-11-06");
    assert_eq!(
        seen["host"],
        mock.addr().to_string(),
        "Host is set for the upstream"
    );
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    for dropped in [
        "x-request-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
    ] {
        assert!(!seen.contains_key(dropped), "request kept {dropped}");
    }
}

#[tokio::test]
async fn header_values_that_are_not_utf8_pass_through() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = passthrough_proxy(&mock.url(), &[]).await;
    let raw = HeaderValue::from_bytes(b"caf\xe9 \xff\xfe").unwrap();
    let request = Request::post(proxy.url("/runway/feed"))
        .header("authorization", "Bearer sk-test")
        .header("x-latin1", raw.clone())
        .header("connection", HeaderValue::from_bytes(b"\xff, x-other").unwrap())
        .header("x-other", "hop")
        .body(Full::new(Bytes::from_static(b"{\"task_id\":\"none\"}")))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["msg"], "task_not_exist");
    let seen = &mock.requests()[0].headers;
    assert_eq!(seen["x-latin1"], raw);
    assert!(!seen.contains_key("x-other"));
}

#[tokio::test]
async fn upstream_down_gives_the_502_envelope() {
    let dead = dead_address().await;
    let proxy = passthrough_proxy(&format!("http://{dead}"), &[("connect_timeout", "2s")]).await;
    let reply = post_json(
        &client(),
        &proxy.url("/runway/feed"),
        &serde_json::json!({"task_id": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let envelope = reply.json();
    assert_eq!(envelope["code"], 502);
    assert_eq!(envelope["data"], serde_json::Value::Null);
    let msg = envelope["msg"].as_str().unwrap();
    assert!(msg.starts_with("upstream connect failed: "), "{msg}");
    assert!(
        msg.to_lowercase().contains("refused"),
        "the cause is named: {msg}"
    );
    assert_eq!(reply.headers["content-type"], "application/json");
}

#[tokio::test]
async fn upstream_silence_gives_the_504_envelope() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = passthrough_proxy(&mock.url(), &[("request_timeout", "300ms")]).await;
    mock.inject("/runway/feed", Fault::delay(Duration::from_secs(3)), 1);
    let reply = post_json(
        &client(),
        &proxy.url("/runway/feed"),
        &serde_json::json!({"task_id": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        reply.json(),
        serde_json::json!({"code": 504, "msg": "upstream timed out after 300ms", "data": null})
    );
}

#[tokio::test]
async fn admin_paths_answer_and_are_never_forwarded() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = passthrough_proxy(&mock.url(), &[]).await;
    let client = client();
    // One forwarded request, so the metrics have something to show.
    post_json(
        &client,
        &proxy.url("/runway/feed"),
        &serde_json::json!({"task_id": "x"}),
    )
    .await
    .unwrap();

    let get = |path: &str| Request::get(proxy.url(path)).body(Full::default()).unwrap();
    let health = send(&client, get("/-/healthz")).await.unwrap();
    assert_eq!(health.status, StatusCode::OK);
    let ready = send(&client, get("/-/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
    let metrics = send(&client, get("/-/metrics")).await.unwrap();
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    assert!(
        text.contains("runway_proxy_requests_total{route_class=\"read\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("runway_proxy_upstream_latency_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("runway_proxy_requests_in_flight 0"), "{text}");
    assert!(
        text.contains(&format!(
            "runway_proxy_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    for process in [
        "process_start_time_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.contains(&format!("\n{process} ")), "{process}: {text}");
    }
    // Every layer's metric set is composed into the one page, each family with its type.
    for family in [
        "runway_proxy_requests_total",
        "runway_proxy_upstream_latency_seconds",
        "runway_proxy_upstream_errors_total",
        "runway_proxy_retries_total",
        "runway_proxy_retry_budget_exhausted_total",
        "runway_proxy_retry_outcomes_total",
        "runway_proxy_limit_wait_seconds",
        "runway_proxy_limit_waiting",
        "runway_proxy_upstream_in_flight",
        "runway_proxy_limit_refusals_total",
        "runway_proxy_limit_tracked_keys",
        "runway_proxy_webhooks_received_total",
        "runway_proxy_deliveries_total",
        "runway_proxy_outbox_depth",
        "runway_proxy_delivery_latency_seconds",
    ] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{family} once: {text}"
        );
    }
    let outcomes: f64 = text
        .lines()
        .filter(|l| l.starts_with("runway_proxy_retry_outcomes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        outcomes, 1.0,
        "the feed read went through the retry layer once: {text}"
    );

    let unknown = send(&client, get("/-/mock/stats")).await.unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["code"], 404);
    let post = Request::post(proxy.url("/-/healthz"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&client, post).await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    assert_eq!(
        mock.requests().len(),
        1,
        "only the feed read reached the upstream"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let mock = start_mock(MockConfig::default()).await;
    let mut proxy = passthrough_proxy(&mock.url(), &[("shutdown_grace", "5s")]).await;
    mock.inject("/runway/feed", Fault::delay(Duration::from_millis(600)), 1);
    let url = proxy.url("/runway/feed");
    let in_flight =
        tokio::spawn(async move { post_json(&client(), &url, &serde_json::json!({"task_id": "x"})).await });
    // Let the request reach the stand-in before shutdown starts.
    while mock.stats().received("/runway/feed") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = proxy.shutdown();
    let reply = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(reply.status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("proxy stops")
        .unwrap();
    // And it no longer accepts connections.
    let refused = post_json(&client(), &proxy.url("/runway/feed"), &serde_json::json!({})).await;
    assert!(refused.is_err(), "listener closed after shutdown");
}

#[tokio::test]
async fn grace_period_bounds_shutdown() {
    let mock = start_mock(MockConfig::default()).await;
    let mut proxy = passthrough_proxy(
        &mock.url(),
        &[("shutdown_grace", "200ms"), ("request_timeout", "60s")],
    )
    .await;
    mock.inject("/runway/feed", Fault::delay(Duration::from_secs(30)), 1);
    let url = proxy.url("/runway/feed");
    let in_flight =
        tokio::spawn(async move { post_json(&client(), &url, &serde_json::json!({"task_id": "x"})).await });
    while mock.stats().received("/runway/feed") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown())
        .await
        .expect("proxy stops")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        in_flight.await.unwrap().is_err(),
        "the request past the grace period is cut off"
    );
}

#[tokio::test]
async fn listener_speaks_h2c_with_prior_knowledge() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = passthrough_proxy(&mock.url(), &[]).await;
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let request = Request::post(proxy.url("/runway/feed"))
        .header("authorization", "Bearer sk-test")
        .body(Full::new(Bytes::from_static(b"{\"task_id\":\"x\"}")))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    // Forwarded upstream over HTTP/1.1 all the same, with a Host header.
    assert_eq!(mock.requests()[0].headers["host"], mock.addr().to_string());
}

#[tokio::test]
async fn every_labelled_counter_has_its_known_series_before_its_first_event() {
    let mock = start_mock(MockConfig::default()).await;
    let file = r#"
        [[guard.keys]]
        label = "batch"
        hash = "00112233445566778899aabbccddeeff"
    "#;
    let proxy = start_proxy_with(Some(file), &mock.url(), &Default::default()).await;
    // Nothing has been proxied yet.
    let text = metrics_text(&proxy).await;
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split_whitespace().next().unwrap_or_default().to_owned());
        }
    }
    assert!(families.len() > 30, "{text}");
    for family in &families {
        let sampled = text.lines().any(|line| {
            !line.starts_with('#')
                && line
                    .strip_prefix(family.as_str())
                    .is_some_and(|rest| rest.starts_with(['{', ' ', '_']))
        });
        assert!(sampled, "{family} has no sample before its first event:\n{text}");
    }
    for series in [
        "runway_proxy_requests_total{route_class=\"submission\",status=\"200\"} 0",
        "runway_proxy_requests_total{route_class=\"read\",status=\"200\"} 0",
        "runway_proxy_retries_total{reason=\"retryable-code\"} 0",
        "runway_proxy_retries_total{reason=\"connect\"} 0",
        "runway_proxy_retries_total{reason=\"timeout\"} 0",
        "runway_proxy_retry_outcomes_total{outcome=\"success\"} 0",
        "runway_proxy_ledger_tasks_total{key=\"batch\",status=\"succeeded\"} 0",
        "runway_proxy_ledger_tasks_total{key=\"batch\",status=\"failed\"} 0",
        "runway_proxy_ledger_points_total{key=\"batch\",kind=\"charged\"} 0",
    ] {
        assert!(text.contains(&format!("{series}\n")), "{series}:\n{text}");
    }
}
