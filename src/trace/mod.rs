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

#[cfg(feature = "otel")]
mod export;
#[cfg(feature = "otel")]
mod otlp;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(feature = "otel")]
pub use export::{OtlpExporter, TraceMetrics};

use crate::settings::{InvalidSetting, check};

/// Where and as what spans are exported (`[otel]`). No endpoint: tracing is off.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans go to
    /// `{endpoint}/v1/traces`, or to the URL itself if it already ends so.
    pub endpoint: Option<String>,
    /// `service.name` of the spans' resource.
    pub service_name: String,
    /// Headers sent with each export (a collector's API key, say); marked sensitive, so
    /// `Debug` never shows their values.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
    pub sampler: SamplerKind,
    /// The share of traces the `*traceidratio` samplers record, 0 to 1
    /// (`OTEL_TRACES_SAMPLER_ARG`).
    pub sampler_arg: Ratio,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            endpoint: None,
            service_name: "runway-proxy".to_owned(),
            headers: Vec::new(),
            sampler: SamplerKind::default(),
            sampler_arg: Ratio::ONE,
        }
    }
}

/// The samplers `OTEL_TRACES_SAMPLER` names. A parent-based one follows the sampled flag
/// of the application's `traceparent` (and a callback's receipt and deliveries follow
/// their submission's); the rest decide by themselves, by the trace id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SamplerKind {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// A share of traces, chosen by trace id (`sampler_arg`).
    TraceIdRatio,
    /// The parent's decision; every trace that starts here (the default, as in the spec).
    #[default]
    ParentBasedAlwaysOn,
    /// The parent's decision; no trace that starts here.
    ParentBasedAlwaysOff,
    /// The parent's decision; a share of the traces that start here.
    ParentBasedTraceIdRatio,
}

impl SamplerKind {
    /// Every sampler, by its name.
    pub const ALL: [SamplerKind; 6] = [
        SamplerKind::AlwaysOn,
        SamplerKind::AlwaysOff,
        SamplerKind::TraceIdRatio,
        SamplerKind::ParentBasedAlwaysOn,
        SamplerKind::ParentBasedAlwaysOff,
        SamplerKind::ParentBasedTraceIdRatio,
    ];

    /// Its name, as `OTEL_TRACES_SAMPLER` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SamplerKind::AlwaysOn => "always_on",
            SamplerKind::AlwaysOff => "always_off",
            SamplerKind::TraceIdRatio => "traceidratio",
            SamplerKind::ParentBasedAlwaysOn => "parentbased_always_on",
            SamplerKind::ParentBasedAlwaysOff => "parentbased_always_off",
            SamplerKind::ParentBasedTraceIdRatio => "parentbased_traceidratio",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        SamplerKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| {
                let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("{text:?} is not a sampler; use one of {}", names.join(", "))
            })
    }
}

/// A share from 0 to 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio(f64);

// Always finite (`Ratio::new`), so equality is an equivalence.
impl Eq for Ratio {}

impl Ratio {
    /// All of it.
    pub const ONE: Ratio = Ratio(1.0);

    /// `share`, if it is a number from 0 to 1.
    pub fn new(share: f64) -> Option<Ratio> {
        (0.0..=1.0).contains(&share).then_some(Ratio(share))
    }

    /// The share.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl std::str::FromStr for Ratio {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.trim()
            .parse::<f64>()
            .ok()
            .and_then(Ratio::new)
            .ok_or_else(|| {
                format!(
                    "{:?} is not a share from 0 to 1 (0.1 records one trace in ten)",
                    text.trim()
                )
            })
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The sampling decision, made once per span from its parent (or the span it is linked
/// to) and its trace id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sampler {
    parent_based: bool,
    root: Root,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Root {
    On,
    Off,
    /// Record a trace whose id's last eight bytes, read as a number, are below this.
    Below(u64),
}

impl Sampler {
    pub(crate) fn new(kind: SamplerKind, ratio: Ratio) -> Sampler {
        let by_ratio = match ratio.get() {
            r if r >= 1.0 => Root::On,
            r if r <= 0.0 => Root::Off,
            // Exact enough: the share is at most 2^-53 off.
            r => Root::Below((r * u64::MAX as f64) as u64),
        };
        let (parent_based, root) = match kind {
            SamplerKind::AlwaysOn => (false, Root::On),
            SamplerKind::AlwaysOff => (false, Root::Off),
            SamplerKind::TraceIdRatio => (false, by_ratio),
            SamplerKind::ParentBasedAlwaysOn => (true, Root::On),
            SamplerKind::ParentBasedAlwaysOff => (true, Root::Off),
            SamplerKind::ParentBasedTraceIdRatio => (true, by_ratio),
        };
        Sampler { parent_based, root }
    }

    /// Whether a span of `trace_id` under `parent` (or linked to it) is recorded. The
    /// same trace id always gets the same answer, so every replica agrees.
    fn sample(self, parent: Option<SpanContext>, trace_id: &[u8; 16]) -> bool {
        match parent {
            Some(parent) if self.parent_based => parent.sampled,
            _ => match self.root {
                Root::On => true,
                Root::Off => false,
                Root::Below(threshold) => {
                    let mut low = [0u8; 8];
                    low.copy_from_slice(&trace_id[8..]);
                    u64::from_be_bytes(low) < threshold
                }
            },
        }
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new(SamplerKind::default(), Ratio::ONE)
    }
}

/// Read `OTEL_EXPORTER_OTLP_HEADERS`' form: `name=value,name=value`, values
/// percent-encoded (`api-key=abc%20def`). The values come back marked sensitive.
pub fn parse_headers(raw: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let mut headers = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err("headers are written name=value,name=value".to_owned());
        };
        let name = http::HeaderName::try_from(name.trim())
            .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
        let decoded = percent_decode(value.trim())
            .ok_or_else(|| format!("the value of {name} is not percent-encoded text"))?;
        let mut value = http::HeaderValue::try_from(decoded)
            .map_err(|_| format!("the value of {name} is not a header value"))?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let mut byte = [0u8; 1];
            // Either case here (traceparent takes lower case only).
            hex_into(&text.get(i + 1..i + 3)?.to_ascii_lowercase(), &mut byte)?;
            out.push(byte[0]);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl TraceSettings {
    /// Check every value.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(endpoint) = &self.endpoint {
            let uri = endpoint.parse::<http::Uri>().ok();
            check(
                uri.as_ref().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.host().is_some_and(|h| !h.is_empty())
                }),
                "otel.endpoint",
                || format!("{endpoint:?} is not an http(s) URL like http://collector:4318"),
            )?;
            #[cfg(not(feature = "otel"))]
            return Err(InvalidSetting::new(
                "otel.endpoint",
                "this build has no OpenTelemetry export (the `otel` feature)",
            ));
        }
        check(!self.service_name.trim().is_empty(), "otel.service_name", || {
            "must not be empty".into()
        })
    }

    /// Where spans are posted.
    pub fn traces_url(&self) -> Option<String> {
        let endpoint = self.endpoint.as_deref()?.trim_end_matches('/');
        Some(if endpoint.ends_with("/v1/traces") {
            endpoint.to_owned()
        } else {
            format!("{endpoint}/v1/traces")
        })
    }
}

/// The trace a span belongs to and the span itself, as `traceparent` carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanContext {
    /// 16 bytes, not all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, not all zero.
    pub span_id: [u8; 8],
    /// Whether the trace is sampled (`traceparent`'s flag 01).
    pub sampled: bool,
}

impl SpanContext {
    /// Read a W3C `traceparent` (`00-{32 hex}-{16 hex}-{2 hex}`); `None` for anything
    /// else, as the spec says a malformed one is ignored.
    pub fn from_traceparent(value: &str) -> Option<SpanContext> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four parts; a later version may add more, after these.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        hex_into(trace, &mut trace_id)?;
        hex_into(span, &mut span_id)?;
        hex_into(flags, &mut flag)?;
        hex_into(version, &mut [0u8; 1])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(SpanContext {
            trace_id,
            span_id,
            sampled: flag[0] & 1 == 1,
        })
    }

    /// This context as a `traceparent` value.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }
}

fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

/// What a span stands for, as OTLP names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the proxy.
    Internal,
    /// A request the proxy answers (the application's call, a callback).
    Server,
    /// A request the proxy makes (an attempt upstream, a delivery).
    Client,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text (a name the proxy knows costs no allocation).
    Str(std::borrow::Cow<'static, str>),
    /// A whole number.
    Int(i64),
    /// Yes or no.
    Bool(bool),
}

/// A finished span, as the exporter receives it.
#[derive(Clone, Debug)]
pub struct SpanData {
    /// Its context.
    pub context: SpanContext,
    /// The span it is a child of, in the same trace.
    pub parent: Option<[u8; 8]>,
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: SpanKind,
    /// Start, Unix nanoseconds.
    pub start: u64,
    /// End, Unix nanoseconds.
    pub end: u64,
    /// Its attributes, in the order they were set.
    pub attributes: Vec<(&'static str, Value)>,
    /// Spans of other traces it is linked to.
    pub links: Vec<SpanContext>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Where ended spans go: the exporter's queue.
#[derive(Clone, Debug)]
pub(crate) struct Sink {
    pub(crate) queue: tokio::sync::mpsc::Sender<SpanData>,
    pub(crate) dropped: Arc<crate::metrics::Counter>,
}

/// Makes spans; off ([`Tracer::off`], the default) it makes empty ones. Cheap to clone:
/// every clone shares one sampler, so a reload that changes it changes it for all.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    on: Option<Exporting>,
}

#[derive(Clone, Debug)]
struct Exporting {
    sink: Sink,
    sampler: crate::settings::Live<Sampler>,
}

impl Tracer {
    /// A tracer that records nothing.
    pub fn off() -> Tracer {
        Tracer::default()
    }

    /// The exporter's tracer (and the tests').
    #[cfg(any(feature = "otel", test))]
    pub(crate) fn exporting(sink: Sink, sampler: Sampler) -> Tracer {
        Tracer {
            on: Some(Exporting {
                sink,
                sampler: crate::settings::Live::new(sampler),
            }),
        }
    }

    /// Whether spans are recorded.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Sample spans that start from now on with `kind` (and `ratio`, for the
    /// `*traceidratio` samplers): a reload's way in. Nothing for a tracer that is off.
    pub fn set_sampler(&self, kind: SamplerKind, ratio: Ratio) {
        if let Some(on) = &self.on {
            on.sampler.set(Sampler::new(kind, ratio));
        }
    }

    /// Start a span: a child of `parent` if given, else the root of a new trace. One the
    /// sampler leaves out records nothing but still has a context (flag `00`), so what
    /// it leads to is left out too.
    pub fn span(&self, name: &'static str, kind: SpanKind, parent: Option<SpanContext>) -> Span {
        let Some(on) = &self.on else {
            return Span::default();
        };
        let trace_id = parent.map_or_else(random_id, |p| p.trace_id);
        let sampled = on.sampler.with(|sampler| sampler.sample(parent, &trace_id));
        let context = SpanContext {
            trace_id,
            span_id: random_id(),
            sampled,
        };
        if !sampled {
            return Span {
                context: Some(context),
                data: None,
                sink: None,
                undecided: None,
            };
        }
        Span::recording(context, parent.map(|p| p.span_id), name, kind, &on.sink)
    }

    /// Start the root of a new trace that will be linked to another one (a callback's
    /// receipt, to its submission): whether it is recorded is decided at its first
    /// [`link`](Span::link), by the sampled flag of the span it links to (for a
    /// parent-based sampler), or when it ends if it is never linked. Until then it
    /// records, so its context must not be passed on before it is linked.
    pub fn span_to_link(&self, name: &'static str, kind: SpanKind) -> Span {
        let Some(on) = &self.on else {
            return Span::default();
        };
        let context = SpanContext {
            trace_id: random_id(),
            span_id: random_id(),
            sampled: true,
        };
        let mut span = Span::recording(context, None, name, kind, &on.sink);
        span.undecided = Some(on.sampler.with(|sampler| *sampler));
        span
    }

    /// Start the root of a new trace linked to `link` (a delivery, to its submission),
    /// recorded as the span it links to was (for a parent-based sampler).
    pub fn span_linked(&self, name: &'static str, kind: SpanKind, link: Option<SpanContext>) -> Span {
        let mut span = self.span_to_link(name, kind);
        match link {
            Some(link) => span.link(link),
            None => span.decide(None),
        }
        span
    }
}

/// An id of `N` (at most 16) random bytes, never all zero: one draw of the thread's
/// generator, not one per byte.
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let bytes = rand::random::<u128>().to_le_bytes();
        let mut id = [0u8; N];
        id.copy_from_slice(&bytes[..N]);
        if id != [0; N] {
            return id;
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span being recorded; it ends when dropped (or at [`end`](Span::end)). The empty
/// span of a tracer that is off ignores everything, and so does one the sampler left out.
#[derive(Debug, Default)]
pub struct Span {
    /// Kept apart from the data: a span left out by the sampler has a context to pass
    /// on, and no data.
    context: Option<SpanContext>,
    data: Option<Box<SpanData>>,
    sink: Option<Sink>,
    /// The sampler still to decide on it ([`Tracer::span_to_link`]).
    undecided: Option<Sampler>,
}

impl Span {
    fn recording(
        context: SpanContext,
        parent: Option<[u8; 8]>,
        name: &'static str,
        kind: SpanKind,
        sink: &Sink,
    ) -> Span {
        Span {
            context: Some(context),
            data: Some(Box::new(SpanData {
                context,
                parent,
                name,
                kind,
                start: unix_nanos(),
                end: 0,
                attributes: Vec::with_capacity(8),
                links: Vec::new(),
                error: None,
            })),
            sink: Some(sink.clone()),
            undecided: None,
        }
    }

    /// Settle whether it is recorded, as linked to `link` (or as a root).
    fn decide(&mut self, link: Option<SpanContext>) {
        let (Some(sampler), Some(context)) = (self.undecided.take(), self.context.as_mut()) else {
            return;
        };
        if !sampler.sample(link, &context.trace_id) {
            context.sampled = false;
            self.data = None;
            self.sink = None;
        }
    }

    /// Its context, to pass on (`None` when the tracer is off). A span the sampler left
    /// out has one too, not sampled, so what follows it is left out as well.
    pub fn context(&self) -> Option<SpanContext> {
        self.context
    }

    /// Whether it records anything.
    pub fn is_recording(&self) -> bool {
        self.data.is_some()
    }

    /// Set a text attribute.
    pub fn set_str(&mut self, key: &'static str, value: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(data) = &mut self.data {
            data.attributes.push((key, Value::Str(value.into())));
        }
    }

    /// Set a number attribute.
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        if let Some(data) = &mut self.data {
            data.attributes.push((key, Value::Int(value)));
        }
    }

    /// Set a yes-or-no attribute.
    pub fn set_bool(&mut self, key: &'static str, value: bool) {
        if let Some(data) = &mut self.data {
            data.attributes.push((key, Value::Bool(value)));
        }
    }

    /// Set a duration attribute, in milliseconds.
    pub fn set_millis(&mut self, key: &'static str, value: Duration) {
        self.set_int(key, i64::try_from(value.as_millis()).unwrap_or(i64::MAX));
    }

    /// Link it to a span of another trace (the submission a callback belongs to). The
    /// first link of a [`Tracer::span_to_link`] span decides whether it is recorded.
    pub fn link(&mut self, to: SpanContext) {
        self.decide(Some(to));
        if let Some(data) = &mut self.data {
            data.links.push(to);
        }
    }

    /// Mark it failed, saying why.
    pub fn set_error(&mut self, why: impl Into<String>) {
        if let Some(data) = &mut self.data {
            data.error = Some(why.into());
        }
    }

    /// End it now.
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        self.decide(None);
        if let (Some(mut data), Some(sink)) = (self.data.take(), self.sink.take()) {
            data.end = unix_nanos().max(data.start);
            // Never waits: a span that finds the queue full is dropped, and counted.
            if sink.queue.try_send(*data).is_err() {
                sink.dropped.inc();
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
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
        assert!(err.contains("parentbased_always_on"), "{err}");
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
}
