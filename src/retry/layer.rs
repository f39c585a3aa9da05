//! [`RetryLayer`] and its builder: settings checked, shared state made once.

use std::sync::Arc;
use std::time::Duration;

use tower::Layer;
use tower::retry::budget::TpsBudget;

use super::{Retry, RetryMetrics, RetrySettings, Rules};
use crate::route::RouteClass;
use crate::settings::setters;
use crate::settings::{InvalidSetting, Live};
use crate::trace::Tracer;

/// How far back the retry budget remembers requests.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// What every service made by one [`RetryLayer`] (and its clones) shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) settings: RetrySettings,
    pub(super) budget: Arc<TpsBudget>,
    pub(super) metrics: Arc<RetryMetrics>,
    /// Records a span per attempt (a child of the request's).
    pub(super) tracer: Tracer,
}

/// Applies [`Retry`] to a service. Clones, and every service it makes, share one retry
/// budget and one set of metrics, and see the settings [`reload`](RetryLayer::reload)
/// puts in force.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    live: Live<Shared>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// A layer with the default settings.
    pub fn new() -> Self {
        // The defaults are valid (a unit test says so).
        Self::from_valid(RetrySettings::default(), Tracer::off())
    }

    /// A builder starting from the default settings.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            settings: RetrySettings::default(),
            tracer: Tracer::off(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> RetrySettings {
        self.live.get().settings.clone()
    }

    /// Check `settings` and put them in force for every request that starts from now on
    /// (one in progress finishes under the settings it started with). The retry budget
    /// carries over unless its own settings changed; the metrics always do.
    pub fn reload(&self, settings: RetrySettings) -> Result<(), InvalidSetting> {
        settings.validate()?;
        let current = self.live.get();
        let same_budget = current.settings.budget_percent == settings.budget_percent
            && current.settings.budget_min_per_sec == settings.budget_min_per_sec;
        let budget = if same_budget {
            Arc::clone(&current.budget)
        } else {
            Arc::new(budget_for(&settings))
        };
        current.metrics.declare_reasons(&settings.rules);
        self.live.set(Shared {
            settings,
            budget,
            metrics: Arc::clone(&current.metrics),
            tracer: current.tracer.clone(),
        });
        Ok(())
    }

    /// What the services of this layer record.
    pub fn metrics(&self) -> Arc<RetryMetrics> {
        Arc::clone(&self.live.get().metrics)
    }

    fn from_valid(settings: RetrySettings, tracer: Tracer) -> Self {
        let budget = Arc::new(budget_for(&settings));
        let metrics = RetryMetrics::default();
        metrics.declare_reasons(&settings.rules);
        RetryLayer {
            live: Live::new(Shared {
                settings,
                budget,
                metrics: Arc::new(metrics),
                tracer,
            }),
        }
    }
}

fn budget_for(settings: &RetrySettings) -> TpsBudget {
    TpsBudget::new(
        BUDGET_WINDOW,
        settings.budget_min_per_sec,
        settings.budget_percent / 100.0,
    )
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.live.clone())
    }
}

/// Collects the settings of a [`RetryLayer`]; [`build`](Self::build) checks them and makes
/// the shared state.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until built"]
pub struct RetryLayerBuilder {
    settings: RetrySettings,
    tracer: Tracer,
}

impl RetryLayerBuilder {
    setters! {
        /// Record a span for each attempt, a child of the request's span (the
        /// [`SpanContext`](crate::trace::SpanContext) in its extensions, or its
        /// `traceparent`), and send the attempt's `traceparent` upstream.
        tracer(tracer: Tracer) => tracer;
        /// Start from these settings (the config's `[retry]`, say) instead of the defaults.
        settings(settings: RetrySettings) => settings;
        /// Attempts in all, counting the first.
        max_attempts(attempts: u32) => settings.max_attempts;
    }

    /// Backoff base and cap.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.base_delay = base;
        self.settings.max_delay = max;
        self
    }

    setters! {
        /// One deadline covering every attempt and wait.
        deadline(deadline: Duration) => settings.deadline;
        /// Time allowed for one attempt.
        attempt_timeout(timeout: Duration) => settings.attempt_timeout;
        /// The longest wait a `Retry-After` header can ask for.
        retry_after_cap(cap: Duration) => settings.retry_after_cap;
    }

    /// Retries may add at most `percent` of recent requests plus `min_per_sec` per second.
    pub fn budget(mut self, percent: f32, min_per_sec: u32) -> Self {
        self.settings.budget_percent = percent;
        self.settings.budget_min_per_sec = min_per_sec;
        self
    }

    /// Largest body buffered to replay a request or classify a response.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.settings.body_limit = limit;
        self
    }

    /// Retry (or not) a timeout or reset after the request was written, for `class`.
    pub fn unknown_outcome(mut self, class: RouteClass, retry: bool) -> Self {
        self.settings.unknown_outcome.retain(|c| *c != class);
        if retry {
            self.settings.unknown_outcome.push(class);
        }
        self
    }

    setters! {
        /// Answer failures reported inside an HTTP 200 with the HTTP status of their code.
        surface_envelope_errors(surface: bool) => settings.surface_envelope_errors;
        /// The rule table.
        rules(rules: Rules) => settings.rules;
    }

    /// Check the settings and make the layer (its retry budget and metrics, once).
    pub fn build(self) -> Result<RetryLayer, InvalidSetting> {
        self.settings.validate()?;
        Ok(RetryLayer::from_valid(self.settings, self.tracer))
    }
}
