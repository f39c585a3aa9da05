//! Distributed tracing of a task's life: spans for each proxied request and each of its
//! attempts upstream, for the callback's receipt and for every delivery attempt, sent to
//! an OpenTelemetry collector over OTLP/HTTP.
//!
//! A [`Tracer`] is off unless an exporter made it ([`OtlpExporter::start`], with the
//! `otel` feature): then [`Tracer::span`] returns a [`Span`] that holds nothing and
//! records nothing, so tracing costs a branch per request and no allocation. On, a span
//! is a small record filled in as the request goes; when it ends (dropped) it is queued
//! for the exporter without waiting: a full queue drops it and counts it, and the
//! export happens off the request path, in batches.
//!
//! Context crosses process boundaries as W3C `traceparent`: read from the application's
//! request, sent upstream with each attempt, stored with the task at submission, and sent
//! with each relayed webhook. A callback arrives on a connection of its own, hours later
//! perhaps: its receipt and each delivery attempt start traces of their own, *linked* to
//! the submission's span, so a trace viewer leads from one to the other.
//!
//! # Example
//!
//! ```
//! use runway_proxy::trace::{SpanContext, SpanKind, Tracer};
//!
//! let tracer = Tracer::off();
//! let parent = SpanContext::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//! let mut span = tracer.span("proxy submission", SpanKind::Server, parent);
//! span.set_int("http.response.status_code", 200);
//! assert!(span.context().is_none(), "off: nothing is recorded");
//! ```

mod context;
#[cfg(feature = "otel")]
mod export;
#[cfg(feature = "otel")]
mod otlp;
mod sampler;
mod settings;
mod span;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use context::SpanContext;
#[cfg(feature = "otel")]
pub use export::{OtlpExporter, TraceMetrics};
pub(crate) use sampler::Sampler;
pub use sampler::{Ratio, SamplerKind};
pub use settings::{ParseError, TraceSettings, parse_headers};
#[cfg(any(feature = "otel", test))]
pub(crate) use span::Sink;
pub use span::{Span, SpanData, SpanKind, Tracer, Value};

/// The response extension the rate limiter sets: how long the request waited for its
/// turn (an attempt's span reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitWaited(pub Duration);

/// The parent of what a request leads to: the context the sidecar put in its extensions,
/// else the `traceparent` it came with.
pub fn parent_of(extensions: &http::Extensions, headers: &http::HeaderMap) -> Option<SpanContext> {
    extensions.get::<SpanContext>().copied().or_else(|| {
        headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(SpanContext::from_traceparent)
    })
}

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
