//! Every setting, described once: its config key, environment variable, flag and help,
//! how a value is read into [`Config`] and how the value in force is written back. The
//! CLI builds its flags from this table, the README's table is checked against it, and
//! each default is read off [`Config::default`].

use super::values::*;
use super::{Config, LogFormat, Secret, ValueError};
use crate::callback::Keyring;
use crate::duration;
use crate::limit::parse_optional;
use crate::relay::WebhookSigner;
use crate::settings::ServiceUrl;

/// One configuration setting: a row of [`KEYS`].
#[derive(Clone, Copy)]
pub struct Key {
    /// Key in the TOML file (dotted for a key inside a table, e.g. `retry.max_attempts`).
    pub toml: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Command-line flag, without the leading `--`.
    pub flag: &'static str,
    /// One line describing the setting.
    pub doc: &'static str,
    set: fn(&mut Config, &str) -> Result<(), ValueError>,
    show: fn(&Config) -> String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("toml", &self.toml)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Read `raw` into `config`.
    pub fn set(&self, config: &mut Config, raw: &str) -> Result<(), ValueError> {
        (self.set)(config, raw)
    }

    /// The value `config` holds, written as the file would (`generated` for an unset
    /// secret, never a secret itself).
    pub fn show(&self, config: &Config) -> String {
        (self.show)(config)
    }

    /// The default, as the file would write it.
    pub fn default_value(&self) -> String {
        self.show(&Config::default())
    }

    /// The heading the setting is listed under in `serve --help` and `config check`.
    pub fn heading(&self) -> &'static str {
        heading_of(self.toml)
    }

    /// Whether this is an on/off switch (`--allow-private-callbacks` alone means true).
    pub fn is_switch(&self) -> bool {
        let value = self.default_value();
        value == "false" || value == "true"
    }
}

/// The headings of `serve --help`, in the order it lists them.
pub const HEADINGS: &[&str] = &[
    "Listeners",
    "Upstream",
    "Retry",
    "Limits",
    "Callbacks and relay",
    "Stores",
    "Observability",
];

/// Which heading a key belongs to, by its table (or, for top-level keys, its name).
fn heading_of(toml: &str) -> &'static str {
    if toml.starts_with("limit.redis_") {
        // The quota replicas share is a store, like the outbox's database.
        return "Stores";
    }
    let table = toml.split_once('.').map_or(toml, |(table, _)| table);
    match table {
        "listen" | "threads" | "webhook_listen" | "connections" | "shutdown_grace" => "Listeners",
        "upstream" | "connect_timeout" | "request_timeout" => "Upstream",
        "retry" => "Retry",
        "limit" | "guard" => "Limits",
        "public_url" | "webhook_secret" | "callback" | "delivery" | "watch" => "Callbacks and relay",
        "data_dir" | "database" | "idempotency" => "Stores",
        _ => "Observability",
    }
}

/// A service's URL, or none (`none` or empty). Checked by the settings' `validate`.
fn service_url(raw: &str) -> Option<ServiceUrl> {
    match raw.trim() {
        "" | "none" => None,
        url => Some(ServiceUrl::new(url)),
    }
}

/// A service's URL as the file would write it: without its user and password.
fn show_service_url(url: Option<&ServiceUrl>) -> String {
    url.map_or_else(|| "none".to_owned(), ServiceUrl::redacted)
}

fn generated(secret: &Option<Secret>) -> String {
    match secret {
        Some(_) => "(set)".to_owned(),
        None => "generated".to_owned(),
    }
}

/// Every setting of [`Config`].
pub const KEYS: &[Key] = &[
    Key {
        toml: "listen",
        env: "RUNWAY_PROXY_LISTEN",
        flag: "listen",
        doc: "Address the proxy listens on for your application's calls.",
        set: |c, raw| {
            c.listen = socket_addr(raw, "127.0.0.1:8080")?;
            Ok(())
        },
        show: |c| c.listen.to_string(),
    },
    Key {
        toml: "threads",
        env: "RUNWAY_PROXY_THREADS",
        flag: "threads",
        doc: "Serving threads, each with its own listener, runtime and upstream pool (auto: one per core).",
        set: |c, raw| {
            c.threads = match raw.trim() {
                "auto" | "0" => 0,
                n => count(n)? as usize,
            };
            Ok(())
        },
        show: |c| match c.threads {
            0 => "auto".to_owned(),
            n => n.to_string(),
        },
    },
    Key {
        toml: "upstream",
        env: "RUNWAY_PROXY_UPSTREAM",
        flag: "upstream",
        doc: "Base URL requests are forwarded to, path and query unchanged.",
        set: |c, raw| {
            c.upstream = base_url(raw)?;
            Ok(())
        },
        show: |c| c.upstream.to_string().trim_end_matches('/').to_owned(),
    },
    Key {
        toml: "connect_timeout",
        env: "RUNWAY_PROXY_CONNECT_TIMEOUT",
        flag: "connect-timeout",
        doc: "Time allowed to open a TCP and TLS connection to the upstream.",
        set: |c, raw| {
            c.connect_timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.connect_timeout),
    },
    Key {
        toml: "request_timeout",
        env: "RUNWAY_PROXY_REQUEST_TIMEOUT",
        flag: "request-timeout",
        doc: "Time allowed for the upstream's response headers once the request is sent.",
        set: |c, raw| {
            c.request_timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.request_timeout),
    },
    Key {
        toml: "shutdown_grace",
        env: "RUNWAY_PROXY_SHUTDOWN_GRACE",
        flag: "shutdown-grace",
        doc: "On SIGINT or SIGTERM, time in-flight requests get to finish.",
        set: |c, raw| {
            c.shutdown_grace = duration::parse(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.shutdown_grace),
    },
    Key {
        toml: "retry.max_attempts",
        env: "RUNWAY_PROXY_MAX_ATTEMPTS",
        flag: "max-attempts",
        doc: "Attempts per request in all, counting the first.",
        set: |c, raw| {
            c.retry.max_attempts = number(raw)?;
            Ok(())
        },
        show: |c| c.retry.max_attempts.to_string(),
    },
    Key {
        toml: "retry.base_delay",
        env: "RUNWAY_PROXY_RETRY_BASE_DELAY",
        flag: "retry-base-delay",
        doc: "Backoff base: the first retry waits a random time up to this.",
        set: |c, raw| {
            c.retry.base_delay = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.retry.base_delay),
    },
    Key {
        toml: "retry.max_delay",
        env: "RUNWAY_PROXY_RETRY_MAX_DELAY",
        flag: "retry-max-delay",
        doc: "Backoff cap: no backoff wait is longer.",
        set: |c, raw| {
            c.retry.max_delay = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.retry.max_delay),
    },
    Key {
        toml: "retry.deadline",
        env: "RUNWAY_PROXY_RETRY_DEADLINE",
        flag: "retry-deadline",
        doc: "One deadline for all attempts and waits of a request.",
        set: |c, raw| {
            c.retry.deadline = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.retry.deadline),
    },
    Key {
        toml: "retry.attempt_timeout",
        env: "RUNWAY_PROXY_ATTEMPT_TIMEOUT",
        flag: "attempt-timeout",
        doc: "Time allowed for one attempt, response body included.",
        set: |c, raw| {
            c.retry.attempt_timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.retry.attempt_timeout),
    },
    Key {
        toml: "retry.retry_after_cap",
        env: "RUNWAY_PROXY_RETRY_AFTER_CAP",
        flag: "retry-after-cap",
        doc: "The longest wait a Retry-After header can ask for.",
        set: |c, raw| {
            c.retry.retry_after_cap = duration::parse(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.retry.retry_after_cap),
    },
    Key {
        toml: "retry.budget_percent",
        env: "RUNWAY_PROXY_RETRY_BUDGET_PERCENT",
        flag: "retry-budget-percent",
        doc: "Retries may add at most this percentage of recent requests...",
        set: |c, raw| {
            c.retry.budget_percent = percentage(raw)?;
            Ok(())
        },
        show: |c| c.retry.budget_percent.to_string(),
    },
    Key {
        toml: "retry.budget_min_per_sec",
        env: "RUNWAY_PROXY_RETRY_BUDGET_MIN_PER_SEC",
        flag: "retry-budget-min-per-sec",
        doc: "...plus this many retries per second (a floor for quiet periods).",
        set: |c, raw| {
            c.retry.budget_min_per_sec = number(raw)?;
            Ok(())
        },
        show: |c| c.retry.budget_min_per_sec.to_string(),
    },
    Key {
        toml: "retry.body_limit",
        env: "RUNWAY_PROXY_RETRY_BODY_LIMIT",
        flag: "retry-body-limit",
        doc: "Largest body buffered to replay a request or classify a response.",
        set: |c, raw| {
            c.retry.body_limit = size(raw)?;
            Ok(())
        },
        show: |c| show_size(c.retry.body_limit),
    },
    Key {
        toml: "retry.unknown_outcome",
        env: "RUNWAY_PROXY_RETRY_UNKNOWN_OUTCOME",
        flag: "retry-unknown-outcome",
        doc: "Route classes retried after a timeout or reset once the request was written.",
        set: |c, raw| {
            c.retry.unknown_outcome = classes(raw)?;
            Ok(())
        },
        show: |c| show_classes(&c.retry.unknown_outcome),
    },
    Key {
        toml: "retry.surface_envelope_errors",
        env: "RUNWAY_PROXY_SURFACE_ENVELOPE_ERRORS",
        flag: "surface-envelope-errors",
        doc: "Answer a failure inside an HTTP 200 with the HTTP status of its code (502 if none), so SDKs raise.",
        set: |c, raw| {
            c.retry.surface_envelope_errors = boolean(raw)?;
            Ok(())
        },
        show: |c| c.retry.surface_envelope_errors.to_string(),
    },
    Key {
        toml: "limit.rate",
        env: "RUNWAY_PROXY_RATE_LIMIT",
        flag: "rate-limit",
        doc: "Quota for all outbound calls, like 5/s, 300/min or \"5/s burst 10\".",
        set: |c, raw| {
            c.limit.rate = parse_optional(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.limit.rate),
    },
    Key {
        toml: "limit.rate_per_key",
        env: "RUNWAY_PROXY_RATE_LIMIT_PER_KEY",
        flag: "rate-limit-per-key",
        doc: "Quota for each API key (bearer token, kept only as a hash).",
        set: |c, raw| {
            c.limit.rate_per_key = parse_optional(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.limit.rate_per_key),
    },
    Key {
        toml: "limit.submit_rate",
        env: "RUNWAY_PROXY_SUBMIT_RATE_LIMIT",
        flag: "submit-rate-limit",
        doc: "Quota for submissions (POST /runway/pro/*, task-creating /runwayml/v1/*).",
        set: |c, raw| {
            c.limit.submit_rate = parse_optional(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.limit.submit_rate),
    },
    Key {
        toml: "limit.read_rate",
        env: "RUNWAY_PROXY_READ_RATE_LIMIT",
        flag: "read-rate-limit",
        doc: "Quota for reads (POST /runway/feed, GET /runwayml/v1/tasks/{id}).",
        set: |c, raw| {
            c.limit.read_rate = parse_optional(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.limit.read_rate),
    },
    Key {
        toml: "limit.max_concurrency",
        env: "RUNWAY_PROXY_MAX_CONCURRENCY",
        flag: "max-concurrency",
        doc: "Most requests in flight to the upstream at once (CometAPI's guide uses 5).",
        set: |c, raw| {
            c.limit.max_concurrency = optional_count(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.limit.max_concurrency),
    },
    Key {
        toml: "limit.max_concurrency_per_key",
        env: "RUNWAY_PROXY_MAX_CONCURRENCY_PER_KEY",
        flag: "max-concurrency-per-key",
        doc: "Most requests in flight to the upstream at once for one API key.",
        set: |c, raw| {
            c.limit.max_concurrency_per_key = optional_count(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.limit.max_concurrency_per_key),
    },
    Key {
        toml: "limit.max_wait",
        env: "RUNWAY_PROXY_MAX_WAIT",
        flag: "max-wait",
        doc: "Longest a request waits for its turn before a 429.",
        set: |c, raw| {
            c.limit.max_wait = duration::parse(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.limit.max_wait),
    },
    Key {
        toml: "limit.max_queue",
        env: "RUNWAY_PROXY_MAX_QUEUE",
        flag: "max-queue",
        doc: "Most requests waiting for their turn at once; more get a 429.",
        set: |c, raw| {
            c.limit.max_queue = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.limit.max_queue.to_string(),
    },
    Key {
        toml: "limit.max_keys",
        env: "RUNWAY_PROXY_RATE_LIMIT_MAX_KEYS",
        flag: "rate-limit-max-keys",
        doc: "Most API keys whose per-key state is kept (idle keys are pruned).",
        set: |c, raw| {
            c.limit.max_keys = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.limit.max_keys.to_string(),
    },
    Key {
        toml: "limit.redis_url",
        env: "RUNWAY_PROXY_REDIS_URL",
        flag: "redis-url",
        doc: "Redis that keeps the rate quotas, shared by every replica that names it (none: in memory).",
        set: |c, raw| {
            c.limit.redis_url = service_url(raw);
            Ok(())
        },
        show: |c| show_service_url(c.limit.redis_url.as_ref()),
    },
    Key {
        toml: "limit.redis_fallback",
        env: "RUNWAY_PROXY_REDIS_FALLBACK",
        flag: "redis-fallback",
        doc: "When that Redis is unreachable: local (this process's own limiter, with a warning) or refuse (503).",
        set: |c, raw| {
            c.limit.redis_fallback = raw.parse().map_err(ValueError::Form)?;
            Ok(())
        },
        show: |c| c.limit.redis_fallback.as_str().to_owned(),
    },
    Key {
        toml: "webhook_listen",
        env: "RUNWAY_PROXY_WEBHOOK_LISTEN",
        flag: "webhook-listen",
        doc: "Address of the webhook listener (in production, the public one).",
        set: |c, raw| {
            c.webhook_listen = socket_addr(raw, "127.0.0.1:8081")?;
            Ok(())
        },
        show: |c| c.webhook_listen.to_string(),
    },
    Key {
        toml: "public_url",
        env: "RUNWAY_PROXY_PUBLIC_URL",
        flag: "public-url",
        doc: "Base URL the upstream uses to reach the webhook listener (auto: http://{webhook_listen}).",
        set: |c, raw| {
            c.public_url = match raw.trim() {
                "" | "auto" => None,
                url => {
                    // A path prefix is fine: webhooks come to {public_url}/hooks/runway/...
                    base_url(url)?;
                    Some(url.trim_end_matches('/').to_owned())
                }
            };
            Ok(())
        },
        show: |c| c.public_url.clone().unwrap_or_else(|| "auto".to_owned()),
    },
    Key {
        toml: "data_dir",
        env: "RUNWAY_PROXY_DATA_DIR",
        flag: "data-dir",
        doc: "Directory of the outbox database and generated secrets.",
        set: |c, raw| {
            if raw.trim().is_empty() {
                return Err(ValueError::Form("the data directory must not be empty".into()));
            }
            c.data_dir = raw.into();
            Ok(())
        },
        show: |c| c.data_dir.display().to_string(),
    },
    Key {
        toml: "database.url",
        env: "RUNWAY_PROXY_DATABASE_URL",
        flag: "database-url",
        doc: "PostgreSQL that keeps the outbox and idempotency records, shared by every replica that names it (none: SQLite in data_dir).",
        set: |c, raw| {
            c.database.url = service_url(raw);
            Ok(())
        },
        show: |c| show_service_url(c.database.url.as_ref()),
    },
    Key {
        toml: "database.pool_size",
        env: "RUNWAY_PROXY_DATABASE_POOL_SIZE",
        flag: "database-pool-size",
        doc: "Most connections to that PostgreSQL this process opens.",
        set: |c, raw| {
            c.database.pool_size = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.database.pool_size.to_string(),
    },
    Key {
        toml: "database.timeout",
        env: "RUNWAY_PROXY_DATABASE_TIMEOUT",
        flag: "database-timeout",
        doc: "The longest one PostgreSQL operation may take (a webhook not stored by then is answered 503).",
        set: |c, raw| {
            c.database.timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.database.timeout),
    },
    Key {
        toml: "webhook_secret",
        env: "RUNWAY_PROXY_WEBHOOK_SECRET",
        flag: "webhook-secret",
        doc: "whsec_<base64> secret that signs relayed webhooks (generated: made once, kept in data_dir).",
        set: |c, raw| {
            c.webhook_secret = match raw.trim() {
                "" | "generated" => None,
                secret => {
                    // Checked here so a bad secret stops the start, never the first delivery.
                    WebhookSigner::from_secret(secret)?;
                    Some(Secret::new(secret))
                }
            };
            Ok(())
        },
        show: |c| generated(&c.webhook_secret),
    },
    Key {
        toml: "callback.allow_private",
        env: "RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS",
        flag: "allow-private-callbacks",
        doc: "Let callback_url point at loopback, private and other internal addresses.",
        set: |c, raw| {
            c.callback.allow_private = boolean(raw)?;
            Ok(())
        },
        show: |c| c.callback.allow_private.to_string(),
    },
    Key {
        toml: "callback.allowed_hosts",
        env: "RUNWAY_PROXY_CALLBACK_ALLOWED_HOSTS",
        flag: "callback-allowed-hosts",
        doc: "Only these callback hosts, comma-separated (*.example.com for subdomains).",
        set: |c, raw| {
            c.callback.allowed_hosts = match raw.trim() {
                "" | "any" | "*" => Vec::new(),
                hosts => hosts
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
            };
            Ok(())
        },
        show: |c| match c.callback.allowed_hosts.as_slice() {
            [] => "any".to_owned(),
            hosts => hosts.join(","),
        },
    },
    Key {
        toml: "callback.token_keys",
        env: "RUNWAY_PROXY_CALLBACK_TOKEN_KEYS",
        flag: "callback-token-keys",
        doc: "Keys of callback route tokens, id:secret,... (newest id mints; generated: kept in data_dir).",
        set: |c, raw| {
            c.callback.token_keys = match raw.trim() {
                "" | "generated" => None,
                keys => {
                    Keyring::parse(keys)?;
                    Some(Secret::new(keys))
                }
            };
            Ok(())
        },
        show: |c| generated(&c.callback.token_keys),
    },
    Key {
        toml: "callback.body_limit",
        env: "RUNWAY_PROXY_CALLBACK_BODY_LIMIT",
        flag: "callback-body-limit",
        doc: "Largest submission body rewritten, and largest webhook body accepted.",
        set: |c, raw| {
            c.callback.body_limit = size(raw)?;
            Ok(())
        },
        show: |c| show_size(c.callback.body_limit),
    },
    Key {
        toml: "callback.token_lifetime",
        env: "RUNWAY_PROXY_CALLBACK_TOKEN_LIFETIME",
        flag: "callback-token-lifetime",
        doc: "How long a callback route token is honoured after it was minted (webhooks with older ones get 404).",
        set: |c, raw| {
            c.callback.token_lifetime = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.callback.token_lifetime),
    },
    Key {
        toml: "delivery.schedule",
        env: "RUNWAY_PROXY_DELIVERY_SCHEDULE",
        flag: "delivery-schedule",
        doc: "Wait before each delivery attempt (with jitter); then a dead letter.",
        set: |c, raw| {
            c.delivery.schedule = schedule(raw)?;
            Ok(())
        },
        show: |c| show_schedule(&c.delivery.schedule),
    },
    Key {
        toml: "delivery.timeout",
        env: "RUNWAY_PROXY_DELIVERY_TIMEOUT",
        flag: "delivery-timeout",
        doc: "Time allowed for one delivery attempt.",
        set: |c, raw| {
            c.delivery.timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.delivery.timeout),
    },
    Key {
        toml: "delivery.workers",
        env: "RUNWAY_PROXY_DELIVERY_WORKERS",
        flag: "delivery-workers",
        doc: "Delivery workers (each sends up to 16 webhooks at once).",
        set: |c, raw| {
            c.delivery.workers = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.delivery.workers.to_string(),
    },
    Key {
        toml: "delivery.retry_after_cap",
        env: "RUNWAY_PROXY_DELIVERY_RETRY_AFTER_CAP",
        flag: "delivery-retry-after-cap",
        doc: "The longest a subscriber's Retry-After can push a delivery back.",
        set: |c, raw| {
            c.delivery.retry_after_cap = duration::parse(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.delivery.retry_after_cap),
    },
    Key {
        toml: "watch.poll_interval",
        env: "RUNWAY_PROXY_TASK_POLL_INTERVAL",
        flag: "task-poll-interval",
        doc: "How often an official-format task is polled for its status, and an overdue reverse-format one read from the feed (with jitter).",
        set: |c, raw| {
            c.watch.poll_interval = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.watch.poll_interval),
    },
    Key {
        toml: "watch.recover_after",
        env: "RUNWAY_PROXY_RECOVER_AFTER",
        flag: "recover-after",
        doc: "How long a reverse-format task may go without its final callback before its result is read from the feed.",
        set: |c, raw| {
            c.watch.recover_after = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.watch.recover_after),
    },
    Key {
        toml: "watch.official_callback_url",
        env: "RUNWAY_PROXY_OFFICIAL_CALLBACK_URL",
        flag: "official-callback-url",
        doc: "Subscriber of official-format tasks whose submission names none with x-runway-proxy-callback-url (none: their events are not relayed; they are still followed to their end for the ledger).",
        set: |c, raw| {
            c.watch.official_callback_url = match raw.trim() {
                "" | "none" => None,
                url => Some(url.to_owned()),
            };
            Ok(())
        },
        show: |c| {
            c.watch
                .official_callback_url
                .clone()
                .unwrap_or_else(|| "none".to_owned())
        },
    },
    Key {
        toml: "watch.confirm_callbacks",
        env: "RUNWAY_PROXY_CONFIRM_CALLBACKS",
        flag: "confirm-callbacks",
        doc: "Relay a reverse-format task's final callback only once a feed read agrees (callbacks are not signed).",
        set: |c, raw| {
            c.watch.confirm_callbacks = boolean(raw)?;
            Ok(())
        },
        show: |c| c.watch.confirm_callbacks.to_string(),
    },
    Key {
        toml: "watch.ledger_retention",
        env: "RUNWAY_PROXY_LEDGER_RETENTION",
        flag: "ledger-retention",
        doc: "How long the ledger keeps a finished task's record (for /-/usage and the budgets; at least guard.budget_window).",
        set: |c, raw| {
            c.watch.ledger_retention = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.watch.ledger_retention),
    },
    Key {
        toml: "guard.max_tasks_in_flight",
        env: "RUNWAY_PROXY_MAX_TASKS_IN_FLIGHT",
        flag: "max-tasks-in-flight",
        doc: "Most tasks unfinished at once (from submission until the watch list sees their end); more wait their turn.",
        set: |c, raw| {
            c.guard.max_tasks_in_flight = optional_count(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.guard.max_tasks_in_flight),
    },
    Key {
        toml: "guard.max_tasks_in_flight_per_key",
        env: "RUNWAY_PROXY_MAX_TASKS_IN_FLIGHT_PER_KEY",
        flag: "max-tasks-in-flight-per-key",
        doc: "Most tasks unfinished at once for one API key (or label).",
        set: |c, raw| {
            c.guard.max_tasks_in_flight_per_key = optional_count(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.guard.max_tasks_in_flight_per_key),
    },
    Key {
        toml: "guard.daily_task_budget",
        env: "RUNWAY_PROXY_DAILY_TASK_BUDGET",
        flag: "daily-task-budget",
        doc: "Most tasks submitted per budget window, in all; past it submissions are refused before sending.",
        set: |c, raw| {
            c.guard.daily_task_budget = optional_amount(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.guard.daily_task_budget),
    },
    Key {
        toml: "guard.daily_point_budget",
        env: "RUNWAY_PROXY_DAILY_POINT_BUDGET",
        flag: "daily-point-budget",
        doc: "Most points (charged less refunded, as CometAPI reports them) per budget window, in all.",
        set: |c, raw| {
            c.guard.daily_point_budget = optional_amount(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.guard.daily_point_budget),
    },
    Key {
        toml: "guard.daily_task_budget_per_key",
        env: "RUNWAY_PROXY_DAILY_TASK_BUDGET_PER_KEY",
        flag: "daily-task-budget-per-key",
        doc: "Most tasks per budget window for one API key (or label); [[guard.keys]] overrides it per key.",
        set: |c, raw| {
            c.guard.daily_task_budget_per_key = optional_amount(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.guard.daily_task_budget_per_key),
    },
    Key {
        toml: "guard.daily_point_budget_per_key",
        env: "RUNWAY_PROXY_DAILY_POINT_BUDGET_PER_KEY",
        flag: "daily-point-budget-per-key",
        doc: "Most points per budget window for one API key (or label); [[guard.keys]] overrides it per key.",
        set: |c, raw| {
            c.guard.daily_point_budget_per_key = optional_amount(raw)?;
            Ok(())
        },
        show: |c| show_optional(c.guard.daily_point_budget_per_key),
    },
    Key {
        toml: "guard.budget_window",
        env: "RUNWAY_PROXY_BUDGET_WINDOW",
        flag: "budget-window",
        doc: "The budgets' rolling window.",
        set: |c, raw| {
            c.guard.budget_window = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.guard.budget_window),
    },
    Key {
        toml: "idempotency.ttl",
        env: "RUNWAY_PROXY_IDEMPOTENCY_TTL",
        flag: "idempotency-ttl",
        doc: "How long an Idempotency-Key is remembered: a repeat within it gets the first answer.",
        set: |c, raw| {
            c.idempotency.ttl = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.idempotency.ttl),
    },
    Key {
        toml: "connections.header_read_timeout",
        env: "RUNWAY_PROXY_HEADER_READ_TIMEOUT",
        flag: "header-read-timeout",
        doc: "Longest a request's head may take to arrive (and an HTTP/1.1 connection may wait for its next request).",
        set: |c, raw| {
            c.connections.header_read_timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.connections.header_read_timeout),
    },
    Key {
        toml: "connections.idle_timeout",
        env: "RUNWAY_PROXY_IDLE_TIMEOUT",
        flag: "idle-timeout",
        doc: "Longest a connection stays open with no request in flight.",
        set: |c, raw| {
            c.connections.idle_timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.connections.idle_timeout),
    },
    Key {
        toml: "connections.max_connections",
        env: "RUNWAY_PROXY_MAX_CONNECTIONS",
        flag: "max-connections",
        doc: "Most connections open at once on each listener; more wait to be accepted.",
        set: |c, raw| {
            c.connections.max_connections = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.connections.max_connections.to_string(),
    },
    Key {
        toml: "admin_token",
        env: "RUNWAY_PROXY_ADMIN_TOKEN",
        flag: "admin-token",
        doc: "Bearer token every admin path but /-/healthz and /-/readyz requires (none: open on loopback only).",
        set: |c, raw| {
            c.admin_token = match raw.trim() {
                "" | "none" => None,
                token => Some(Secret::new(token)),
            };
            Ok(())
        },
        show: |c| match c.admin_token {
            Some(_) => "(set)".to_owned(),
            None => "none".to_owned(),
        },
    },
    Key {
        toml: "access_log",
        env: "RUNWAY_PROXY_ACCESS_LOG",
        flag: "access-log",
        doc: "One log line per proxied request at info (off: at debug). Refusals, retries and webhooks are logged either way.",
        set: |c, raw| {
            c.access_log = boolean(raw)?;
            Ok(())
        },
        show: |c| c.access_log.to_string(),
    },
    Key {
        toml: "otel.endpoint",
        env: "OTEL_EXPORTER_OTLP_ENDPOINT",
        flag: "otel-endpoint",
        doc: "OpenTelemetry collector's OTLP/HTTP base URL (http://collector:4318): traces of each request, attempt, callback and delivery are exported to {url}/v1/traces (none: tracing off).",
        set: |c, raw| {
            c.otel.endpoint = match raw.trim() {
                "" | "none" => None,
                url => Some(url.to_owned()),
            };
            Ok(())
        },
        show: |c| c.otel.endpoint.clone().unwrap_or_else(|| "none".to_owned()),
    },
    Key {
        toml: "otel.headers",
        env: "OTEL_EXPORTER_OTLP_HEADERS",
        flag: "otel-headers",
        doc: "Headers sent with each export, name=value,... with values percent-encoded (a collector's API key); never shown.",
        set: |c, raw| {
            c.otel.headers = match raw.trim() {
                "" | "none" => Vec::new(),
                text => crate::trace::parse_headers(text)?,
            };
            Ok(())
        },
        show: |c| match c.otel.headers.len() {
            0 => "none".to_owned(),
            _ => "(set)".to_owned(),
        },
    },
    Key {
        toml: "otel.service_name",
        env: "OTEL_SERVICE_NAME",
        flag: "otel-service-name",
        doc: "service.name of the exported traces.",
        set: |c, raw| {
            c.otel.service_name = raw.trim().to_owned();
            Ok(())
        },
        show: |c| c.otel.service_name.clone(),
    },
    Key {
        toml: "otel.sampler",
        env: "OTEL_TRACES_SAMPLER",
        flag: "otel-sampler",
        doc: "Which traces are recorded: parentbased_always_on (the application's traceparent decides, else all), parentbased_traceidratio, traceidratio, always_on, always_off or parentbased_always_off.",
        set: |c, raw| {
            c.otel.sampler = raw.parse()?;
            Ok(())
        },
        show: |c| c.otel.sampler.as_str().to_owned(),
    },
    Key {
        toml: "otel.sampler_arg",
        env: "OTEL_TRACES_SAMPLER_ARG",
        flag: "otel-sampler-arg",
        doc: "Share of traces the traceidratio samplers record, 0 to 1 (0.1: one in ten, chosen by trace id).",
        set: |c, raw| {
            c.otel.sampler_arg = raw.parse()?;
            Ok(())
        },
        show: |c| c.otel.sampler_arg.to_string(),
    },
    Key {
        toml: "log_format",
        env: "RUNWAY_PROXY_LOG_FORMAT",
        flag: "log-format",
        doc: "Log line format: pretty, json, or auto (pretty on a terminal, json otherwise). The level comes from RUST_LOG (default info).",
        set: |c, raw| {
            c.log_format = match raw {
                "auto" => LogFormat::Auto,
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ValueError::Form(format!(
                        "{raw:?} is not a log format (auto, pretty or json)"
                    )));
                }
            };
            Ok(())
        },
        show: |c| match c.log_format {
            LogFormat::Auto => "auto".to_owned(),
            LogFormat::Pretty => "pretty".to_owned(),
            LogFormat::Json => "json".to_owned(),
        },
    },
];
