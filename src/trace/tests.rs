//! The tracer, its samplers and the trace context, as units.

use std::sync::Arc;

use super::*;

#[test]
fn traceparent_round_trips_and_refuses_what_the_spec_refuses() {
    let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let context = SpanContext::from_traceparent(value).unwrap();
    assert_eq!(context.traceparent(), value);
    assert!(context.sampled);
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(SpanContext::from_traceparent(bad), None, "{bad:?}");
    }
}

#[cfg(not(feature = "otel"))]
#[test]
fn without_the_feature_an_endpoint_is_refused() {
    let settings = TraceSettings {
        endpoint: Some("http://collector:4318".into()),
        ..TraceSettings::default()
    };
    let err = settings.validate().unwrap_err();
    assert_eq!(err.key, "otel.endpoint");
    assert!(err.problem.contains("`otel` feature"), "{err}");
}

#[test]
fn export_headers_are_read_as_the_standard_variable_writes_them() {
    let headers = parse_headers("x-api-key=abc%20def, dataset = runway%2Fproxy").unwrap();
    assert_eq!(headers.len(), 2);
    assert_eq!(headers[0].0, "x-api-key");
    assert_eq!(headers[0].1, "abc def");
    assert!(headers[0].1.is_sensitive());
    assert_eq!(headers[1].1, "runway/proxy");
    assert!(!format!("{headers:?}").contains("abc"), "values never in Debug");
    for bad in ["novalue", "bad name=x", "x=%zz", "x=%e9"] {
        assert!(parse_headers(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_headers("").unwrap(), []);
}

fn tracer(kind: SamplerKind, ratio: f64) -> (Tracer, tokio::sync::mpsc::Receiver<SpanData>) {
    let (queue, spans) = tokio::sync::mpsc::channel(8192);
    let sink = Sink {
        queue,
        dropped: Arc::default(),
    };
    let sampler = Sampler::new(kind, Ratio::new(ratio).unwrap());
    (Tracer::exporting(sink, sampler), spans)
}

fn parent(sampled: bool) -> SpanContext {
    SpanContext {
        trace_id: [7; 16],
        span_id: [9; 8],
        sampled,
    }
}

#[test]
fn a_parent_based_sampler_follows_the_parents_flag_and_passes_it_on() {
    let (tracer, mut spans) = tracer(SamplerKind::ParentBasedAlwaysOn, 1.0);
    let span = tracer.span("left out", SpanKind::Server, Some(parent(false)));
    assert!(!span.is_recording());
    let context = span.context().expect("a context to pass on");
    assert_eq!(context.trace_id, [7; 16], "the same trace");
    assert_ne!(context.span_id, [9; 8], "a span of its own");
    assert!(context.traceparent().ends_with("-00"));
    // What it leads to is left out too.
    let child = tracer.span("child", SpanKind::Client, Some(context));
    assert!(!child.is_recording());
    drop((span, child));
    assert!(spans.try_recv().is_err(), "nothing exported");

    let span = tracer.span("kept", SpanKind::Server, Some(parent(true)));
    assert!(span.is_recording());
    assert!(span.context().unwrap().traceparent().ends_with("-01"));
    drop(span);
    assert_eq!(spans.try_recv().unwrap().name, "kept");

    // Without a parent, parentbased_always_off records nothing.
    let (tracer, _spans) = self::tracer(SamplerKind::ParentBasedAlwaysOff, 1.0);
    assert!(!tracer.span("root", SpanKind::Server, None).is_recording());
    assert!(
        tracer
            .span("child", SpanKind::Server, Some(parent(true)))
            .is_recording()
    );
}

#[test]
fn a_ratio_sampler_keeps_its_share_by_trace_id_whatever_the_parent_says() {
    let (tracer, _spans) = tracer(SamplerKind::TraceIdRatio, 0.25);
    let kept = (0..4000)
        .filter(|_| tracer.span("root", SpanKind::Server, None).is_recording())
        .count();
    // 1,000 expected; the standard deviation is about 27.
    assert!((800..1200).contains(&kept), "{kept} of 4000");
    // Decided by the trace id alone: the same id, the same answer, parent or not.
    let sampler = Sampler::new(SamplerKind::TraceIdRatio, Ratio::new(0.25).unwrap());
    for low in [0u64, u64::MAX / 8, u64::MAX / 3, u64::MAX] {
        let mut id = [1u8; 16];
        id[8..].copy_from_slice(&low.to_be_bytes());
        let want = low < u64::MAX / 4;
        assert_eq!(sampler.sample(None, &id), want, "{low:x}");
        let unsampled = SpanContext {
            trace_id: id,
            ..parent(false)
        };
        assert_eq!(sampler.sample(Some(unsampled), &id), want, "{low:x}");
    }
    let (tracer, _spans) = self::tracer(SamplerKind::TraceIdRatio, 0.0);
    assert!(
        !tracer
            .span("root", SpanKind::Server, Some(parent(true)))
            .is_recording()
    );
}

#[test]
fn a_span_to_link_is_recorded_as_the_span_it_links_to_was() {
    let (tracer, mut spans) = tracer(SamplerKind::ParentBasedTraceIdRatio, 0.0);
    let mut receipt = tracer.span_to_link("webhook received", SpanKind::Server);
    receipt.link(parent(false));
    assert!(!receipt.is_recording());
    assert!(!receipt.context().unwrap().sampled);
    drop(receipt);
    let mut receipt = tracer.span_to_link("webhook received", SpanKind::Server);
    receipt.link(parent(true));
    assert!(receipt.is_recording());
    drop(receipt);
    let exported = spans.try_recv().unwrap();
    assert_eq!(exported.links, [parent(true)]);
    assert_ne!(exported.context.trace_id, [7; 16], "a trace of its own");
    // Never linked: decided as a root when it ends (here: ratio 0, left out).
    let unlinked = tracer.span_to_link("webhook received", SpanKind::Server);
    drop(unlinked);
    let delivery = tracer.span_linked("webhook delivery", SpanKind::Client, None);
    assert!(!delivery.is_recording());
    let delivery = tracer.span_linked("webhook delivery", SpanKind::Client, Some(parent(true)));
    assert!(delivery.is_recording());
    drop(delivery);
    assert_eq!(spans.try_recv().unwrap().name, "webhook delivery");
    assert!(spans.try_recv().is_err());
}

#[test]
fn samplers_and_ratios_are_read_as_the_standard_variables_write_them() {
    for kind in SamplerKind::ALL {
        assert_eq!(kind.as_str().parse::<SamplerKind>(), Ok(kind));
    }
    assert_eq!(
        "ParentBased_TraceIdRatio".parse(),
        Ok(SamplerKind::ParentBasedTraceIdRatio)
    );
    let err = "sometimes".parse::<SamplerKind>().unwrap_err();
    assert!(err.to_string().contains("parentbased_always_on"), "{err}");
    assert_eq!("0.1".parse::<Ratio>().unwrap().get(), 0.1);
    assert_eq!(Ratio::ONE.to_string(), "1");
    for bad in ["1.5", "-0.1", "NaN", "inf", "", "half"] {
        assert!(bad.parse::<Ratio>().is_err(), "{bad:?}");
    }
}

#[test]
fn an_off_tracer_records_nothing() {
    let tracer = Tracer::off();
    let mut span = tracer.span("x", SpanKind::Internal, None);
    span.set_str("a", "b");
    assert!(!span.is_recording());
    assert_eq!(span.context(), None);
}
