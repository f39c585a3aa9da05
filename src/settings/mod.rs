//! What every settings type shares: its table of [`Setting`] rows (key, variable, flag,
//! help, heading, live or not, how its value reads and shows), the error its `validate`
//! returns, so an embedder building a layer by hand gets the same checks and messages as
//! the sidecar's configuration, and the values that settings hold ([`Secret`],
//! [`ServiceUrl`], [`Live`]).

pub(crate) mod parse;
mod row;
pub(crate) mod show;

pub use parse::ValueError;
pub use row::{Heading, Setting};
pub(crate) use row::{setters, setting, settings};

/// A setting whose value can't be used.
///
/// `key` is the setting's name in the config file (`retry.max_attempts`), which is also
/// how the README and the CLI's errors name it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct InvalidSetting {
    /// The setting's key in the config file.
    pub key: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

impl InvalidSetting {
    /// `key` is invalid because of `problem`.
    pub fn new(key: &'static str, problem: impl Into<String>) -> Self {
        InvalidSetting {
            key,
            problem: problem.into(),
        }
    }
}

/// `Err` naming `key` unless `ok`.
pub(crate) fn check(
    ok: bool,
    key: &'static str,
    problem: impl FnOnce() -> String,
) -> Result<(), InvalidSetting> {
    if ok {
        Ok(())
    } else {
        Err(InvalidSetting::new(key, problem()))
    }
}

/// `Err` naming `key` unless `value` is longer than zero.
pub(crate) fn longer_than_zero(value: std::time::Duration, key: &'static str) -> Result<(), InvalidSetting> {
    check(!value.is_zero(), key, || "must be longer than zero".into())
}

/// `Err` naming `key` unless `count` is at least 1.
pub(crate) fn at_least_one(count: usize, key: &'static str) -> Result<(), InvalidSetting> {
    check(count > 0, key, || "must be at least 1".into())
}

/// `Err` naming `key` unless `bytes` is at least one byte.
pub(crate) fn at_least_one_byte(bytes: usize, key: &'static str) -> Result<(), InvalidSetting> {
    check(bytes > 0, key, || "must be at least one byte".into())
}

/// The URL of a service that holds shared state (Redis, PostgreSQL). It may carry a
/// password, so it is never printed whole: `Debug` and [`redacted`](Self::redacted) leave
/// the user part out.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceUrl(String);

impl ServiceUrl {
    /// Wrap a URL (the settings that hold it check it in their `validate`).
    pub fn new(url: impl Into<String>) -> Self {
        ServiceUrl(url.into())
    }

    /// The URL itself, for the code that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its user and password, for logs and `config` output.
    pub fn redacted(&self) -> String {
        match self.0.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://…@{host}"),
                None => self.0.clone(),
            },
            None => "(not a URL)".to_owned(),
        }
    }
}

impl std::fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceUrl({})", self.redacted())
    }
}

/// Settings that can be replaced while requests use them (a reload): readers take the
/// current value at no more cost than an `Arc` clone, without a lock; a writer swaps in
/// a new one and wakes whoever waits on [`changed`](Live::changed). A request that took a
/// value keeps it to its end, so each request sees one consistent set of settings.
/// Clones share the value.
pub struct Live<T> {
    shared: std::sync::Arc<LiveShared<T>>,
}

struct LiveShared<T> {
    value: arc_swap::ArcSwap<T>,
    changed: tokio::sync::Notify,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live {
            shared: std::sync::Arc::clone(&self.shared),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Live").field(&*self.get()).finish()
    }
}

impl<T> Live<T> {
    /// Start with `value`.
    pub fn new(value: T) -> Self {
        Live {
            shared: std::sync::Arc::new(LiveShared {
                value: arc_swap::ArcSwap::from_pointee(value),
                changed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Start with a value already shared.
    pub fn from_arc(value: std::sync::Arc<T>) -> Self {
        Live {
            shared: std::sync::Arc::new(LiveShared {
                value: arc_swap::ArcSwap::new(value),
                changed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The value in force now.
    pub fn get(&self) -> std::sync::Arc<T> {
        self.shared.value.load_full()
    }

    /// Call `read` with the value in force now, without taking a reference count: for
    /// short, synchronous uses on the request path (no `.await` inside).
    pub fn with<R>(&self, read: impl FnOnce(&T) -> R) -> R {
        read(&self.shared.value.load())
    }

    /// Put `value` in force, and wake everything waiting on [`changed`](Live::changed).
    pub fn set(&self, value: T) {
        self.shared.value.store(std::sync::Arc::new(value));
        self.shared.changed.notify_waiters();
    }

    /// Resolves at the next [`set`](Live::set) after this call (not one before it: take
    /// this before reading the value it guards).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.changed.notified()
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
