//! Reading a [`Config`] from defaults, a TOML file, environment variables and flags, and
//! checking it as a whole.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Config, KEYS, file};
use crate::retry::Rules;
use crate::settings::{InvalidSetting, check, longer_than_zero};

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
        let (file_values, rules, keys, prices) = match file {
            Some(text) => file::flatten_toml(text)?,
            None => (BTreeMap::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        let mut config = Config::default();
        config.guard.keys = keys;
        // A file's price table replaces the shipped one whole.
        if !prices.is_empty() {
            config.guard.prices = prices;
        }
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
        self.archive.validate()?;
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
            longer_than_zero(value, key)?;
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
