//! Retry middleware that decides from the response body, and never resubmits a paid task
//! that may have been accepted.
//!
//! CometAPI often reports an error inside an HTTP 200 (`{"code": 500, "msg": "system
//! busy"}`), so [`Retry`] reads each attempt's outcome from the transport result, the
//! HTTP status and the envelope's `code` and `msg` (the body is collected up to a bound),
//! and looks it up in a rule table ([`Rules`]): success, retry or fail. The semantics
//! follow Envoy's router retries, keyed on the body:
//!
//! - **Submissions** (`POST /runway/pro/*`, task-creating `POST /runwayml/v1/*`) are
//!   retried only when the outcome proves the task was not created: a connect failure
//!   (nothing was sent) or a response whose rule says retry. A timeout or a reset after
//!   the request was written leaves the outcome unknown: the client gets a 504 envelope
//!   saying so, and the task is not submitted again (unless turned on per route class).
//! - **Reads** (`POST /runway/feed`, `GET /runwayml/v1/tasks/{id}`) retry on every
//!   transient fault, and on `task_not_exist` shortly after creation.
//! - **Other** requests are retried only on a connect failure, only for idempotent
//!   methods without a body.
//!
//! Waits use full-jitter exponential backoff and honour `Retry-After` (up to a cap). Each
//! attempt has a timeout, all attempts and waits share one deadline, and a retry budget
//! shared by every clone of the layer keeps retries to a fraction of recent requests.
//! The client gets the upstream's last response unchanged, plus `x-runway-proxy-attempts`.
//! Compose a rate limiter *inside* this layer, so each attempt takes its own permit.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use runway_proxy::retry::RetryLayer;
//! use tower::ServiceBuilder;
//!
//! # fn wrap(client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, runway_proxy::body::Body>)
//! #     -> Result<(), runway_proxy::settings::InvalidSetting> {
//! let retry = RetryLayer::builder()
//!     .max_attempts(5)
//!     .backoff(Duration::from_secs(1), Duration::from_secs(30))
//!     .deadline(Duration::from_secs(120))
//!     .build()?; // the settings are checked, the shared retry budget made once
//! let retrying = ServiceBuilder::new().layer(retry).service(client);
//! # let _ = retrying;
//! # Ok(())
//! # }
//! ```

mod attempts;
mod backoff;
mod layer;
mod metrics;
mod policy;
mod service;
#[cfg(test)]
mod tests;

use std::time::Duration;

use http::HeaderName;

pub use backoff::Backoff;
pub use layer::{RetryLayer, RetryLayerBuilder};
pub use metrics::{RetryMetrics, RetryOutcome};
pub use policy::{
    Action, CLIENT_ERRORS, RETRYABLE, Rule, RuleError, RuleSpec, Rules, Verdict, default_rules,
};
pub use service::{ResponseFuture, Retry};

use crate::route::RouteClass;
use crate::settings::{InvalidSetting, at_least_one_byte, check, longer_than_zero, parse, settings, show};

/// Response header with the number of attempts made.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-runway-proxy-attempts");
/// Response header saying why retrying stopped while the last outcome still called for
/// a retry: `max-attempts`, `deadline`, `budget` or `not-replayable`.
pub const STOPPED_HEADER: HeaderName = HeaderName::from_static("x-runway-proxy-retry-stopped");

/// The message of the error returned when a submission's outcome is unknown.
pub const OUTCOME_UNKNOWN: &str =
    "outcome unknown: the upstream may have created this task; check the feed before resubmitting";

settings! {
    /// Settings of the retry middleware (`[retry]` in the config file), with CometAPI's
    /// recommended defaults. Field names are the config keys.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct RetrySettings in retry {
        /// Attempts in all, counting the first, from 1 to 100 (default 5).
        pub max_attempts: u32 = 5,
        /// Backoff base: the first retry waits up to this long (default 1 s).
        pub base_delay: Duration = Duration::from_secs(1),
        /// Backoff cap, at least `base_delay` (default 30 s).
        pub max_delay: Duration = Duration::from_secs(30),
        /// One deadline covering every attempt and wait (default 2 min).
        pub deadline: Duration = Duration::from_secs(120),
        /// Time allowed for one attempt, response body included (default 60 s).
        pub attempt_timeout: Duration = Duration::from_secs(60),
        /// The most a `Retry-After` may make us wait (default 60 s).
        pub retry_after_cap: Duration = Duration::from_secs(60),
        /// Retries may add at most this percentage of recent requests, 0 to 1000 (default 20).
        pub budget_percent: f32 = 20.0,
        /// ...plus this many retries per second regardless (default 1).
        pub budget_min_per_sec: u32 = 1,
        /// Largest request or response body buffered to replay or classify (default 16 MiB: a 5 MB image as a base64 data URI fits).
        pub body_limit: usize = 16 * 1024 * 1024,
        /// Route classes on which a timeout or reset after the request was written is retried
        /// (default: reads only; a submission so retried may be paid for twice).
        pub unknown_outcome: Vec<RouteClass> = vec![RouteClass::Read],
        /// Answer a failure reported inside an HTTP 200 with the HTTP status of its envelope
        /// code (502 when that is not an HTTP error status), body unchanged, so HTTP clients
        /// raise an error (default off: the wire stays CometAPI's).
        pub surface_envelope_errors: bool = false,
        /// The rule table.
        pub rules: Rules = Rules::default(),
    }
    rows {
        max_attempts: live, under Retry,
            env: "RUNWAY_PROXY_MAX_ATTEMPTS",
            flag: "max-attempts",
            doc: "Attempts per request in all, counting the first.",
            parse: parse::number, show: show::plain;
        base_delay: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_BASE_DELAY",
            flag: "retry-base-delay",
            doc: "Backoff base: the first retry waits a random time up to this.",
            parse: parse::positive_duration, show: show::duration;
        max_delay: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_MAX_DELAY",
            flag: "retry-max-delay",
            doc: "Backoff cap: no backoff wait is longer.",
            parse: parse::positive_duration, show: show::duration;
        deadline: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_DEADLINE",
            flag: "retry-deadline",
            doc: "One deadline for all attempts and waits of a request.",
            parse: parse::positive_duration, show: show::duration;
        attempt_timeout: live, under Retry,
            env: "RUNWAY_PROXY_ATTEMPT_TIMEOUT",
            flag: "attempt-timeout",
            doc: "Time allowed for one attempt, response body included.",
            parse: parse::positive_duration, show: show::duration;
        retry_after_cap: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_AFTER_CAP",
            flag: "retry-after-cap",
            doc: "The longest wait a Retry-After header can ask for.",
            parse: parse::duration, show: show::duration;
        budget_percent: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_BUDGET_PERCENT",
            flag: "retry-budget-percent",
            doc: "Retries may add at most this percentage of recent requests...",
            parse: parse::percentage, show: show::plain;
        budget_min_per_sec: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_BUDGET_MIN_PER_SEC",
            flag: "retry-budget-min-per-sec",
            doc: "...plus this many retries per second (a floor for quiet periods).",
            parse: parse::number, show: show::plain;
        body_limit: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_BODY_LIMIT",
            flag: "retry-body-limit",
            doc: "Largest body buffered to replay a request or classify a response.",
            parse: parse::size, show: show::size;
        unknown_outcome: live, under Retry,
            env: "RUNWAY_PROXY_RETRY_UNKNOWN_OUTCOME",
            flag: "retry-unknown-outcome",
            doc: "Route classes retried after a timeout or reset once the request was written.",
            parse: parse::classes, show: show::classes;
        surface_envelope_errors: live, under Retry,
            env: "RUNWAY_PROXY_SURFACE_ENVELOPE_ERRORS",
            flag: "surface-envelope-errors",
            doc: "Answer a failure inside an HTTP 200 with the HTTP status of its code (502 if none), so SDKs raise.",
            parse: parse::boolean, show: show::plain;
    }
}

impl RetrySettings {
    /// Check every value and their relations; the config and [`RetryLayerBuilder::build`]
    /// both call this.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(
            (1..=100).contains(&self.max_attempts),
            "retry.max_attempts",
            || format!("{} is not a number of attempts from 1 to 100", self.max_attempts),
        )?;
        for (key, value) in [
            ("retry.base_delay", self.base_delay),
            ("retry.max_delay", self.max_delay),
            ("retry.deadline", self.deadline),
            ("retry.attempt_timeout", self.attempt_timeout),
        ] {
            longer_than_zero(value, key)?;
        }
        check(self.base_delay <= self.max_delay, "retry.base_delay", || {
            format!(
                "{} is longer than retry.max_delay ({}), the cap on every backoff wait",
                crate::duration::format(self.base_delay),
                crate::duration::format(self.max_delay)
            )
        })?;
        check(
            (0.0..=1000.0).contains(&self.budget_percent),
            "retry.budget_percent",
            || format!("{} is not a percentage from 0 to 1000", self.budget_percent),
        )?;
        check(
            self.budget_min_per_sec <= 1_000_000,
            "retry.budget_min_per_sec",
            || {
                format!(
                    "{} is more than 1000000 retries per second",
                    self.budget_min_per_sec
                )
            },
        )?;
        at_least_one_byte(self.body_limit, "retry.body_limit")
    }
}
