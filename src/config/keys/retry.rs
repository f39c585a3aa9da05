//! The settings listed under "Retry" in `serve --help` and `config check`.

use super::super::values::*;
use super::*;
use crate::duration;

/// Under "Retry".
pub(super) const KEYS: &[Key] = &[
    key! {
        retry.max_attempts, live,
        env: "RUNWAY_PROXY_MAX_ATTEMPTS",
        flag: "max-attempts",
        doc: "Attempts per request in all, counting the first.",
        parse: number,
        show: |c| c.retry.max_attempts.to_string(),
    },
    key! {
        retry.base_delay, live,
        env: "RUNWAY_PROXY_RETRY_BASE_DELAY",
        flag: "retry-base-delay",
        doc: "Backoff base: the first retry waits a random time up to this.",
        parse: positive_duration,
        show: |c| duration::format(c.retry.base_delay),
    },
    key! {
        retry.max_delay, live,
        env: "RUNWAY_PROXY_RETRY_MAX_DELAY",
        flag: "retry-max-delay",
        doc: "Backoff cap: no backoff wait is longer.",
        parse: positive_duration,
        show: |c| duration::format(c.retry.max_delay),
    },
    key! {
        retry.deadline, live,
        env: "RUNWAY_PROXY_RETRY_DEADLINE",
        flag: "retry-deadline",
        doc: "One deadline for all attempts and waits of a request.",
        parse: positive_duration,
        show: |c| duration::format(c.retry.deadline),
    },
    key! {
        retry.attempt_timeout, live,
        env: "RUNWAY_PROXY_ATTEMPT_TIMEOUT",
        flag: "attempt-timeout",
        doc: "Time allowed for one attempt, response body included.",
        parse: positive_duration,
        show: |c| duration::format(c.retry.attempt_timeout),
    },
    key! {
        retry.retry_after_cap, live,
        env: "RUNWAY_PROXY_RETRY_AFTER_CAP",
        flag: "retry-after-cap",
        doc: "The longest wait a Retry-After header can ask for.",
        parse: duration::parse,
        show: |c| duration::format(c.retry.retry_after_cap),
    },
    key! {
        retry.budget_percent, live,
        env: "RUNWAY_PROXY_RETRY_BUDGET_PERCENT",
        flag: "retry-budget-percent",
        doc: "Retries may add at most this percentage of recent requests...",
        parse: percentage,
        show: |c| c.retry.budget_percent.to_string(),
    },
    key! {
        retry.budget_min_per_sec, live,
        env: "RUNWAY_PROXY_RETRY_BUDGET_MIN_PER_SEC",
        flag: "retry-budget-min-per-sec",
        doc: "...plus this many retries per second (a floor for quiet periods).",
        parse: number,
        show: |c| c.retry.budget_min_per_sec.to_string(),
    },
    key! {
        retry.body_limit, live,
        env: "RUNWAY_PROXY_RETRY_BODY_LIMIT",
        flag: "retry-body-limit",
        doc: "Largest body buffered to replay a request or classify a response.",
        parse: size,
        show: |c| show_size(c.retry.body_limit),
    },
    key! {
        retry.unknown_outcome, live,
        env: "RUNWAY_PROXY_RETRY_UNKNOWN_OUTCOME",
        flag: "retry-unknown-outcome",
        doc: "Route classes retried after a timeout or reset once the request was written.",
        parse: classes,
        show: |c| show_classes(&c.retry.unknown_outcome),
    },
    key! {
        retry.surface_envelope_errors, live,
        env: "RUNWAY_PROXY_SURFACE_ENVELOPE_ERRORS",
        flag: "surface-envelope-errors",
        doc: "Answer a failure inside an HTTP 200 with the HTTP status of its code (502 if none), so SDKs raise.",
        parse: boolean,
        show: |c| c.retry.surface_envelope_errors.to_string(),
    },
];
