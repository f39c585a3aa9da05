//! The sidecar's configuration: one typed [`Config`], read from defaults, a TOML file,
//! environment variables and command-line flags, in that order of precedence (a flag
//! beats the environment, which beats the file, which beats the default).
//!
//! Every setting is described once, in [`KEYS`]: its TOML key, environment variable,
//! flag, how its value is read and shown; defaults come from [`Config::default`]. The CLI
//! builds its flags from that table and the README's table is checked against it, so the
//! three can't drift apart. Each settings type checks itself (`validate`), and
//! [`Config::validate`] calls them all, so an embedder building a layer by hand gets the
//! same checks and messages as the CLI. Available with the `config` feature.
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

mod file;
mod keys;
#[cfg(test)]
mod tests;
mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

pub use keys::{HEADINGS, KEYS, Key};
pub use values::ValueError;

/// An address to listen on, as every `*listen` setting reads it: `127.0.0.1:8080`,
/// `[::1]:8080`, or a host name and port (`localhost:8080`), resolved now.
pub fn listen_address(raw: &str) -> Result<std::net::SocketAddr, ValueError> {
    values::socket_addr(raw, "127.0.0.1:8080")
}

pub use crate::callback::CallbackSettings;
use crate::guard::GuardSettings;
use crate::idempotency::IdempotencySettings;
use crate::limit::LimitSettings;
use crate::relay::{DatabaseSettings, DeliverySettings};
use crate::retry::{RetrySettings, Rules};
use crate::server::ConnectionLimits;
pub use crate::settings::Secret;
use crate::settings::{InvalidSetting, check};
use crate::tasks::WatchSettings;
use crate::trace::TraceSettings;

/// The sidecar's settings. Build it with [`Config::load`] or start from
/// [`Config::default`]. Field names are the config keys.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Address the proxy listens on for the application's calls.
    pub listen: SocketAddr,
    /// Serving threads for `listen`, each with its own runtime, listener and upstream
    /// pool; 0: one per available core.
    pub threads: usize,
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
    /// Log one line per proxied request at info (otherwise at debug).
    pub access_log: bool,
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
    /// The PostgreSQL outbox replicas share (`[database]`); no URL: SQLite in `data_dir`.
    pub database: DatabaseSettings,
    /// The secret that signs relayed webhooks; `None`: generated once, kept in `data_dir`.
    pub webhook_secret: Option<Secret>,
    /// The `callback_url` rewrite (`[callback]`).
    pub callback: CallbackSettings,
    /// Webhook delivery (`[delivery]`).
    pub delivery: DeliverySettings,
    /// `Idempotency-Key` records (`[idempotency]`).
    pub idempotency: IdempotencySettings,
    /// The task watcher (`[watch]`).
    pub watch: WatchSettings,
    /// Task limits and budgets (`[guard]`, `[[guard.keys]]`).
    pub guard: GuardSettings,
    /// Bounds on each listener's connections (`[connections]`).
    pub connections: ConnectionLimits,
    /// OpenTelemetry trace export (`[otel]`).
    pub otel: TraceSettings,
    /// The token every admin path but `healthz` and `readyz` requires
    /// (`Authorization: Bearer ...`); `None`: admin paths are open on a loopback listener,
    /// and the relay's refused on any other.
    pub admin_token: Option<Secret>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            threads: 0,
            upstream: Uri::from_static("https://api.cometapi.com"),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            log_format: LogFormat::Auto,
            access_log: false,
            retry: RetrySettings::default(),
            limit: LimitSettings::default(),
            webhook_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            public_url: None,
            data_dir: PathBuf::from("./runway-proxy-data"),
            database: DatabaseSettings::default(),
            webhook_secret: None,
            callback: CallbackSettings::default(),
            delivery: DeliverySettings::default(),
            idempotency: IdempotencySettings::default(),
            watch: WatchSettings::default(),
            guard: GuardSettings::default(),
            connections: ConnectionLimits::default(),
            otel: TraceSettings::default(),
            admin_token: None,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Pretty when stderr is a terminal, JSON otherwise (a file, a pipe, a log collector).
    Auto,
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Values given on the command line, by TOML key name.
pub type Overrides = BTreeMap<&'static str, String>;

/// Where each setting came from, by TOML key; a key that is not here has its default.
pub type Origins = BTreeMap<&'static str, Origin>;

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
    /// A value does not parse, or is out of range.
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

impl From<InvalidSetting> for ConfigError {
    fn from(invalid: InvalidSetting) -> Self {
        ConfigError::Invalid {
            key: invalid.key,
            problem: invalid.problem,
            origin: Origin::Default,
        }
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

    /// Build a configuration from a TOML document, an environment lookup and flag values,
    /// and check it.
    pub fn load(
        file: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        Self::load_with_origins(file, env, flags).map(|(config, _)| config)
    }

    /// [`Config::load`], also telling where each setting that is not its default came
    /// from (`runway-proxy config check` prints it).
    pub fn load_with_origins(
        file: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<(Config, Origins), ConfigError> {
        let (file_values, rules, keys) = match file {
            Some(text) => file::flatten_toml(text)?,
            None => (BTreeMap::new(), Vec::new(), Vec::new()),
        };
        let mut config = Config::default();
        config.guard.keys = keys;
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
        let mut origins = BTreeMap::new();
        for key in KEYS {
            let (raw, origin) = if let Some(value) = flags.get(key.toml) {
                (value.clone(), Origin::Flag(key.flag))
            } else if let Some(value) = env(key.env) {
                (value, Origin::Env(key.env))
            } else if let Some(value) = file_values.get(key.toml) {
                (value.clone(), Origin::File)
            } else {
                continue;
            };
            key.set(&mut config, &raw)
                .map_err(|problem| ConfigError::Invalid {
                    key: key.toml,
                    problem: problem.to_string(),
                    origin: origin.clone(),
                })?;
            origins.insert(key.toml, origin);
        }
        config.validate().map_err(|invalid| ConfigError::Invalid {
            origin: origins.get(invalid.key).cloned().unwrap_or(Origin::Default),
            key: invalid.key,
            problem: invalid.problem,
        })?;
        Ok((config, origins))
    }

    /// Check every setting and the relations between them: each settings type's own
    /// `validate`, then the sidecar's.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.retry.validate()?;
        self.limit.validate()?;
        self.delivery.validate()?;
        self.idempotency.validate()?;
        self.watch.validate()?;
        self.guard.validate()?;
        check(
            self.watch.ledger_retention >= self.guard.budget_window,
            "watch.ledger_retention",
            || "must be at least guard.budget_window: the budgets count the tasks the ledger keeps".into(),
        )?;
        self.connections.validate()?;
        self.database.validate()?;
        self.otel.validate()?;
        if self.database.url.is_some() {
            // Generated ones are made per data directory: each replica would sign with its
            // own secret, and refuse the callback tokens the others minted.
            check(
                self.webhook_secret.is_some() && self.callback.token_keys.is_some(),
                "database.url",
                || {
                    "replicas sharing a database must sign with one secret and verify with one set of \
                     keys: set webhook_secret and callback.token_keys too (the same on every replica)"
                        .into()
                },
            )?;
        }
        self.callback.validate()?;
        if let Some(token) = &self.admin_token {
            check(token.expose().len() >= 16, "admin_token", || {
                "must be at least 16 characters (use a random one)".into()
            })?;
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            check(!value.is_zero(), key, || "must be longer than zero".into())?;
        }
        check(
            self.listen.port() == 0 || self.listen != self.webhook_listen,
            "webhook_listen",
            || {
                format!(
                    "{} is listen's address too: the webhook listener needs a port of its own",
                    self.webhook_listen
                )
            },
        )
    }
}
