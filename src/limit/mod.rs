//! Outbound rate limiting: calls wait their turn, within bounds, per key and per route.
//!
//! [`RateLimit`] holds each request until every quota that applies to it allows it, then
//! until a concurrency slot is free, then sends it on. Quotas are GCRA (`governor`):
//! global, per API key (keyed by a hash of the bearer token, never the token), and per
//! route class (submissions, reads). A request over quota *waits* (up to `max_wait`, with
//! at most `max_queue` requests waiting at once); past either bound it gets
//! `429 {"code":429,"msg":"rate limited by runway-proxy: ...","data":null}` with a
//! `Retry-After` that says when a permit will be free.
//!
//! Shared quotas (global, per class) queue their waiters in arrival order: the head of
//! the line sleeps until GCRA allows it (with governor's jitter) while the rest wait
//! behind it, so waiters don't wake in a herd. Per-key quotas are checked first, so one
//! key waiting on its own quota never holds up another key.
//!
//! Put this layer *inside* the retry layer: every attempt then takes its own permit, and
//! retries respect the limit.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use runway_proxy::limit::RateLimitLayer;
//! use runway_proxy::retry::RetryLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let limit = RateLimitLayer::builder()
//!     .rate("5/s".parse()?)
//!     .rate_per_key("300/min burst 10".parse()?)
//!     .max_concurrency(5)
//!     .max_wait(Duration::from_secs(30))
//!     .build()?; // the settings are checked, the limiter state made once
//! let stack = tower::ServiceBuilder::new()
//!     .layer(RetryLayer::new()) // outside: each attempt passes the limiter
//!     .layer(limit);
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

mod gate;
mod layer;
mod metrics;
mod quota;
mod service;
#[cfg(feature = "redis")]
mod shared;
#[cfg(test)]
mod tests;
mod wait;

use std::time::Duration;

pub use layer::{RateLimitLayer, RateLimitLayerBuilder};
pub use metrics::LimitMetrics;
pub use quota::{QuotaError, QuotaSpec, parse_optional};
pub use service::{RateLimit, ResponseFuture};
#[cfg(feature = "redis")]
pub use shared::{SharedDecision, SharedLimitError, SharedLimits};

pub use crate::settings::ServiceUrl;
use crate::settings::{InvalidSetting, ValueError, at_least_one, check, parse, settings, show};

/// How long a request may wait for its turn, and how many may wait at once: the bounds
/// the rate limiter keeps, handed as one value to the layers whose waits share them (the
/// task guard's, for a slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitBounds {
    /// Longest wait (`limit.max_wait`).
    pub max_wait: Duration,
    /// Most waiting at once (`limit.max_queue`).
    pub max_queue: usize,
}

impl Default for WaitBounds {
    fn default() -> Self {
        LimitSettings::default().wait_bounds()
    }
}

settings! {
    /// Settings of the rate limiter (`[limit]` in the config file). Every quota is optional;
    /// unset means unlimited. Field names are the config keys.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct LimitSettings in limit {
        /// One quota for all requests.
        pub rate: Option<QuotaSpec> = None,
        /// A quota for each API key (bearer token).
        pub rate_per_key: Option<QuotaSpec> = None,
        /// A quota for submissions.
        pub submit_rate: Option<QuotaSpec> = None,
        /// A quota for reads.
        pub read_rate: Option<QuotaSpec> = None,
        /// Most requests in flight to the upstream at once.
        pub max_concurrency: Option<u32> = None,
        /// Most requests in flight to the upstream at once for one API key.
        pub max_concurrency_per_key: Option<u32> = None,
        /// Longest a request waits for its turn (default 30 s).
        pub max_wait: Duration = Duration::from_secs(30),
        /// Most requests waiting at once (default 1024).
        pub max_queue: usize = 1024,
        /// Most API keys whose state is kept (default 10,000).
        pub max_keys: usize = 10_000,
        /// A wait longer than this is logged (default 1 s; not a config key).
        pub slow_wait: Duration = Duration::from_secs(1),
        /// Keep the rate quotas in this Redis, shared by every replica that names it (needs
        /// the `redis` feature). Unset: in this process's memory.
        pub redis_url: Option<ServiceUrl> = None,
        /// What to do when the Redis of `redis_url` cannot be reached (default: fall back to
        /// this process's own limiter).
        pub redis_fallback: SharedFallback = SharedFallback::Local,
    }
    rows {
        rate: live, under Limits,
            env: "RUNWAY_PROXY_RATE_LIMIT",
            flag: "rate-limit",
            doc: "Quota for all outbound calls, like 5/s, 300/min or \"5/s burst 10\".",
            parse: quota::parse_optional, show: show::optional;
        rate_per_key: live, under Limits,
            env: "RUNWAY_PROXY_RATE_LIMIT_PER_KEY",
            flag: "rate-limit-per-key",
            doc: "Quota for each API key (bearer token, kept only as a hash).",
            parse: quota::parse_optional, show: show::optional;
        submit_rate: live, under Limits,
            env: "RUNWAY_PROXY_SUBMIT_RATE_LIMIT",
            flag: "submit-rate-limit",
            doc: "Quota for submissions (POST /runway/pro/*, task-creating /runwayml/v1/*).",
            parse: quota::parse_optional, show: show::optional;
        read_rate: live, under Limits,
            env: "RUNWAY_PROXY_READ_RATE_LIMIT",
            flag: "read-rate-limit",
            doc: "Quota for reads (POST /runway/feed, GET /runwayml/v1/tasks/{id}).",
            parse: quota::parse_optional, show: show::optional;
        max_concurrency: live, under Limits,
            env: "RUNWAY_PROXY_MAX_CONCURRENCY",
            flag: "max-concurrency",
            doc: "Most requests in flight to the upstream at once (CometAPI's guide uses 5).",
            parse: parse::optional_count, show: show::optional;
        max_concurrency_per_key: live, under Limits,
            env: "RUNWAY_PROXY_MAX_CONCURRENCY_PER_KEY",
            flag: "max-concurrency-per-key",
            doc: "Most requests in flight to the upstream at once for one API key.",
            parse: parse::optional_count, show: show::optional;
        max_wait: live, under Limits,
            env: "RUNWAY_PROXY_MAX_WAIT",
            flag: "max-wait",
            doc: "Longest a request waits for its turn before a 429.",
            parse: parse::duration, show: show::duration;
        max_queue: live, under Limits,
            env: "RUNWAY_PROXY_MAX_QUEUE",
            flag: "max-queue",
            doc: "Most requests waiting for their turn at once; more get a 429.",
            parse: parse::count, show: show::plain;
        max_keys: live, under Limits,
            env: "RUNWAY_PROXY_RATE_LIMIT_MAX_KEYS",
            flag: "rate-limit-max-keys",
            doc: "Most API keys whose per-key state is kept (idle keys are pruned).",
            parse: parse::count, show: show::plain;
        redis_url: restart, under Stores,
            env: "RUNWAY_PROXY_REDIS_URL",
            flag: "redis-url",
            doc: "Redis that keeps the rate quotas, shared by every replica that names it (none: in memory).",
            parse: parse::service_url, show: show::service_url;
        redis_fallback: restart, under Stores,
            env: "RUNWAY_PROXY_REDIS_FALLBACK",
            flag: "redis-fallback",
            doc: "When that Redis is unreachable: local (this process's own limiter, with a warning) or refuse (503).",
            parse: parse::parsed, show: show::plain;
    }
}

/// What the limiter does when its shared store (Redis) does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SharedFallback {
    /// Decide with this process's own limiter (each replica then allows the whole quota),
    /// with a warning and a metric, until Redis answers again.
    #[default]
    Local,
    /// Refuse with a 503 that tells clients to come back, until Redis answers again.
    Refuse,
}

impl SharedFallback {
    /// The config value: `local` or `refuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedFallback::Local => "local",
            SharedFallback::Refuse => "refuse",
        }
    }
}

impl std::str::FromStr for SharedFallback {
    type Err = ValueError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim() {
            "local" => Ok(SharedFallback::Local),
            "refuse" => Ok(SharedFallback::Refuse),
            other => Err(ValueError::Form(format!("{other:?} is not local or refuse"))),
        }
    }
}

impl std::fmt::Display for SharedFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LimitSettings {
    /// The bounds of a wait for a turn.
    pub fn wait_bounds(&self) -> WaitBounds {
        WaitBounds {
            max_wait: self.max_wait,
            max_queue: self.max_queue,
        }
    }

    /// Whether any limit is set at all (if not, the layer only passes requests through).
    pub fn is_unlimited(&self) -> bool {
        self.rate.is_none()
            && self.rate_per_key.is_none()
            && self.submit_rate.is_none()
            && self.read_rate.is_none()
            && self.max_concurrency.is_none()
            && self.max_concurrency_per_key.is_none()
    }

    /// Check every value; the config and [`RateLimitLayerBuilder::build`] both call this.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (key, cap) in [
            ("limit.max_concurrency", self.max_concurrency),
            ("limit.max_concurrency_per_key", self.max_concurrency_per_key),
        ] {
            check(cap != Some(0), key, || {
                "0 lets nothing through; leave it unset for unlimited".into()
            })?;
        }
        at_least_one(self.max_queue, "limit.max_queue")?;
        at_least_one(self.max_keys, "limit.max_keys")?;
        if let Some(url) = &self.redis_url {
            check_redis_url(url)?;
        }
        Ok(())
    }
}

#[cfg(feature = "redis")]
fn check_redis_url(url: &ServiceUrl) -> Result<(), InvalidSetting> {
    // The message never quotes the URL: it may carry a password.
    check(
        redis::Client::open(url.expose()).is_ok(),
        "limit.redis_url",
        || {
            format!(
                "{} is not a Redis URL (redis://[user:password@]host:port/db)",
                url.redacted()
            )
        },
    )
}

#[cfg(not(feature = "redis"))]
fn check_redis_url(_: &ServiceUrl) -> Result<(), InvalidSetting> {
    check(false, "limit.redis_url", || {
        "this build has no Redis support (build with the `redis` feature)".into()
    })
}
