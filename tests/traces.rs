//! OpenTelemetry traces of one task, from the application's submission to the relayed
//! webhook, as a collector receives them: OTLP/HTTP protobuf, decoded here with the
//! official generated types (not the proxy's own encoder).
#![cfg(feature = "otel")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use runway_proxy::config::Overrides;
use runway_proxy::mock::{Fault, MockConfig};
use runway_proxy::trace::SpanContext;
use serde_json::json;

const GENERATE: &str = "/runway/pro/generate";
const WAIT: Duration = Duration::from_secs(10);
/// The application's own trace, which the proxy's spans continue.
const APP_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Every span the collector received, and the resource's `service.name` of each batch.
fn collected(collector: &Subscriber) -> (Vec<Span>, Vec<String>) {
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for (headers, body) in collector.received() {
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(body).expect("a valid OTLP protobuf export");
        for resource in request.resource_spans {
            for attribute in resource.resource.map(|r| r.attributes).unwrap_or_default() {
                if attribute.key == "service.name"
                    && let Some(AnyValue::StringValue(name)) = attribute.value.and_then(|v| v.value)
                {
                    services.push(name);
                }
            }
            for scope in resource.scope_spans {
                assert_eq!(scope.scope.map(|s| s.name).as_deref(), Some("runway-proxy"));
                spans.extend(scope.spans);
            }
        }
    }
    (spans, services)
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key) {
        Some(AnyValue::StringValue(text)) => Some(text),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(AnyValue::IntValue(n)) => Some(n),
        _ => None,
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Submit one reverse-format task under `traceparent`, and wait for its two relayed
/// webhooks (running, then the end).
async fn submit_and_wait_for_both_webhooks(
    proxy: &RunningProxy,
    subscriber: &Subscriber,
    traceparent: &str,
) -> Vec<(http::HeaderMap, bytes::Bytes)> {
    let request = Request::post(proxy.url(GENERATE))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .header("traceparent", traceparent)
        .body(Full::from(
            json!({"prompt": "a cat", "model": "gen4", "callback_url": subscriber.url("/hook")}).to_string(),
        ))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert_eq!(reply.json()["code"], 200, "{:?}", reply.json());
    subscriber.wait_for(2, WAIT).await
}

#[tokio::test]
async fn one_task_is_traced_from_submission_to_relayed_webhook_with_links() {
    let collector = Subscriber::start().await;
    let subscriber = Subscriber::start().await;
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(100))).await;
    let flags = Overrides::from([
        ("callback.allow_private", "true".to_owned()),
        ("retry.base_delay", "10ms".to_owned()),
        ("otel.endpoint", collector.url("")),
        ("otel.service_name", "proxy-under-test".to_owned()),
        ("otel.headers", "x-api-key=collector%20key".to_owned()),
    ]);
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    // The first attempt is answered busy (inside a 200), the second succeeds.
    mock.inject(GENERATE, Fault::busy(), 1);
    let relayed = submit_and_wait_for_both_webhooks(&proxy, &subscriber, APP_TRACEPARENT).await;

    eventually("the collector has the whole story", WAIT, async || {
        let (spans, _) = collected(&collector);
        named(&spans, "webhook delivery").len() >= 2 && named(&spans, "webhook received").len() >= 2
    })
    .await;
    let (spans, services) = collected(&collector);
    assert!(services.iter().all(|s| s == "proxy-under-test"), "{services:?}");
    for (headers, _) in collector.received() {
        assert_eq!(
            headers["x-api-key"], "collector key",
            "the export headers, decoded"
        );
    }
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let app = SpanContext::from_traceparent(APP_TRACEPARENT).unwrap();

    // The task's admin page (and the console's) names the trace to look it up by.
    let body: serde_json::Value = serde_json::from_slice(&relayed[0].1).unwrap();
    let task_id = body["task_id"].as_str().unwrap();
    let page = send(
        &client(),
        http::Request::get(proxy.url(&format!("/-/tasks/{task_id}")))
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(
        page["trace_id"],
        APP_TRACEPARENT.split('-').nth(1).unwrap(),
        "{page}"
    );

    // The submission: a server span continuing the application's trace.
    let submissions = named(&spans, "proxy submission");
    assert_eq!(submissions.len(), 1, "{spans:#?}");
    let submission = submissions[0];
    assert_eq!(submission.trace_id, app.trace_id);
    assert_eq!(submission.parent_span_id, app.span_id);
    assert_eq!(submission.kind, SpanKind::Server as i32);
    assert_eq!(int(submission, "http.response.status_code"), Some(200));
    assert_eq!(text(submission, "url.path").as_deref(), Some(GENERATE));
    assert_eq!(
        text(submission, "runway.retry.outcome").as_deref(),
        Some("success")
    );
    assert!(submission.end_time_unix_nano >= submission.start_time_unix_nano);

    // Its attempts: children, the first retried by the rule that decided, each one the
    // parent the upstream was told of.
    let mut attempts = named(&spans, "upstream attempt");
    attempts.sort_by_key(|s| int(s, "runway.attempt"));
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.trace_id, app.trace_id);
        assert_eq!(attempt.parent_span_id, submission.span_id);
        assert_eq!(attempt.kind, SpanKind::Client as i32);
        assert_eq!(text(attempt, "runway.route_class").as_deref(), Some("submission"));
    }
    assert_eq!(text(attempts[0], "runway.retry.action").as_deref(), Some("retry"));
    assert_eq!(
        text(attempts[0], "runway.retry.rule").as_deref(),
        Some("retryable-code")
    );
    assert_eq!(text(attempts[0], "runway.envelope.code").as_deref(), Some("500"));
    assert_eq!(
        attempts[0].status.as_ref().map(|s| s.code),
        Some(2),
        "an error status"
    );
    assert_eq!(
        text(attempts[1], "runway.retry.action").as_deref(),
        Some("success")
    );
    assert_eq!(text(attempts[1], "runway.envelope.code").as_deref(), Some("200"));
    let upstream_parents: Vec<Vec<u8>> = mock
        .requests()
        .iter()
        .filter(|r| r.uri == GENERATE)
        .map(|r| {
            let value = r.headers["traceparent"].to_str().unwrap();
            SpanContext::from_traceparent(value).unwrap().span_id.to_vec()
        })
        .collect();
    assert_eq!(
        upstream_parents,
        [attempts[0].span_id.clone(), attempts[1].span_id.clone()]
    );

    // Each callback's receipt: a trace of its own, linked to the submission.
    let links_to_submission = |span: &Span| {
        span.links
            .iter()
            .any(|l| l.trace_id == submission.trace_id && l.span_id == submission.span_id)
    };
    let receipts = named(&spans, "webhook received");
    for receipt in &receipts {
        assert_ne!(receipt.trace_id, app.trace_id, "a trace of its own");
        assert!(links_to_submission(receipt), "{receipt:#?}");
        assert_eq!(receipt.kind, SpanKind::Server as i32);
        assert_eq!(int(receipt, "http.response.status_code"), Some(200));
        assert!(text(receipt, "runway.task_id").is_some());
    }
    // Each delivery attempt: linked too, and the span the subscriber was told of.
    let deliveries = named(&spans, "webhook delivery");
    for delivery in &deliveries {
        assert!(links_to_submission(delivery), "{delivery:#?}");
        assert_eq!(
            text(delivery, "runway.delivery.outcome").as_deref(),
            Some("delivered")
        );
        assert_eq!(int(delivery, "http.response.status_code"), Some(200));
    }
    for (headers, _) in &relayed {
        let context = SpanContext::from_traceparent(headers["traceparent"].to_str().unwrap()).unwrap();
        let span = by_id
            .get(context.span_id.as_slice())
            .expect("the relayed traceparent names an exported span");
        assert_eq!(span.name, "webhook delivery");
        assert_eq!(span.trace_id, context.trace_id);
    }
    // No secret in any span: not the key, not a route token, not the subscriber's URL.
    for span in &spans {
        for kv in &span.attributes {
            if let Some(AnyValue::StringValue(value)) = kv.value.as_ref().and_then(|v| v.value.clone()) {
                for secret in ["sk-test", "/hooks/runway/", "/hook", "127.0.0.1"] {
                    assert!(!value.contains(secret), "{} = {value:?} in {}", kv.key, span.name);
                }
            }
        }
    }
    assert!(
        metrics_text(&proxy)
            .await
            .contains("runway_proxy_trace_spans_exported_total")
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_recorded_and_traceparent_passes_through() {
    let mock = start_mock(MockConfig::default()).await;
    let proxy = start_proxy(&mock.url(), &[]).await;
    let request = Request::get(proxy.url("/v1/models"))
        .header("authorization", "Bearer sk-test")
        .header("traceparent", APP_TRACEPARENT)
        .body(Full::default())
        .unwrap();
    send(&client(), request).await.unwrap();
    // The application's own context reaches the upstream unchanged.
    let sent = &mock.requests()[0];
    assert_eq!(sent.headers["traceparent"], APP_TRACEPARENT);
    assert!(!metrics_text(&proxy).await.contains("runway_proxy_trace_spans"));
}

#[tokio::test]
async fn an_unusable_endpoint_is_refused_at_start() {
    let flags = Overrides::from([("otel.endpoint", "collector:4318".to_owned())]);
    let err = runway_proxy::config::Config::load(None, &|_| None, &flags).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("otel.endpoint: \"collector:4318\" is not an http(s) URL"),
        "{err}"
    );
}

#[tokio::test]
async fn events_the_watcher_finds_are_delivered_linked_to_the_submission_too() {
    let collector = Subscriber::start().await;
    let subscriber = Subscriber::start().await;
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(100))).await;
    let flags = Overrides::from([
        ("callback.allow_private", "true".to_owned()),
        ("watch.poll_interval", "100ms".to_owned()),
        ("otel.endpoint", collector.url("")),
    ]);
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    // An official-format task: no callback ever comes; the watcher reads its status.
    let request = Request::post(proxy.url("/runwayml/v1/image_to_video"))
        .header("authorization", "Bearer sk-official")
        .header("content-type", "application/json")
        .header("x-runway-proxy-callback-url", subscriber.url("/hook"))
        .body(Full::from(
            json!({"model": "gen4_turbo", "promptImage": "https://example.com/a.png", "ratio": "1280:720"})
                .to_string(),
        ))
        .unwrap();
    let reply = send(&client(), request).await.unwrap();
    assert!(reply.status.is_success(), "{:?}", reply.json());
    subscriber.wait_for(1, WAIT).await;
    eventually("the delivery's span is exported", WAIT, async || {
        !named(&collected(&collector).0, "webhook delivery").is_empty()
    })
    .await;
    let (spans, _) = collected(&collector);
    let submission = named(&spans, "proxy submission");
    assert_eq!(submission.len(), 1, "{spans:#?}");
    for delivery in named(&spans, "webhook delivery") {
        assert!(
            delivery
                .links
                .iter()
                .any(|l| l.span_id == submission[0].span_id && l.trace_id == submission[0].trace_id),
            "{delivery:#?}"
        );
    }
}

#[tokio::test]
async fn a_trace_the_application_left_out_is_left_out_whole_and_stays_left_out_upstream() {
    const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let collector = Subscriber::start().await;
    let subscriber = Subscriber::start().await;
    let mock = start_mock(MockConfig::default().step(Duration::from_millis(100))).await;
    let flags = Overrides::from([
        ("callback.allow_private", "true".to_owned()),
        ("otel.endpoint", collector.url("")),
    ]);
    let proxy = start_proxy_with(None, &mock.url(), &flags).await;
    let relayed = submit_and_wait_for_both_webhooks(&proxy, &subscriber, UNSAMPLED).await;
    // The upstream and the subscriber are told of the same trace, still not sampled.
    let app = SpanContext::from_traceparent(UNSAMPLED).unwrap();
    let upstream = &mock.requests()[0].headers["traceparent"];
    let upstream = SpanContext::from_traceparent(upstream.to_str().unwrap()).unwrap();
    assert_eq!(upstream.trace_id, app.trace_id);
    assert!(!upstream.sampled, "{upstream:?}");
    for (headers, _) in &relayed {
        let context = SpanContext::from_traceparent(headers["traceparent"].to_str().unwrap()).unwrap();
        assert!(!context.sampled, "{context:?}");
    }

    // A sampled request after it: once its span is in, everything that ended before it
    // would be (one queue, exported in order).
    let request = Request::get(proxy.url("/v1/models"))
        .header("authorization", "Bearer sk-test")
        .header("traceparent", APP_TRACEPARENT)
        .body(Full::default())
        .unwrap();
    send(&client(), request).await.unwrap();
    eventually("the sampled request's span is exported", WAIT, async || {
        !named(&collected(&collector).0, "proxy other").is_empty()
    })
    .await;
    let (spans, _) = collected(&collector);
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["upstream attempt", "proxy other"], "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id == SpanContext::from_traceparent(APP_TRACEPARENT).unwrap().trace_id)
    );
}
