//! Putting a new configuration in force while the proxy runs (SIGHUP, `POST /-/reload`),
//! without dropping a request in flight or one waiting its turn.
//!
//! The settings a reload changes live are the ones whose state can be swapped under
//! running requests: the retry settings and rules, the rate limits and task guards, the
//! callback allow list and token keys, the admin token, the delivery schedule and
//! workers, and the trace sampler ([`is_live`]). The rest (listeners, the data dir, store
//! URLs, the upstream and its timeouts, the webhook secret, ...) are read at start: a
//! reload that changes them names them in a warning and leaves them as they were. A new configuration that does
//! not check out changes nothing: the reason is logged and counted.
//!
//! Every reload runs on the runtime that [`Proxy::run`](super::Proxy::run) runs on, one
//! at a time, so two reloads never interleave and new delivery workers start where the
//! old ones ran.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::body::BoxError;
use crate::callback::{Callbacks, KeyringError};
use crate::config::{Config, ConfigError, KEYS, Overrides};
use crate::guard::TaskGuardLayer;
use crate::limit::RateLimitLayer;
use crate::metrics::{Counter, Gauge, MetricSet, write_family, write_one};
use crate::relay::Relay;
use crate::retry::RetryLayer;
use crate::settings::InvalidSetting;
use crate::sidecar::{AdminAccess, ConfigReload};
use crate::trace::Tracer;

/// Where the configuration is read from again at each reload: the file, the process's
/// environment (as it is now) and the flags the process was started with.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    path: Option<PathBuf>,
    flags: Overrides,
}

impl ConfigSource {
    /// The file at `path` (if any) under the environment and `flags`, as at start.
    pub fn new(path: Option<PathBuf>, flags: Overrides) -> Self {
        ConfigSource { path, flags }
    }

    /// Read and check the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        Config::load_from(self.path.as_deref(), &env, &self.flags)
    }
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// Settings now in force with new values (config keys).
    pub changed: Vec<&'static str>,
    /// Settings with new values that take effect only at the next start, left as they were.
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// No [`ConfigSource`] was given to read from ([`Proxy::reload_from`](super::Proxy::reload_from)).
    #[error("the proxy was not told where its configuration comes from")]
    NoSource,
    /// The new configuration does not check out.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A setting is out of range.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// The new token keys are not valid.
    #[error("callback.token_keys: {0}")]
    TokenKeys(#[from] KeyringError),
    /// The proxy is shutting down (or not running yet).
    #[error("the proxy is not running")]
    Stopped,
}

pub(super) enum Request {
    /// Read the source again.
    FromSource,
    /// Put this configuration in force.
    Config(Box<Config>),
}

pub(super) type Ask = (Request, oneshot::Sender<Result<Reloaded, ReloadError>>);

/// Asks the running proxy to reload. Cheap to clone; SIGHUP and `POST /-/reload` both
/// go through it.
#[derive(Clone, Debug)]
pub struct Reloader {
    asks: mpsc::Sender<Ask>,
    source: Arc<Mutex<Option<ConfigSource>>>,
}

impl Reloader {
    /// Read the configuration from its source again and put it in force.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.ask(Request::FromSource).await
    }

    /// Put `config` in force (the settings that can change live; see the module docs).
    pub async fn apply(&self, config: Config) -> Result<Reloaded, ReloadError> {
        self.ask(Request::Config(Box::new(config))).await
    }

    async fn ask(&self, request: Request) -> Result<Reloaded, ReloadError> {
        let (answer, answered) = oneshot::channel();
        self.asks
            .send((request, answer))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        answered.await.unwrap_or(Err(ReloadError::Stopped))
    }

    pub(super) fn set_source(&self, source: ConfigSource) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    fn source(&self) -> Option<ConfigSource> {
        self.source.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ConfigReload for Reloader {
    fn reload(&self) -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, BoxError>> {
        Box::pin(async move {
            match Reloader::reload(self).await {
                Ok(done) => Ok(serde_json::json!({
                    "status": "reloaded",
                    "changed": done.changed,
                    "restart_needed": done.restart_needed,
                })),
                Err(err) => Err(err.into()),
            }
        })
    }
}

/// Whether a change to `key` takes effect at a reload (otherwise at the next start): the
/// row's `live` in [`KEYS`]. The tables that are no rows (`[[retry.rules]]`,
/// `[[guard.keys]]`) are live too.
pub fn is_live(key: &str) -> bool {
    match key {
        "retry.rules" | "guard.keys" => true,
        _ => KEYS.iter().any(|row| row.toml == key && row.live),
    }
}

/// `runway_proxy_config_reloads_total{result}` and whether the last one took.
#[derive(Debug)]
pub(super) struct ReloadMetrics {
    applied: Counter,
    refused: Counter,
    last_successful: Gauge,
}

impl Default for ReloadMetrics {
    fn default() -> Self {
        let metrics = ReloadMetrics {
            applied: Counter::default(),
            refused: Counter::default(),
            last_successful: Gauge::default(),
        };
        metrics.last_successful.set(1);
        metrics
    }
}

impl MetricSet for ReloadMetrics {
    fn render(&self, out: &mut String) {
        write_family(
            out,
            "runway_proxy_config_reloads_total",
            "counter",
            "Configuration reloads (SIGHUP, POST /-/reload), by result: applied, or refused (the old one stayed).",
            "result",
            [("applied", self.applied.get()), ("refused", self.refused.get())],
        );
        write_one(
            out,
            "runway_proxy_config_last_reload_successful",
            "gauge",
            "1 if the last reload was applied (or there was none), 0 if it was refused.",
            self.last_successful.get(),
        );
    }
}

/// The configuration in force after a reload to `new`: `old`, with the settings that can
/// change live (each row of [`KEYS`] marked `live`, and the tables that are no rows) taken
/// from `new`. Unset token keys keep the old ones (see [`Applier::apply`]).
fn in_force(old: &Config, new: Config) -> Config {
    let mut next = old.clone();
    for key in KEYS.iter().filter(|key| key.live) {
        key.copy(&mut next, &new);
    }
    if new.callback.token_keys.is_none() {
        next.callback.token_keys = old.callback.token_keys.clone();
    }
    // What the file holds as tables, and what only code sets, goes with its table.
    next.retry.rules = new.retry.rules;
    next.guard.keys = new.guard.keys;
    next.limit.slow_wait = new.limit.slow_wait;
    next
}

/// The handles a reload changes, and the configuration in force. Owned by the loop in
/// [`Proxy::run`](super::Proxy::run).
#[derive(Debug)]
pub(super) struct Applier {
    pub(super) current: Config,
    pub(super) retry: RetryLayer,
    pub(super) limit: RateLimitLayer,
    pub(super) guard: Option<TaskGuardLayer>,
    pub(super) callbacks: Callbacks,
    pub(super) access: AdminAccess,
    pub(super) tracer: Tracer,
    pub(super) metrics: Arc<ReloadMetrics>,
}

impl Applier {
    /// Put what can change of `new` in force, everything checked before anything changes.
    fn apply(&mut self, new: Config, relay: &Relay) -> Result<Reloaded, ReloadError> {
        let old = &self.current;
        let mut done = Reloaded::default();
        for key in KEYS {
            if key.differs(old, &new) {
                if key.live {
                    done.changed.push(key.toml);
                } else {
                    done.restart_needed.push(key.toml);
                }
            }
        }
        if new.callback.token_keys.is_none() && old.callback.token_keys.is_some() {
            // Unset means "the keys generated in the data dir", which may never have been
            // made: a reload would mint a new set and stop verifying every token out
            // there. Only a start may fall back to them.
            done.changed.retain(|key| *key != "callback.token_keys");
            done.restart_needed.push("callback.token_keys");
        }
        if old.retry.rules != new.retry.rules {
            done.changed.push("retry.rules");
        }
        if old.guard.keys != new.guard.keys {
            done.changed.push("guard.keys");
        }
        let next = in_force(old, new);
        // Relations between a live setting and one that is not (the ledger's retention
        // and the budget window, say) are checked against what will really be in force.
        next.validate()?;
        let keys = if done.changed.contains(&"callback.token_keys") {
            Some(super::token_keys(&next).map_err(|err| match err {
                super::StartError::TokenKeys { source, .. } => ReloadError::TokenKeys(source),
                other => ReloadError::Setting(InvalidSetting::new("callback.token_keys", other.to_string())),
            })?)
        } else {
            None
        };
        if let Some(url) = &next.watch.official_callback_url {
            next.callback.policy().check(url).map_err(|refused| {
                InvalidSetting::new("callback.allowed_hosts", format!("{url}: {refused}"))
            })?;
        }

        // Everything checks out: nothing below fails for want of a valid value.
        self.retry.reload(next.retry.clone())?;
        self.limit.reload(next.limit.clone())?;
        if let Some(guard) = &self.guard {
            guard.reload(&next.guard, next.limit.wait_bounds())?;
        }
        self.callbacks.set_policy(next.callback.policy());
        if let Some(keys) = keys {
            self.callbacks.set_keys(keys);
        }
        self.access
            .set_token(next.admin_token.as_ref().map(crate::config::Secret::expose));
        relay.reload(next.delivery.clone())?;
        self.tracer.set_sampler(next.otel.sampler, next.otel.sampler_arg);
        self.current = next;
        Ok(done)
    }

    /// Answer reload requests until the proxy stops.
    pub(super) async fn serve(
        mut self,
        mut asks: mpsc::Receiver<Ask>,
        reloader: Reloader,
        relay: &Relay,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let (request, answer) = tokio::select! {
                ask = asks.recv() => match ask {
                    Some(ask) => ask,
                    None => return,
                },
                _ = stopped.wait_for(|s| *s) => return,
            };
            let config = match request {
                Request::Config(config) => Ok(*config),
                Request::FromSource => match reloader.source() {
                    Some(source) => source.load().map_err(ReloadError::from),
                    None => Err(ReloadError::NoSource),
                },
            };
            let outcome = config.and_then(|config| self.apply(config, relay));
            match &outcome {
                Ok(done) => {
                    self.metrics.applied.inc();
                    self.metrics.last_successful.set(1);
                    if done.changed.is_empty() {
                        tracing::info!("configuration reloaded: nothing that can change live has changed");
                    } else {
                        tracing::info!(changed = %done.changed.join(", "), "configuration reloaded");
                    }
                    if !done.restart_needed.is_empty() {
                        tracing::warn!(
                            settings = %done.restart_needed.join(", "),
                            "these settings changed but are read at start only: they keep their old values until \
                             a restart"
                        );
                    }
                }
                Err(err) => {
                    self.metrics.refused.inc();
                    self.metrics.last_successful.set(0);
                    tracing::error!(error = %err, "configuration reload refused; the one in force stays");
                }
            }
            let _ = answer.send(outcome);
        }
    }
}

/// A reloader and the receiving end of its requests.
pub(super) fn channel() -> (Reloader, mpsc::Receiver<Ask>) {
    let (asks, received) = mpsc::channel(8);
    (
        Reloader {
            asks,
            source: Arc::default(),
        },
        received,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value other than the default, valid on its own, for the keys whose values have a
    /// form of their own; every other key takes the first of [`ORDINARY_VALUES`] it reads.
    const OTHER_VALUES: &[(&str, &str)] = &[
        ("listen", "127.0.0.1:9080"),
        ("upstream", "http://127.0.0.1:9090"),
        ("limit.redis_fallback", "refuse"),
        ("webhook_listen", "127.0.0.1:9081"),
        ("public_url", "https://hooks.example.com"),
        ("webhook_secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("callback.token_keys", "1:0123456789abcdef0123456789abcdef"),
        ("otel.headers", "x-api-key=abc"),
        ("otel.sampler", "parentbased_traceidratio"),
        ("log_format", "json"),
    ];

    /// Values of the ordinary forms: a number, a duration, a switch, a size, a quota, a
    /// ratio, a list of route classes.
    const ORDINARY_VALUES: &[&str] = &["3", "7s", "true", "3MiB", "7/s", "0.5", "read,other"];

    /// A value of `key` other than `old`'s, and `old` with it.
    fn another_value(key: &crate::config::Key, old: &Config) -> (&'static str, Config) {
        let special = OTHER_VALUES
            .iter()
            .find(|(name, _)| *name == key.toml)
            .map(|(_, raw)| *raw);
        for raw in special.into_iter().chain(ORDINARY_VALUES.iter().copied()) {
            let mut new = old.clone();
            if key.set(&mut new, raw).is_ok() && key.differs(old, &new) {
                return (raw, new);
            }
        }
        panic!("{}: give it a value in OTHER_VALUES", key.toml);
    }

    /// `is_live` and `in_force` name the live settings twice, once by key and once by
    /// field: a reload that changes one key must put exactly that key in force if it is
    /// live, and nothing at all otherwise.
    #[test]
    fn a_reload_puts_in_force_exactly_the_live_settings() {
        let old = Config::default();
        for key in KEYS {
            let (raw, new) = another_value(key, &old);
            let next = in_force(&old, new.clone());
            let live = key.live;
            let want = if live { &new } else { &old };
            for other in KEYS {
                assert!(
                    !other.differs(&next, want),
                    "a reload changing only {} (to {raw:?}, live: {live}) leaves {} at {:?}, not {:?}",
                    key.toml,
                    other.toml,
                    other.show(&next),
                    other.show(want),
                );
            }
        }
    }
}
