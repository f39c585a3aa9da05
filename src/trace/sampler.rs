//! Which spans are recorded: the standard samplers, decided by a span's parent (or the
//! span it links to) and its trace id.

use super::{ParseError, SpanContext};

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

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        SamplerKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| ParseError::Sampler(text.to_owned()))
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
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        text.parse::<f64>()
            .ok()
            .and_then(Ratio::new)
            .ok_or_else(|| ParseError::Ratio(text.to_owned()))
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
    pub(super) fn sample(self, parent: Option<SpanContext>, trace_id: &[u8; 16]) -> bool {
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
