//! The settings listed under "Limits" in `serve --help` and `config check`.

use super::super::values::*;
use super::*;
use crate::duration;
use crate::limit::parse_optional;

/// Under "Limits".
pub(super) const KEYS: &[Key] = &[
    key! {
        limit.rate, live,
        env: "RUNWAY_PROXY_RATE_LIMIT",
        flag: "rate-limit",
        doc: "Quota for all outbound calls, like 5/s, 300/min or \"5/s burst 10\".",
        parse: parse_optional,
        show: |c| show_optional(c.limit.rate),
    },
    key! {
        limit.rate_per_key, live,
        env: "RUNWAY_PROXY_RATE_LIMIT_PER_KEY",
        flag: "rate-limit-per-key",
        doc: "Quota for each API key (bearer token, kept only as a hash).",
        parse: parse_optional,
        show: |c| show_optional(c.limit.rate_per_key),
    },
    key! {
        limit.submit_rate, live,
        env: "RUNWAY_PROXY_SUBMIT_RATE_LIMIT",
        flag: "submit-rate-limit",
        doc: "Quota for submissions (POST /runway/pro/*, task-creating /runwayml/v1/*).",
        parse: parse_optional,
        show: |c| show_optional(c.limit.submit_rate),
    },
    key! {
        limit.read_rate, live,
        env: "RUNWAY_PROXY_READ_RATE_LIMIT",
        flag: "read-rate-limit",
        doc: "Quota for reads (POST /runway/feed, GET /runwayml/v1/tasks/{id}).",
        parse: parse_optional,
        show: |c| show_optional(c.limit.read_rate),
    },
    key! {
        limit.max_concurrency, live,
        env: "RUNWAY_PROXY_MAX_CONCURRENCY",
        flag: "max-concurrency",
        doc: "Most requests in flight to the upstream at once (CometAPI's guide uses 5).",
        parse: optional_count,
        show: |c| show_optional(c.limit.max_concurrency),
    },
    key! {
        limit.max_concurrency_per_key, live,
        env: "RUNWAY_PROXY_MAX_CONCURRENCY_PER_KEY",
        flag: "max-concurrency-per-key",
        doc: "Most requests in flight to the upstream at once for one API key.",
        parse: optional_count,
        show: |c| show_optional(c.limit.max_concurrency_per_key),
    },
    key! {
        limit.max_wait, live,
        env: "RUNWAY_PROXY_MAX_WAIT",
        flag: "max-wait",
        doc: "Longest a request waits for its turn before a 429.",
        parse: duration::parse,
        show: |c| duration::format(c.limit.max_wait),
    },
    key! {
        limit.max_queue, live,
        env: "RUNWAY_PROXY_MAX_QUEUE",
        flag: "max-queue",
        doc: "Most requests waiting for their turn at once; more get a 429.",
        set: |c, raw| {
            c.limit.max_queue = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.limit.max_queue.to_string(),
    },
    key! {
        limit.max_keys, live,
        env: "RUNWAY_PROXY_RATE_LIMIT_MAX_KEYS",
        flag: "rate-limit-max-keys",
        doc: "Most API keys whose per-key state is kept (idle keys are pruned).",
        set: |c, raw| {
            c.limit.max_keys = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.limit.max_keys.to_string(),
    },
    key! {
        guard.max_tasks_in_flight, live,
        env: "RUNWAY_PROXY_MAX_TASKS_IN_FLIGHT",
        flag: "max-tasks-in-flight",
        doc: "Most tasks unfinished at once (from submission until the watch list sees their end); more wait their turn.",
        parse: optional_count,
        show: |c| show_optional(c.guard.max_tasks_in_flight),
    },
    key! {
        guard.max_tasks_in_flight_per_key, live,
        env: "RUNWAY_PROXY_MAX_TASKS_IN_FLIGHT_PER_KEY",
        flag: "max-tasks-in-flight-per-key",
        doc: "Most tasks unfinished at once for one API key (or label).",
        parse: optional_count,
        show: |c| show_optional(c.guard.max_tasks_in_flight_per_key),
    },
    key! {
        guard.daily_task_budget, live,
        env: "RUNWAY_PROXY_DAILY_TASK_BUDGET",
        flag: "daily-task-budget",
        doc: "Most tasks submitted per budget window, in all; past it submissions are refused before sending.",
        parse: optional_amount,
        show: |c| show_optional(c.guard.daily_task_budget),
    },
    key! {
        guard.daily_point_budget, live,
        env: "RUNWAY_PROXY_DAILY_POINT_BUDGET",
        flag: "daily-point-budget",
        doc: "Most points (charged less refunded, as CometAPI reports them) per budget window, in all.",
        parse: optional_amount,
        show: |c| show_optional(c.guard.daily_point_budget),
    },
    key! {
        guard.daily_task_budget_per_key, live,
        env: "RUNWAY_PROXY_DAILY_TASK_BUDGET_PER_KEY",
        flag: "daily-task-budget-per-key",
        doc: "Most tasks per budget window for one API key (or label); [[guard.keys]] overrides it per key.",
        parse: optional_amount,
        show: |c| show_optional(c.guard.daily_task_budget_per_key),
    },
    key! {
        guard.daily_point_budget_per_key, live,
        env: "RUNWAY_PROXY_DAILY_POINT_BUDGET_PER_KEY",
        flag: "daily-point-budget-per-key",
        doc: "Most points per budget window for one API key (or label); [[guard.keys]] overrides it per key.",
        parse: optional_amount,
        show: |c| show_optional(c.guard.daily_point_budget_per_key),
    },
    key! {
        guard.budget_window, live,
        env: "RUNWAY_PROXY_BUDGET_WINDOW",
        flag: "budget-window",
        doc: "The budgets' rolling window.",
        parse: positive_duration,
        show: |c| duration::format(c.guard.budget_window),
    },
];
