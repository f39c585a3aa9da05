//! The sidecar's configuration: one typed [`Config`], read from defaults, a TOML file,
//! environment variables and command-line flags, in that order of precedence (a flag
//! beats the environment, which beats the file, which beats the default).
//!
//! Every setting is declared once, next to its field, in its settings type's `SETTINGS`
//! table (its TOML key, environment variable, flag, help, heading, whether a reload
//! changes it, how its value is read and shown); [`KEYS`] lays those tables end to end
//! and defaults come from [`Config::default`]. The CLI builds its flags from [`KEYS`] and
//! the README's table is checked against it, so the three can't drift apart. Each settings type checks itself (`validate`), and
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
mod load;
#[cfg(test)]
mod tests;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

pub use keys::{HEADINGS, KEYS, Key};
pub use load::{ConfigError, Origin, Origins, Overrides};

use crate::archive::ArchiveSettings;
pub use crate::callback::CallbackSettings;
use crate::guard::GuardSettings;
use crate::idempotency::IdempotencySettings;
use crate::limit::LimitSettings;
use crate::relay::{DatabaseSettings, DeliverySettings};
use crate::retry::RetrySettings;
use crate::server::ConnectionLimits;
pub use crate::settings::{Heading, Secret, Setting, ValueError};
use crate::settings::{parse, settings, show};
use crate::tasks::WatchSettings;
use crate::trace::TraceSettings;

/// An address to listen on, as every `*listen` setting reads it: `127.0.0.1:8080`,
/// `[::1]:8080`, or a host name and port (`localhost:8080`), resolved now.
pub fn listen_address(raw: &str) -> Result<SocketAddr, ValueError> {
    values::listen_address(raw)
}

/// A size as every size setting reads it: `65536` (bytes), `512KiB`, `16MiB`, `2GiB`.
pub fn byte_size(raw: &str) -> Result<u64, ValueError> {
    parse::size(raw).map(|bytes| bytes as u64)
}

settings! {
    /// The sidecar's settings. Build it with [`Config::load`] or start from
    /// [`Config::default`]. Field names are the config keys.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct Config {
        /// Address the proxy listens on for the application's calls.
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        /// Serving threads for `listen`, each with its own runtime, listener and upstream
        /// pool; 0: one per available core.
        pub threads: usize = 0,
        /// Base URL of CometAPI (or the stand-in); paths and queries are appended unchanged.
        pub upstream: Uri = Uri::from_static("https://api.cometapi.com"),
        /// How long to wait for a TCP (and TLS) connection to the upstream.
        pub connect_timeout: Duration = Duration::from_secs(10),
        /// How long to wait for the upstream's response headers after sending a request.
        pub request_timeout: Duration = Duration::from_secs(60),
        /// On SIGINT or SIGTERM, how long in-flight requests may take to finish.
        pub shutdown_grace: Duration = Duration::from_secs(30),
        /// Log line format.
        pub log_format: LogFormat = LogFormat::Auto,
        /// Log one line per proxied request at info (otherwise at debug).
        pub access_log: bool = false,
        /// The retry middleware's settings and rule table (`[retry]`, `[[retry.rules]]`).
        pub retry: RetrySettings = RetrySettings::default(),
        /// The rate limiter's quotas and bounds (`[limit]`).
        pub limit: LimitSettings = LimitSettings::default(),
        /// Address of the webhook listener.
        pub webhook_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8081)),
        /// Base URL the upstream uses to reach the webhook listener; `None`: derived from
        /// the listener's bound address.
        pub public_url: Option<String> = None,
        /// Directory of the outbox database and generated secrets.
        pub data_dir: PathBuf = PathBuf::from("./runway-proxy-data"),
        /// The PostgreSQL outbox replicas share (`[database]`); no URL: SQLite in `data_dir`.
        pub database: DatabaseSettings = DatabaseSettings::default(),
        /// The secret that signs relayed webhooks; `None`: generated once, kept in `data_dir`.
        pub webhook_secret: Option<Secret> = None,
        /// The `callback_url` rewrite (`[callback]`).
        pub callback: CallbackSettings = CallbackSettings::default(),
        /// Webhook delivery (`[delivery]`).
        pub delivery: DeliverySettings = DeliverySettings::default(),
        /// `Idempotency-Key` records (`[idempotency]`).
        pub idempotency: IdempotencySettings = IdempotencySettings::default(),
        /// The task watcher (`[watch]`).
        pub watch: WatchSettings = WatchSettings::default(),
        /// Task limits and budgets (`[guard]`, `[[guard.keys]]`).
        pub guard: GuardSettings = GuardSettings::default(),
        /// Bounds on each listener's connections (`[connections]`).
        pub connections: ConnectionLimits = ConnectionLimits::default(),
        /// OpenTelemetry trace export (`[otel]`).
        pub otel: TraceSettings = TraceSettings::default(),
        /// Copies of succeeded tasks' outputs (`[archive]`).
        pub archive: ArchiveSettings = ArchiveSettings::default(),
        /// The token every admin path but `healthz` and `readyz` requires
        /// (`Authorization: Bearer ...`); `None`: admin paths are open on a loopback listener,
        /// and the relay's refused on any other.
        pub admin_token: Option<Secret> = None,
    }
    rows {
        listen: restart, under Listeners,
            env: "RUNWAY_PROXY_LISTEN",
            flag: "listen",
            doc: "Address the proxy listens on for your application's calls.",
            parse: values::listen_address, show: show::plain;
        threads: restart, under Listeners,
            env: "RUNWAY_PROXY_THREADS",
            flag: "threads",
            doc: "Serving threads, each with its own listener, runtime and upstream pool (auto: one per core).",
            parse: values::threads, show: values::show_threads;
        upstream: restart, under Upstream,
            env: "RUNWAY_PROXY_UPSTREAM",
            flag: "upstream",
            doc: "Base URL requests are forwarded to, path and query unchanged.",
            parse: values::base_url, show: values::show_upstream;
        connect_timeout: restart, under Upstream,
            env: "RUNWAY_PROXY_CONNECT_TIMEOUT",
            flag: "connect-timeout",
            doc: "Time allowed to open a TCP and TLS connection to the upstream.",
            parse: parse::positive_duration, show: show::duration;
        request_timeout: restart, under Upstream,
            env: "RUNWAY_PROXY_REQUEST_TIMEOUT",
            flag: "request-timeout",
            doc: "Time allowed for the upstream's response headers once the request is sent.",
            parse: parse::positive_duration, show: show::duration;
        shutdown_grace: restart, under Listeners,
            env: "RUNWAY_PROXY_SHUTDOWN_GRACE",
            flag: "shutdown-grace",
            doc: "On SIGINT or SIGTERM, time in-flight requests get to finish.",
            parse: parse::duration, show: show::duration;
        log_format: restart, under Observability,
            env: "RUNWAY_PROXY_LOG_FORMAT",
            flag: "log-format",
            doc: "Log line format: pretty, json, or auto (pretty on a terminal, json otherwise). The level comes from RUST_LOG (default info).",
            parse: parse::parsed, show: show::plain;
        access_log: restart, under Observability,
            env: "RUNWAY_PROXY_ACCESS_LOG",
            flag: "access-log",
            doc: "One log line per proxied request at info (off: at debug). Refusals, retries and webhooks are logged either way.",
            parse: parse::boolean, show: show::plain;
        webhook_listen: restart, under Listeners,
            env: "RUNWAY_PROXY_WEBHOOK_LISTEN",
            flag: "webhook-listen",
            doc: "Address of the webhook listener (in production, the public one).",
            parse: values::listen_address, show: show::plain;
        public_url: restart, under Callbacks,
            env: "RUNWAY_PROXY_PUBLIC_URL",
            flag: "public-url",
            doc: "Base URL the upstream uses to reach the webhook listener (auto: http://{webhook_listen}).",
            parse: values::public_url, show: values::show_public_url;
        data_dir: restart, under Stores,
            env: "RUNWAY_PROXY_DATA_DIR",
            flag: "data-dir",
            doc: "Directory of the outbox database and generated secrets.",
            parse: values::data_dir, show: values::show_data_dir;
        webhook_secret: restart, under Callbacks,
            env: "RUNWAY_PROXY_WEBHOOK_SECRET",
            flag: "webhook-secret",
            doc: "whsec_<base64> secret that signs relayed webhooks (generated: made once, kept in data_dir).",
            parse: values::webhook_secret, show: show::generated;
        admin_token: live, under Observability,
            env: "RUNWAY_PROXY_ADMIN_TOKEN",
            flag: "admin-token",
            doc: "Bearer token every admin path but /-/healthz and /-/readyz requires (none: open on loopback only).",
            parse: values::optional_secret, show: values::show_secret;
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

impl std::str::FromStr for LogFormat {
    type Err = ValueError;

    fn from_str(raw: &str) -> Result<Self, ValueError> {
        match raw.trim() {
            "auto" => Ok(LogFormat::Auto),
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            _ => Err(ValueError::Form(format!(
                "{raw:?} is not a log format (auto, pretty or json)"
            ))),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Auto => "auto",
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        })
    }
}
