//! One layer for embedders: rate limit, retry and `callback_url` rewrite, composed in the
//! right order.
//!
//! [`RunwayLayer`] wraps any `Service<http::Request<Body>>` whose response body can be
//! read (the hyper-util legacy client first of all, or a `tower::ServiceBuilder` stack)
//! in, from the outside in:
//!
//! 1. [`RewriteCallback`]: checks the subscriber URL and rewrites `callback_url` once per
//!    request, before anything is sent;
//! 2. [`Retry`]: decides from each attempt's body whether to try again, never resubmitting
//!    a task that may have been accepted;
//! 3. [`RateLimit`]: every attempt waits for its own permit, so retries respect the limit.
//!
//! `runway-proxy serve` uses exactly this layer around its forwarding client, so the
//! sidecar and an embedding application behave the same.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use runway_proxy::body::Body;
//! use runway_proxy::callback::Keyring;
//! use runway_proxy::limit::{LimitSettings, QuotaSpec};
//! use runway_proxy::retry::RetrySettings;
//! use runway_proxy::RunwayLayer;
//!
//! let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
//!     .build_http::<Body>();
//! let mut limits = LimitSettings::default();
//! limits.submit = Some(QuotaSpec::parse("5/s").unwrap());
//! limits.max_concurrency = Some(5);
//! let mut retry = RetrySettings::default();
//! retry.max_attempts = 4;
//! let layer = RunwayLayer::new()
//!     .rate_limit(limits)
//!     .retry(retry)
//!     .callbacks("https://hooks.example.com", Keyring::parse("1:a-secret-of-at-least-thirty-two-bytes").unwrap());
//! let runway = tower::ServiceBuilder::new().layer(layer).service(client);
//! # let _ = runway;
//! ```

use std::sync::Arc;

use tower::Layer;

use crate::callback::{CallbackRewriter, Keyring, RewriteCallback, TargetPolicy};
use crate::limit::{LimitSettings, RateLimit, RateLimitLayer};
use crate::metrics::Metrics;
use crate::retry::{Retry, RetryLayer, RetrySettings};

/// The service [`RunwayLayer`] makes around `S`.
pub type Runway<S> = RewriteCallback<Retry<RateLimit<S>>>;

/// Rate limit, retry and `callback_url` rewrite in one layer. See the module docs.
///
/// Clones, and every service the layer makes, share one retry budget and one set of rate
/// limits.
#[derive(Clone, Debug)]
pub struct RunwayLayer {
    retry_settings: RetrySettings,
    limit_settings: LimitSettings,
    retry: RetryLayer,
    limit: RateLimitLayer,
    callbacks: Option<CallbackRewriter>,
    metrics: Option<Arc<Metrics>>,
}

impl Default for RunwayLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RunwayLayer {
    /// Default retries, no rate limits, no callback rewriting.
    pub fn new() -> Self {
        RunwayLayer {
            retry_settings: RetrySettings::default(),
            limit_settings: LimitSettings::default(),
            retry: RetryLayer::new(),
            limit: RateLimitLayer::new(),
            callbacks: None,
            metrics: None,
        }
    }

    /// Retry settings and rules.
    pub fn retry(mut self, settings: RetrySettings) -> Self {
        self.retry_settings = settings;
        self.rebuild()
    }

    /// Rate limits and concurrency caps.
    pub fn rate_limit(mut self, settings: LimitSettings) -> Self {
        self.limit_settings = settings;
        self.rebuild()
    }

    /// Rewrite `callback_url` in submissions to `{public_url}/hooks/runway/{token}`, with
    /// tokens minted from `keys` (mount the [`WebhookReceiver`](crate::relay::WebhookReceiver)
    /// there with the same keys).
    pub fn callbacks(mut self, public_url: &str, keys: impl Into<Arc<Keyring>>) -> Self {
        self.callbacks = Some(CallbackRewriter::new(public_url, keys.into()));
        self
    }

    /// Rewrite `callback_url` with this rewriter (to share its keyring, or set its policy).
    pub fn callback_rewriter(mut self, rewriter: CallbackRewriter) -> Self {
        self.callbacks = Some(rewriter);
        self
    }

    /// Which subscriber URLs are accepted (after [`callbacks`](Self::callbacks)).
    pub fn callback_policy(mut self, policy: TargetPolicy) -> Self {
        self.callbacks = self.callbacks.map(|c| c.policy(policy));
        self
    }

    /// Record retries, waits and refusals in `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self.rebuild()
    }

    fn rebuild(mut self) -> Self {
        let mut retry = RetryLayer::from_settings(self.retry_settings.clone());
        let mut limit = RateLimitLayer::from_settings(self.limit_settings.clone());
        if let Some(metrics) = &self.metrics {
            retry = retry.metrics(Arc::clone(metrics));
            limit = limit.metrics(Arc::clone(metrics));
        }
        self.retry = retry;
        self.limit = limit;
        self
    }
}

impl<S> Layer<S> for RunwayLayer {
    type Service = Runway<S>;

    fn layer(&self, inner: S) -> Runway<S> {
        let retrying = self.retry.layer(self.limit.layer(inner));
        match &self.callbacks {
            Some(rewriter) => rewriter.layer(retrying),
            None => RewriteCallback::passthrough(retrying),
        }
    }
}
