//! Reading setting values as flags, environment variables and the config file write
//! them; the rows of each settings type name these (`parse: parse::size`).

use std::time::Duration;

use super::ServiceUrl;
use crate::duration::{self, DurationError};
use crate::route::RouteClass;

/// A value that does not parse as its setting's type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not a duration.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// Not what the setting's own type reads (a quota, a keyring, a webhook secret, a
    /// sampler...); the source says what is wrong.
    #[error(transparent)]
    Invalid(Box<dyn std::error::Error + Send + Sync>),
    /// Not of the expected form (the message quotes the value and says the form).
    #[error("{0}")]
    Form(String),
}

impl ValueError {
    /// A value its own type's parser refused, for that error.
    pub fn invalid(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ValueError::Invalid(Box::new(source))
    }
}

fn form(message: String) -> ValueError {
    ValueError::Form(message)
}

/// Any text, trimmed.
pub(crate) fn text(raw: &str) -> Result<String, ValueError> {
    Ok(raw.trim().to_owned())
}

/// Text, or nothing (`none` or empty).
pub(crate) fn optional_text(raw: &str) -> Result<Option<String>, ValueError> {
    Ok(match raw.trim() {
        "" | "none" => None,
        text => Some(text.to_owned()),
    })
}

/// What the value's own `FromStr` makes of the text.
pub(crate) fn parsed<T>(raw: &str) -> Result<T, ValueError>
where
    T: std::str::FromStr,
    T::Err: Into<ValueError>,
{
    raw.parse().map_err(Into::into)
}

/// A service's URL, or none (`none` or empty). Checked by the settings' `validate`.
pub(crate) fn service_url(raw: &str) -> Result<Option<ServiceUrl>, ValueError> {
    Ok(optional_text(raw)?.map(ServiceUrl::new))
}

pub(crate) fn boolean(raw: &str) -> Result<bool, ValueError> {
    match raw.trim() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(form(format!("{raw:?} is not true or false"))),
    }
}

/// A whole number.
pub(crate) fn number<T: std::str::FromStr>(raw: &str) -> Result<T, ValueError> {
    raw.trim()
        .parse()
        .map_err(|_| form(format!("{raw:?} is not a whole number")))
}

/// A whole number of at least 1.
pub(crate) fn count<T: std::str::FromStr + Default + PartialOrd>(raw: &str) -> Result<T, ValueError> {
    match raw.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(form(format!("{raw:?} is not a whole number of at least 1"))),
    }
}

/// A whole number of at least 1, or `unlimited`.
pub(crate) fn optional_count(raw: &str) -> Result<Option<u32>, ValueError> {
    match raw.trim() {
        "" | "unlimited" | "none" => Ok(None),
        _ => count(raw).map(Some).map_err(|_| {
            form(format!(
                "{raw:?} is not a whole number of at least 1, or unlimited"
            ))
        }),
    }
}

/// A whole number, 0 included (a budget of nothing), or `unlimited`.
pub(crate) fn optional_amount(raw: &str) -> Result<Option<u64>, ValueError> {
    match raw.trim() {
        "" | "unlimited" | "none" => Ok(None),
        text => text
            .replace('_', "")
            .parse::<u64>()
            .map(Some)
            .map_err(|_| form(format!("{raw:?} is not a whole number, or unlimited"))),
    }
}

pub(crate) fn percentage(raw: &str) -> Result<f32, ValueError> {
    raw.trim()
        .parse()
        .map_err(|_| form(format!("{raw:?} is not a percentage from 0 to 1000")))
}

/// A size like `1MiB`, `512KiB` or `65536` (bytes).
pub(crate) fn size(raw: &str) -> Result<usize, ValueError> {
    let text = raw.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(form(format!("{raw:?} is not a size like 65536, 512KiB or 1MiB"))),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| form(format!("{raw:?} is not a size like 65536, 512KiB or 1MiB")))
}

/// A duration like `250ms`, `30s` or `1h`, zero included.
pub(crate) fn duration(raw: &str) -> Result<Duration, ValueError> {
    Ok(duration::parse(raw)?)
}

/// A duration longer than zero.
pub(crate) fn positive_duration(raw: &str) -> Result<Duration, ValueError> {
    let value = duration::parse(raw)?;
    if value.is_zero() {
        return Err(form(format!("{raw:?} must be longer than zero")));
    }
    Ok(value)
}

/// A comma-separated list of route classes (`submission`, `read`, `other`), or `none`.
pub(crate) fn classes(raw: &str) -> Result<Vec<RouteClass>, ValueError> {
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
                return Err(form(format!(
                    "{word:?} is not a route class (submission, read, other or none)"
                )));
            }
        });
    }
    Ok(classes)
}

/// A list of waits like `0s,5s,5m`.
pub(crate) fn schedule(raw: &str) -> Result<Vec<Duration>, ValueError> {
    let schedule: Vec<Duration> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(duration::parse)
        .collect::<Result<_, _>>()?;
    if schedule.is_empty() {
        return Err(form(format!("{raw:?} is not a list of waits like 0s,5s,5m")));
    }
    Ok(schedule)
}

/// A comma-separated list of words (hosts, say); empty entries dropped, at least one.
pub(crate) fn list(raw: &str) -> Result<Vec<String>, ValueError> {
    let items: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.is_empty() {
        return Err(form(format!("{raw:?} is not a comma-separated list")));
    }
    Ok(items)
}
