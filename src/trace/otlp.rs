//! Spans as an OTLP `ExportTraceServiceRequest`, in protobuf: the few messages and fields
//! of `opentelemetry/proto/trace/v1/trace.proto` the proxy fills in, written by hand
//! (the tests decode them with the official generated types).

use super::{SpanData, SpanKind, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

fn int(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, VARINT);
    varint(out, value);
}

/// A nested message: written to a scratch buffer, then length-prefixed.
fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes(out, field, &inner);
}

/// `KeyValue { string key = 1; AnyValue value = 2; }`, `AnyValue { oneof { string = 1;
/// bool = 2; int64 = 3; } }`.
fn attribute(out: &mut Vec<u8>, field: u32, name: &str, value: &Value) {
    message(out, field, |kv| {
        bytes(kv, 1, name.as_bytes());
        message(kv, 2, |any| match value {
            Value::Str(text) => bytes(any, 1, text.as_bytes()),
            Value::Bool(yes) => int(any, 2, u64::from(*yes)),
            Value::Int(n) => int(any, 3, *n as u64),
        });
    });
}

fn kind(kind: SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

/// `Span`: ids 1, 2, parent 4, name 5, kind 6, times 7 and 8, attributes 9, links 13,
/// status 15, flags 16.
fn span(out: &mut Vec<u8>, span: &SpanData) {
    message(out, 2, |s| {
        bytes(s, 1, &span.context.trace_id);
        bytes(s, 2, &span.context.span_id);
        if let Some(parent) = &span.parent {
            bytes(s, 4, parent);
        }
        bytes(s, 5, span.name.as_bytes());
        int(s, 6, kind(span.kind));
        fixed64(s, 7, span.start);
        fixed64(s, 8, span.end);
        for (name, value) in &span.attributes {
            attribute(s, 9, name, value);
        }
        for link in &span.links {
            // `Link { bytes trace_id = 1; bytes span_id = 2; }`
            message(s, 13, |l| {
                bytes(l, 1, &link.trace_id);
                bytes(l, 2, &link.span_id);
            });
        }
        if let Some(why) = &span.error {
            // `Status { string message = 2; StatusCode code = 3; }`, ERROR = 2.
            message(s, 15, |status| {
                bytes(status, 2, why.as_bytes());
                int(status, 3, 2);
            });
        }
    });
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }` with one
/// resource (`service.name`, `service.version`) and one scope (`runway-proxy`).
pub(super) fn export_request(service: &str, spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * spans.len() + 128);
    message(&mut out, 1, |resource_spans| {
        message(resource_spans, 1, |resource| {
            attribute(
                resource,
                1,
                "service.name",
                &Value::Str(service.to_owned().into()),
            );
            attribute(
                resource,
                1,
                "service.version",
                &Value::Str(env!("CARGO_PKG_VERSION").into()),
            );
        });
        message(resource_spans, 2, |scope_spans| {
            message(scope_spans, 1, |scope| {
                bytes(scope, 1, b"runway-proxy");
                bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for data in spans {
                span(scope_spans, data);
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        out.clear();
        int(&mut out, 6, 2);
        assert_eq!(out, [0x30, 0x02]);
    }
}
