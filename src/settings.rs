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
