//! The error every settings type's `validate` returns, so an embedder building a layer by
//! hand gets the same checks, and the same messages, as the sidecar's configuration.

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
