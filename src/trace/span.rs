//! Spans: the [`Tracer`] that makes them and the [`Span`] a request fills in, queued for
//! the exporter when it ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Ratio, Sampler, SamplerKind, SpanContext};

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
