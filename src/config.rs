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

use crate::duration;

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
        Config::load(None, &|_| None, &empty)
            .unwrap_or_else(|e| panic!("built-in default is invalid: {e}"))
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
        let file_values = match file {
            Some(text) => flatten_toml(text)?,
            None => BTreeMap::new(),
        };
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: Uri::from_static("https://api.cometapi.com"),
            connect_timeout: Duration::ZERO,
            request_timeout: Duration::ZERO,
            shutdown_grace: Duration::ZERO,
            log_format: LogFormat::Pretty,
        };
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

/// Flatten a TOML document into `dotted.key -> value text`, refusing keys not in [`KEYS`].
fn flatten_toml(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
    let mut out = BTreeMap::new();
    flatten_into(&table, "", &mut out)?;
    Ok(out)
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
        let file = "listen = \"127.0.0.1:1001\"\nupstream = \"http://file.example\"\nconnect_timeout = \"3s\"\n";
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
        assert!(
            err.starts_with("request_timeout: \"30\" has no unit"),
            "{err}"
        );
        assert!(
            err.ends_with("(set by $RUNWAY_PROXY_REQUEST_TIMEOUT)"),
            "{err}"
        );

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
        let err =
            Config::load(Some("lsten = \"1.2.3.4:5\""), &no_env, &Overrides::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file: unknown key \"lsten\" (see the README's configuration table)"
        );
        let err =
            Config::load(Some("log_format = \"xml\""), &no_env, &Overrides::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "log_format: \"xml\" is not a log format (pretty or json) (set by the config file)"
        );
    }

    #[test]
    fn every_key_has_a_distinct_env_and_flag() {
        for (i, a) in KEYS.iter().enumerate() {
            assert_eq!(
                a.env,
                format!("RUNWAY_PROXY_{}", a.toml.replace('.', "_").to_uppercase())
            );
            for b in &KEYS[i + 1..] {
                assert_ne!(a.flag, b.flag);
            }
        }
    }
}
