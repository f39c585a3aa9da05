//! The proxy's configuration: one typed [`Config`], read from defaults, a TOML file,
//! environment variables and command-line flags, in that order of precedence (a flag
//! beats the environment, which beats the file, which beats the default).
//!
//! Every setting is described once, in [`KEYS`]: its TOML key, environment variable, flag
//! and default. The CLI builds its flags from that table and the README documents it, so
//! the three can't drift apart.
//!
//! # Example
//!
//! ```
//! use runway_proxy::config::{Config, Overrides};
//!
//! let file = r#"
//!     listen = "127.0.0.1:9000"
//!     request_timeout = "30s"
//! "#;
//! let env = |name: &str| (name == "RUNWAY_PROXY_REQUEST_TIMEOUT").then(|| "45s".to_owned());
//! let flags = Overrides::from([("listen", "127.0.0.1:9100".to_owned())]);
//! let config = Config::load(Some(file), &env, &flags)?;
//! assert_eq!(config.listen.port(), 9100); // the flag wins over the file
//! assert_eq!(config.request_timeout.as_secs(), 45); // the environment wins over the file
//! # Ok::<(), runway_proxy::config::ConfigError>(())
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use crate::callback::{Keyring, TargetPolicy};
use crate::duration;
use crate::limit::{LimitSettings, parse_optional};
use crate::relay::{RelaySettings, WebhookSigner};
use crate::retry::{RetrySettings, RuleSpec, Rules};
use crate::route::RouteClass;

/// The sidecar's settings. Build it with [`Config::load`] or start from
/// [`Config::default`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Address the proxy listens on for the application's calls.
    pub listen: SocketAddr,
    /// Base URL of CometAPI (or the stand-in); paths and queries are appended unchanged.
    pub upstream: Uri,
    /// How long to wait for a TCP (and TLS) connection to the upstream.
    pub connect_timeout: Duration,
    /// How long to wait for the upstream's response headers after sending a request.
    pub request_timeout: Duration,
    /// On SIGINT or SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// Log line format.
    pub log_format: LogFormat,
    /// The retry middleware's settings and rule table (`[retry]`, `[[retry.rules]]`).
    pub retry: RetrySettings,
    /// The rate limiter's quotas and bounds (`[limit]`).
    pub limit: LimitSettings,
    /// Address of the webhook listener.
    pub webhook_listen: SocketAddr,
    /// Base URL the upstream uses to reach the webhook listener; `None`: derived from
    /// the listener's bound address.
    pub public_url: Option<String>,
    /// Directory of the outbox database and generated secrets.
    pub data_dir: PathBuf,
    /// The secret that signs relayed webhooks; `None`: generated once, kept in `data_dir`.
    pub webhook_secret: Option<Secret>,
    /// The `callback_url` rewrite (`[callback]`).
    pub callback: CallbackSettings,
    /// Webhook delivery (`[delivery]`).
    pub delivery: RelaySettings,
}

/// Settings of the `callback_url` rewrite.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CallbackSettings {
    /// Which subscriber URLs are accepted.
    pub policy: TargetPolicy,
    /// Route token keys (`id:secret,...`); `None`: generated once, kept in `data_dir`.
    pub token_keys: Option<Secret>,
    /// Largest submission body rewritten and webhook body accepted.
    pub body_limit: usize,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            policy: TargetPolicy::default(),
            token_keys: None,
            body_limit: 1024 * 1024,
        }
    }
}

/// A configuration value that must never be printed: `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the code that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// One configuration setting: where it can be set, and its default.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// Key in the TOML file (dotted for a key inside a table, e.g. `retry.max_attempts`).
    pub toml: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Command-line flag, without the leading `--`.
    pub flag: &'static str,
    /// The default, as it would be written in the file.
    pub default: &'static str,
    /// One line describing the setting.
    pub doc: &'static str,
}

/// Every setting of [`Config`].
pub const KEYS: &[Key] = &[
    Key {
        toml: "listen",
        env: "RUNWAY_PROXY_LISTEN",
        flag: "listen",
        default: "127.0.0.1:8080",
        doc: "Address the proxy listens on for your application's calls.",
    },
    Key {
        toml: "upstream",
        env: "RUNWAY_PROXY_UPSTREAM",
        flag: "upstream",
        default: "https://api.cometapi.com",
        doc: "Base URL requests are forwarded to, path and query unchanged.",
    },
    Key {
        toml: "connect_timeout",
        env: "RUNWAY_PROXY_CONNECT_TIMEOUT",
        flag: "connect-timeout",
        default: "10s",
        doc: "Time allowed to open a TCP and TLS connection to the upstream.",
    },
    Key {
        toml: "request_timeout",
        env: "RUNWAY_PROXY_REQUEST_TIMEOUT",
        flag: "request-timeout",
        default: "60s",
        doc: "Time allowed for the upstream's response headers once the request is sent.",
    },
    Key {
        toml: "shutdown_grace",
        env: "RUNWAY_PROXY_SHUTDOWN_GRACE",
        flag: "shutdown-grace",
        default: "30s",
        doc: "On SIGINT or SIGTERM, time in-flight requests get to finish.",
    },
    Key {
        toml: "retry.max_attempts",
        env: "RUNWAY_PROXY_MAX_ATTEMPTS",
        flag: "max-attempts",
        default: "5",
        doc: "Attempts per request in all, counting the first.",
    },
    Key {
        toml: "retry.base_delay",
        env: "RUNWAY_PROXY_RETRY_BASE_DELAY",
        flag: "retry-base-delay",
        default: "1s",
        doc: "Backoff base: the first retry waits a random time up to this.",
    },
    Key {
        toml: "retry.max_delay",
        env: "RUNWAY_PROXY_RETRY_MAX_DELAY",
        flag: "retry-max-delay",
        default: "30s",
        doc: "Backoff cap: no backoff wait is longer.",
    },
    Key {
        toml: "retry.deadline",
        env: "RUNWAY_PROXY_RETRY_DEADLINE",
        flag: "retry-deadline",
        default: "2m",
        doc: "One deadline for all attempts and waits of a request.",
    },
    Key {
        toml: "retry.attempt_timeout",
        env: "RUNWAY_PROXY_ATTEMPT_TIMEOUT",
        flag: "attempt-timeout",
        default: "60s",
        doc: "Time allowed for one attempt, response body included.",
    },
    Key {
        toml: "retry.retry_after_cap",
        env: "RUNWAY_PROXY_RETRY_AFTER_CAP",
        flag: "retry-after-cap",
        default: "60s",
        doc: "The longest wait a Retry-After header can ask for.",
    },
    Key {
        toml: "retry.budget_percent",
        env: "RUNWAY_PROXY_RETRY_BUDGET_PERCENT",
        flag: "retry-budget-percent",
        default: "20",
        doc: "Retries may add at most this percentage of recent requests...",
    },
    Key {
        toml: "retry.budget_min_per_sec",
        env: "RUNWAY_PROXY_RETRY_BUDGET_MIN_PER_SEC",
        flag: "retry-budget-min-per-sec",
        default: "1",
        doc: "...plus this many retries per second (a floor for quiet periods).",
    },
    Key {
        toml: "retry.body_limit",
        env: "RUNWAY_PROXY_RETRY_BODY_LIMIT",
        flag: "retry-body-limit",
        default: "1MiB",
        doc: "Largest body buffered to replay a request or classify a response.",
    },
    Key {
        toml: "retry.unknown_outcome",
        env: "RUNWAY_PROXY_RETRY_UNKNOWN_OUTCOME",
        flag: "retry-unknown-outcome",
        default: "read",
        doc: "Route classes retried after a timeout or reset once the request was written.",
    },
    Key {
        toml: "limit.rate",
        env: "RUNWAY_PROXY_RATE_LIMIT",
        flag: "rate-limit",
        default: "unlimited",
        doc: "Quota for all outbound calls, like 5/s, 300/min or \"5/s burst 10\".",
    },
    Key {
        toml: "limit.rate_per_key",
        env: "RUNWAY_PROXY_RATE_LIMIT_PER_KEY",
        flag: "rate-limit-per-key",
        default: "unlimited",
        doc: "Quota for each API key (bearer token, kept only as a hash).",
    },
    Key {
        toml: "limit.submit_rate",
        env: "RUNWAY_PROXY_SUBMIT_RATE_LIMIT",
        flag: "submit-rate-limit",
        default: "unlimited",
        doc: "Quota for submissions (POST /runway/pro/*, task-creating /runwayml/v1/*).",
    },
    Key {
        toml: "limit.read_rate",
        env: "RUNWAY_PROXY_READ_RATE_LIMIT",
        flag: "read-rate-limit",
        default: "unlimited",
        doc: "Quota for reads (POST /runway/feed, GET /runwayml/v1/tasks/{id}).",
    },
    Key {
        toml: "limit.max_concurrency",
        env: "RUNWAY_PROXY_MAX_CONCURRENCY",
        flag: "max-concurrency",
        default: "unlimited",
        doc: "Most requests in flight to the upstream at once (CometAPI's guide uses 5).",
    },
    Key {
        toml: "limit.max_concurrency_per_key",
        env: "RUNWAY_PROXY_MAX_CONCURRENCY_PER_KEY",
        flag: "max-concurrency-per-key",
        default: "unlimited",
        doc: "Most requests in flight to the upstream at once for one API key.",
    },
    Key {
        toml: "limit.max_wait",
        env: "RUNWAY_PROXY_MAX_WAIT",
        flag: "max-wait",
        default: "30s",
        doc: "Longest a request waits for its turn before a 429.",
    },
    Key {
        toml: "limit.max_queue",
        env: "RUNWAY_PROXY_MAX_QUEUE",
        flag: "max-queue",
        default: "1024",
        doc: "Most requests waiting for their turn at once; more get a 429.",
    },
    Key {
        toml: "limit.max_keys",
        env: "RUNWAY_PROXY_RATE_LIMIT_MAX_KEYS",
        flag: "rate-limit-max-keys",
        default: "10000",
        doc: "Most API keys whose per-key state is kept (idle keys are pruned).",
    },
    Key {
        toml: "webhook_listen",
        env: "RUNWAY_PROXY_WEBHOOK_LISTEN",
        flag: "webhook-listen",
        default: "127.0.0.1:8081",
        doc: "Address of the webhook listener (in production, the public one).",
    },
    Key {
        toml: "public_url",
        env: "RUNWAY_PROXY_PUBLIC_URL",
        flag: "public-url",
        default: "auto",
        doc: "Base URL the upstream uses to reach the webhook listener (auto: http://{webhook_listen}).",
    },
    Key {
        toml: "data_dir",
        env: "RUNWAY_PROXY_DATA_DIR",
        flag: "data-dir",
        default: "./runway-proxy-data",
        doc: "Directory of the outbox database and generated secrets.",
    },
    Key {
        toml: "webhook_secret",
        env: "RUNWAY_PROXY_WEBHOOK_SECRET",
        flag: "webhook-secret",
        default: "generated",
        doc: "whsec_<base64> secret that signs relayed webhooks (generated: made once, kept in data_dir).",
    },
    Key {
        toml: "callback.allow_private",
        env: "RUNWAY_PROXY_ALLOW_PRIVATE_CALLBACKS",
        flag: "allow-private-callbacks",
        default: "false",
        doc: "Let callback_url point at loopback, private and other internal addresses.",
    },
    Key {
        toml: "callback.allowed_hosts",
        env: "RUNWAY_PROXY_CALLBACK_ALLOWED_HOSTS",
        flag: "callback-allowed-hosts",
        default: "any",
        doc: "Only these callback hosts, comma-separated (*.example.com for subdomains).",
    },
    Key {
        toml: "callback.token_keys",
        env: "RUNWAY_PROXY_CALLBACK_TOKEN_KEYS",
        flag: "callback-token-keys",
        default: "generated",
        doc: "Keys of callback route tokens, id:secret,... (newest id mints; generated: kept in data_dir).",
    },
    Key {
        toml: "callback.body_limit",
        env: "RUNWAY_PROXY_CALLBACK_BODY_LIMIT",
        flag: "callback-body-limit",
        default: "1MiB",
        doc: "Largest submission body rewritten, and largest webhook body accepted.",
    },
    Key {
        toml: "delivery.schedule",
        env: "RUNWAY_PROXY_DELIVERY_SCHEDULE",
        flag: "delivery-schedule",
        default: "0s,5s,5m,30m,2h,5h,10h,10h",
        doc: "Wait before each delivery attempt (with jitter); then a dead letter.",
    },
    Key {
        toml: "delivery.timeout",
        env: "RUNWAY_PROXY_DELIVERY_TIMEOUT",
        flag: "delivery-timeout",
        default: "15s",
        doc: "Time allowed for one delivery attempt.",
    },
    Key {
        toml: "delivery.workers",
        env: "RUNWAY_PROXY_DELIVERY_WORKERS",
        flag: "delivery-workers",
        default: "4",
        doc: "Delivery workers (each sends up to 16 webhooks at once).",
    },
    Key {
        toml: "delivery.retry_after_cap",
        env: "RUNWAY_PROXY_DELIVERY_RETRY_AFTER_CAP",
        flag: "delivery-retry-after-cap",
        default: "1h",
        doc: "The longest a subscriber's Retry-After can push a delivery back.",
    },
    Key {
        toml: "log_format",
        env: "RUNWAY_PROXY_LOG_FORMAT",
        flag: "log-format",
        default: "pretty",
        doc: "Log line format: pretty or json. The level comes from RUST_LOG (default info).",
    },
];

/// Values given on the command line, by TOML key name.
pub type Overrides = BTreeMap<&'static str, String>;

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The TOML file.
    File,
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::File => f.write_str("the config file"),
            Origin::Env(name) => write!(f, "${name}"),
            Origin::Flag(name) => write!(f, "--{name}"),
        }
    }
}

/// A configuration that can't be used; the message names the key and the expected form.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value does not parse.
    #[error("{key}: {problem} (set by {origin})")]
    Invalid {
        /// The TOML key of the setting.
        key: &'static str,
        /// What is wrong, quoting the value.
        problem: String,
        /// Where the value came from.
        origin: Origin,
    },
    /// The file is not valid TOML.
    #[error("config file is not valid TOML: {0}")]
    Toml(String),
    /// The file names a key that does not exist (most often a typo).
    #[error("config file: unknown key {0:?} (see the README's configuration table)")]
    UnknownKey(String),
    /// The config file can't be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
}

impl Default for Config {
    fn default() -> Self {
        let empty = Overrides::new();
        // The defaults in KEYS are checked by a unit test, so this cannot fail.
        Config::load(None, &|_| None, &empty).unwrap_or_else(|e| panic!("built-in default is invalid: {e}"))
    }
}

impl Config {
    /// Read the file at `path` (if any), then layer environment variables and `flags` over it.
    pub fn load_from(
        path: Option<&std::path::Path>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = path
            .map(|path| {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        Self::load(text.as_deref(), env, flags)
    }

    /// Build a configuration from a TOML document, an environment lookup and flag values.
    pub fn load(
        file: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let (file_values, rules) = match file {
            Some(text) => flatten_toml(text)?,
            None => (BTreeMap::new(), Vec::new()),
        };
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: Uri::from_static("https://api.cometapi.com"),
            connect_timeout: Duration::ZERO,
            request_timeout: Duration::ZERO,
            shutdown_grace: Duration::ZERO,
            log_format: LogFormat::Pretty,
            retry: RetrySettings::default(),
            limit: LimitSettings::default(),
            webhook_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            public_url: None,
            data_dir: PathBuf::from("./runway-proxy-data"),
            webhook_secret: None,
            callback: CallbackSettings::default(),
            delivery: RelaySettings::default(),
        };
        let mut user_rules = Vec::with_capacity(rules.len());
        for (index, spec) in rules.into_iter().enumerate() {
            let rule = spec.build(index).map_err(|problem| ConfigError::Invalid {
                key: "retry.rules",
                problem: format!("rule {index}: {problem}"),
                origin: Origin::File,
            })?;
            user_rules.push(rule);
        }
        config.retry.rules = Rules::with_user_rules(user_rules);
        for key in KEYS {
            let (raw, origin) = if let Some(value) = flags.get(key.toml) {
                (value.clone(), Origin::Flag(key.flag))
            } else if let Some(value) = env(key.env) {
                (value, Origin::Env(key.env))
            } else if let Some(value) = file_values.get(key.toml) {
                (value.clone(), Origin::File)
            } else {
                (key.default.to_owned(), Origin::Default)
            };
            config
                .set(key.toml, &raw)
                .map_err(|problem| ConfigError::Invalid {
                    key: key.toml,
                    problem,
                    origin,
                })?;
        }
        Ok(config)
    }

    fn set(&mut self, key: &str, raw: &str) -> Result<(), String> {
        match key {
            "listen" => {
                self.listen = raw
                    .parse()
                    .map_err(|_| format!("{raw:?} is not a socket address like 127.0.0.1:8080"))?;
            }
            "upstream" => self.upstream = parse_base_url(raw)?,
            "connect_timeout" => self.connect_timeout = positive_duration(raw)?,
            "request_timeout" => self.request_timeout = positive_duration(raw)?,
            "shutdown_grace" => self.shutdown_grace = duration::parse(raw)?,
            "retry.max_attempts" => {
                self.retry.max_attempts = match raw.parse::<u32>() {
                    Ok(n @ 1..=100) => n,
                    _ => return Err(format!("{raw:?} is not a number of attempts from 1 to 100")),
                }
            }
            "retry.base_delay" => self.retry.base_delay = positive_duration(raw)?,
            "retry.max_delay" => self.retry.max_delay = positive_duration(raw)?,
            "retry.deadline" => self.retry.deadline = positive_duration(raw)?,
            "retry.attempt_timeout" => self.retry.attempt_timeout = positive_duration(raw)?,
            "retry.retry_after_cap" => self.retry.retry_after_cap = duration::parse(raw)?,
            "retry.budget_percent" => {
                self.retry.budget_ratio = match raw.parse::<f32>() {
                    Ok(p) if (0.0..=1000.0).contains(&p) => p / 100.0,
                    _ => return Err(format!("{raw:?} is not a percentage from 0 to 1000")),
                }
            }
            "retry.budget_min_per_sec" => {
                self.retry.budget_min_per_sec = match raw.parse::<u32>() {
                    Ok(n) if n <= 1_000_000 => n,
                    _ => return Err(format!("{raw:?} is not a whole number of retries per second")),
                }
            }
            "retry.body_limit" => self.retry.body_limit = parse_size(raw)?,
            "retry.unknown_outcome" => self.retry.retry_unknown_outcome = parse_classes(raw)?,
            "limit.rate" => self.limit.global = parse_optional(raw)?,
            "limit.rate_per_key" => self.limit.per_key = parse_optional(raw)?,
            "limit.submit_rate" => self.limit.submit = parse_optional(raw)?,
            "limit.read_rate" => self.limit.read = parse_optional(raw)?,
            "limit.max_concurrency" => self.limit.max_concurrency = optional_count(raw)?,
            "limit.max_concurrency_per_key" => self.limit.max_concurrency_per_key = optional_count(raw)?,
            "limit.max_wait" => self.limit.max_wait = duration::parse(raw)?,
            "limit.max_queue" => self.limit.max_queue = count(raw)? as usize,
            "limit.max_keys" => self.limit.max_keys = count(raw)? as usize,
            "webhook_listen" => {
                self.webhook_listen = raw
                    .parse()
                    .map_err(|_| format!("{raw:?} is not a socket address like 127.0.0.1:8081"))?;
            }
            "public_url" => {
                self.public_url = match raw.trim() {
                    "" | "auto" => None,
                    url => {
                        // A path prefix is fine: webhooks come to {public_url}/hooks/runway/...
                        parse_base_url(url)?;
                        Some(url.trim_end_matches('/').to_owned())
                    }
                }
            }
            "data_dir" => {
                if raw.trim().is_empty() {
                    return Err("the data directory must not be empty".into());
                }
                self.data_dir = PathBuf::from(raw);
            }
            "webhook_secret" => {
                self.webhook_secret = match raw.trim() {
                    "" | "generated" => None,
                    secret => {
                        // Checked here so a bad secret stops the start, never the first delivery.
                        WebhookSigner::from_secret(secret)?;
                        Some(Secret::new(secret))
                    }
                }
            }
            "callback.allow_private" => self.callback.policy.allow_private = parse_bool(raw)?,
            "callback.allowed_hosts" => {
                self.callback.policy.allowed_hosts = match raw.trim() {
                    "" | "any" | "*" => Vec::new(),
                    hosts => hosts
                        .split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .collect(),
                }
            }
            "callback.token_keys" => {
                self.callback.token_keys = match raw.trim() {
                    "" | "generated" => None,
                    keys => {
                        Keyring::parse(keys)?;
                        Some(Secret::new(keys))
                    }
                }
            }
            "callback.body_limit" => self.callback.body_limit = parse_size(raw)?,
            "delivery.schedule" => {
                let schedule: Vec<Duration> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(duration::parse)
                    .collect::<Result<_, _>>()?;
                if schedule.is_empty() {
                    return Err(format!("{raw:?} is not a list of waits like 0s,5s,5m"));
                }
                self.delivery.schedule = schedule;
            }
            "delivery.timeout" => self.delivery.timeout = positive_duration(raw)?,
            "delivery.workers" => self.delivery.workers = count(raw)? as usize,
            "delivery.retry_after_cap" => self.delivery.retry_after_cap = duration::parse(raw)?,
            "log_format" => {
                self.log_format = match raw {
                    "pretty" => LogFormat::Pretty,
                    "json" => LogFormat::Json,
                    _ => return Err(format!("{raw:?} is not a log format (pretty or json)")),
                }
            }
            _ => unreachable!("every key in KEYS is handled"),
        }
        Ok(())
    }
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(format!("{raw:?} is not true or false")),
    }
}

/// A whole number of at least 1.
fn count(raw: &str) -> Result<u32, String> {
    match raw.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{raw:?} is not a whole number of at least 1")),
    }
}

/// A whole number of at least 1, or `unlimited`.
fn optional_count(raw: &str) -> Result<Option<u32>, String> {
    match raw.trim() {
        "" | "unlimited" | "none" => Ok(None),
        _ => count(raw)
            .map(Some)
            .map_err(|_| format!("{raw:?} is not a whole number of at least 1, or unlimited")),
    }
}

/// Parse a size like `1MiB`, `512KiB` or `65536` (bytes).
fn parse_size(raw: &str) -> Result<usize, String> {
    let text = raw.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{raw:?} is not a size like 65536, 512KiB or 1MiB")),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{raw:?} is not a size like 65536, 512KiB or 1MiB"))
}

/// Parse a comma-separated list of route classes (`submission`, `read`, `other`), or
/// `none` for the empty list.
fn parse_classes(raw: &str) -> Result<Vec<RouteClass>, String> {
    let mut classes = Vec::new();
    for word in raw
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty() && *w != "none")
    {
        classes.push(match word {
            "submission" => RouteClass::Submission,
            "read" => RouteClass::Read,
            "other" => RouteClass::Other,
            _ => {
                return Err(format!(
                    "{word:?} is not a route class (submission, read, other or none)"
                ));
            }
        });
    }
    Ok(classes)
}

fn positive_duration(raw: &str) -> Result<Duration, String> {
    let value = duration::parse(raw)?;
    if value.is_zero() {
        return Err(format!("{raw:?} must be longer than zero"));
    }
    Ok(value)
}

/// Parse an `http://` or `https://` base URL with a host, like `https://api.cometapi.com`.
fn parse_base_url(raw: &str) -> Result<Uri, String> {
    let expected = || format!("{raw:?} is not an http(s) base URL like https://api.cometapi.com");
    let uri: Uri = raw.parse().map_err(|_| expected())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => {}
        _ => return Err(expected()),
    }
    if uri.query().is_some() {
        return Err(format!("{raw:?} must not have a query string"));
    }
    Ok(uri)
}

/// Flatten a TOML document into `dotted.key -> value text`, refusing keys not in [`KEYS`],
/// and take out the structured `[[retry.rules]]`.
fn flatten_toml(text: &str) -> Result<(BTreeMap<String, String>, Vec<RuleSpec>), ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
    let rules = match table
        .get_mut("retry")
        .and_then(|r| r.as_table_mut())
        .and_then(|r| r.remove("rules"))
    {
        Some(value) => value
            .try_into::<Vec<RuleSpec>>()
            .map_err(|e| ConfigError::Invalid {
                key: "retry.rules",
                problem: e.to_string().trim().to_owned(),
                origin: Origin::File,
            })?,
        None => Vec::new(),
    };
    let mut out = BTreeMap::new();
    flatten_into(&table, "", &mut out)?;
    Ok((out, rules))
}

fn flatten_into(
    table: &toml::Table,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten_into(inner, &key, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list of words, such as route classes, reads like the flag's `a,b`.
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
                .iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        if !KEYS.iter().any(|k| k.toml == key) {
            return Err(ConfigError::UnknownKey(key));
        }
        out.insert(key, text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let config = Config::default();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.upstream, "https://api.cometapi.com");
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.request_timeout, Duration::from_secs(60));
        assert_eq!(config.log_format, LogFormat::Pretty);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file =
            "listen = \"127.0.0.1:1001\"\nupstream = \"http://file.example\"\nconnect_timeout = \"3s\"\n";
        let env = |name: &str| match name {
            "RUNWAY_PROXY_LISTEN" => Some("127.0.0.1:1002".to_owned()),
            "RUNWAY_PROXY_UPSTREAM" => Some("http://env.example".to_owned()),
            _ => None,
        };
        let flags = Overrides::from([("listen", "127.0.0.1:1003".to_owned())]);
        let config = Config::load(Some(file), &env, &flags).unwrap();
        assert_eq!(config.listen.port(), 1003, "flag wins");
        assert_eq!(config.upstream, "http://env.example", "env beats file");
        assert_eq!(
            config.connect_timeout,
            Duration::from_secs(3),
            "file beats default"
        );
        assert_eq!(config.request_timeout, Duration::from_secs(60), "default");
    }

    #[test]
    fn invalid_value_names_key_form_and_origin() {
        let flags = Overrides::from([("listen", "abc".to_owned())]);
        let err = Config::load(None, &no_env, &flags).unwrap_err().to_string();
        assert_eq!(
            err,
            "listen: \"abc\" is not a socket address like 127.0.0.1:8080 (set by --listen)"
        );

        let env = |name: &str| (name == "RUNWAY_PROXY_REQUEST_TIMEOUT").then(|| "30".to_owned());
        let err = Config::load(None, &env, &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("request_timeout: \"30\" has no unit"), "{err}");
        assert!(err.ends_with("(set by $RUNWAY_PROXY_REQUEST_TIMEOUT)"), "{err}");

        for upstream in ["ftp://x", "api.cometapi.com", "http://", "https://a?b=c"] {
            let flags = Overrides::from([("upstream", upstream.to_owned())]);
            let err = Config::load(None, &no_env, &flags).unwrap_err().to_string();
            assert!(err.starts_with("upstream: "), "{upstream}: {err}");
        }
    }

    #[test]
    fn file_errors_are_clear() {
        let err = Config::load(Some("listen = "), &no_env, &Overrides::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Toml(_)), "{err}");
        let err = Config::load(Some("lsten = \"1.2.3.4:5\""), &no_env, &Overrides::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file: unknown key \"lsten\" (see the README's configuration table)"
        );
        let err = Config::load(Some("log_format = \"xml\""), &no_env, &Overrides::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "log_format: \"xml\" is not a log format (pretty or json) (set by the config file)"
        );
    }

    #[test]
    fn retry_settings_and_rules_load() {
        let file = r#"
            [retry]
            max_attempts = 3
            deadline = "10s"
            unknown_outcome = ["read", "submission"]
            body_limit = "64KiB"

            [[retry.rules]]
            name = "quota"
            msg_contains = "quota"
            action = "fail"
        "#;
        let env = |name: &str| (name == "RUNWAY_PROXY_RETRY_BASE_DELAY").then(|| "10ms".to_owned());
        let config = Config::load(Some(file), &env, &Overrides::new()).unwrap();
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.retry.deadline, Duration::from_secs(10));
        assert_eq!(config.retry.base_delay, Duration::from_millis(10));
        assert_eq!(config.retry.body_limit, 64 * 1024);
        assert_eq!(
            config.retry.retry_unknown_outcome,
            [RouteClass::Read, RouteClass::Submission]
        );
        assert_ne!(config.retry.rules, Rules::default(), "the user rule is in front");

        let bad = "[[retry.rules]]\naction = \"retry\"\n";
        let err = Config::load(Some(bad), &no_env, &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("retry.rules: rule 0: a rule needs"), "{err}");
        let bad = "[[retry.rules]]\nstatus = [500]\naction = \"sometimes\"\n";
        let err = Config::load(Some(bad), &no_env, &Overrides::new())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("retry.rules: "), "{err}");
        let flags = Overrides::from([("retry.max_attempts", "0".to_owned())]);
        let err = Config::load(None, &no_env, &flags).unwrap_err().to_string();
        assert!(err.starts_with("retry.max_attempts: \"0\""), "{err}");
        let flags = Overrides::from([("retry.unknown_outcome", "writes".to_owned())]);
        assert!(Config::load(None, &no_env, &flags).is_err());
    }

    #[test]
    fn limit_settings_load() {
        let file = "[limit]\nrate = \"5/s\"\nsubmit_rate = \"300/min burst 10\"\nmax_concurrency = 5\n";
        let flags = Overrides::from([("limit.max_wait", "2s".to_owned())]);
        let config = Config::load(Some(file), &no_env, &flags).unwrap();
        assert_eq!(config.limit.global.unwrap().to_string(), "5/s");
        assert_eq!(config.limit.submit.unwrap().to_string(), "300/min burst 10");
        assert_eq!(config.limit.max_concurrency, Some(5));
        assert_eq!(config.limit.max_wait, Duration::from_secs(2));
        assert_eq!(config.limit.per_key, None, "unset is unlimited");
        let flags = Overrides::from([("limit.rate", "fast".to_owned())]);
        let err = Config::load(None, &no_env, &flags).unwrap_err().to_string();
        assert!(
            err.starts_with("limit.rate: \"fast\" is not a rate like 5/s"),
            "{err}"
        );
        let flags = Overrides::from([("limit.max_concurrency", "0".to_owned())]);
        assert!(Config::load(None, &no_env, &flags).is_err());
    }

    #[test]
    fn relay_settings_load_and_secrets_stay_hidden() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let file = format!(
            "webhook_secret = \"{secret}\"\n[delivery]\nschedule = [\"0s\", \"200ms\", \"1s\"]\n[callback]\nallow_private = true\n"
        );
        let config = Config::load(Some(&file), &no_env, &Overrides::new()).unwrap();
        assert_eq!(
            config.delivery.schedule,
            [0, 200, 1000].map(Duration::from_millis)
        );
        assert!(config.callback.policy.allow_private);
        assert_eq!(config.webhook_secret.as_ref().map(Secret::expose), Some(secret));
        assert!(
            !format!("{config:?}").contains("MfKQ9r8"),
            "Debug never shows a secret"
        );

        let flags = Overrides::from([("webhook_secret", "whsec_short".to_owned())]);
        assert!(
            Config::load(None, &no_env, &flags)
                .unwrap_err()
                .to_string()
                .starts_with("webhook_secret: ")
        );
        let flags = Overrides::from([("callback.token_keys", "1:short".to_owned())]);
        assert!(Config::load(None, &no_env, &flags).is_err());
        let flags = Overrides::from([("delivery.schedule", "0s,soon".to_owned())]);
        assert!(Config::load(None, &no_env, &flags).is_err());
        let flags = Overrides::from([("public_url", "hooks.example.com".to_owned())]);
        assert!(Config::load(None, &no_env, &flags).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        for bad in ["0", "1MB", "MiB", "-1", "1.5MiB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_key_has_a_distinct_env_and_flag() {
        for (i, a) in KEYS.iter().enumerate() {
            assert_eq!(
                a.env,
                format!("RUNWAY_PROXY_{}", a.flag.replace('-', "_").to_uppercase())
            );
            for b in &KEYS[i + 1..] {
                assert_ne!(a.flag, b.flag);
            }
        }
    }
}
