//! Reading (and writing back) setting values as they are written in flags, environment
//! variables and the config file.

use std::time::Duration;

use http::Uri;

use crate::callback::KeyringError;
use crate::duration::{self, DurationError};
use crate::limit::QuotaError;
use crate::relay::SecretError;
use crate::route::RouteClass;

/// A value that does not parse as its setting's type.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Not a duration.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// Not a quota.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// Not a keyring.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// Not a webhook secret.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Not an `[otel]` value (a sampler, a ratio, export headers).
    #[error(transparent)]
    Trace(#[from] crate::trace::ParseError),
    /// Not of the expected form (the message quotes the value and says the form).
    #[error("{0}")]
    Form(String),
}

fn form(message: String) -> ValueError {
    ValueError::Form(message)
}

/// An address to listen on: `127.0.0.1:8080`, `[::1]:8080`, or a host name with a port
/// (`localhost:8080`), resolved once, at start. A name with IPv4 and IPv6 addresses
/// listens on its first IPv4 one, where `localhost` clients usually connect.
pub(super) fn socket_addr(raw: &str, example: &str) -> Result<std::net::SocketAddr, ValueError> {
    use std::net::ToSocketAddrs as _;
    let raw = raw.trim();
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    let not_an_address = || {
        form(format!(
            "{raw:?} is not a socket address like {example} or localhost:8080"
        ))
    };
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(not_an_address());
    };
    let fine = !host.is_empty()
        && port.parse::<u16>().is_ok()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !fine {
        return Err(not_an_address());
    }
    let resolved: Vec<std::net::SocketAddr> = raw
        .to_socket_addrs()
        .map_err(|err| form(format!("{raw:?}: the host {host} does not resolve ({err})")))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| form(format!("{raw:?}: the host {host} has no address")))
}

pub(super) fn boolean(raw: &str) -> Result<bool, ValueError> {
    match raw.trim() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(form(format!("{raw:?} is not true or false"))),
    }
}

/// A whole number.
pub(super) fn number<T: std::str::FromStr>(raw: &str) -> Result<T, ValueError> {
    raw.trim()
        .parse()
        .map_err(|_| form(format!("{raw:?} is not a whole number")))
}

/// A whole number of at least 1.
pub(super) fn count(raw: &str) -> Result<u32, ValueError> {
    match raw.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(form(format!("{raw:?} is not a whole number of at least 1"))),
    }
}

/// A whole number of at least 1, or `unlimited`.
pub(super) fn optional_count(raw: &str) -> Result<Option<u32>, ValueError> {
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
pub(super) fn optional_amount(raw: &str) -> Result<Option<u64>, ValueError> {
    match raw.trim() {
        "" | "unlimited" | "none" => Ok(None),
        text => text
            .replace('_', "")
            .parse::<u64>()
            .map(Some)
            .map_err(|_| form(format!("{raw:?} is not a whole number, or unlimited"))),
    }
}

pub(super) fn show_optional<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "unlimited".to_owned(), |v| v.to_string())
}

pub(super) fn percentage(raw: &str) -> Result<f32, ValueError> {
    raw.trim()
        .parse()
        .map_err(|_| form(format!("{raw:?} is not a percentage from 0 to 1000")))
}

/// A size like `1MiB`, `512KiB` or `65536` (bytes).
pub(super) fn size(raw: &str) -> Result<usize, ValueError> {
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

/// A size as [`size`] reads it, in the largest exact unit.
pub(super) fn show_size(bytes: usize) -> String {
    for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

pub(super) fn positive_duration(raw: &str) -> Result<Duration, ValueError> {
    let value = duration::parse(raw)?;
    if value.is_zero() {
        return Err(form(format!("{raw:?} must be longer than zero")));
    }
    Ok(value)
}

/// A comma-separated list of route classes (`submission`, `read`, `other`), or `none`.
pub(super) fn classes(raw: &str) -> Result<Vec<RouteClass>, ValueError> {
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

pub(super) fn show_classes(classes: &[RouteClass]) -> String {
    if classes.is_empty() {
        return "none".to_owned();
    }
    classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")
}

/// An `http://` or `https://` base URL with a host, like `https://api.cometapi.com`.
pub(super) fn base_url(raw: &str) -> Result<Uri, ValueError> {
    let expected = || {
        form(format!(
            "{raw:?} is not an http(s) base URL like https://api.cometapi.com"
        ))
    };
    let uri: Uri = raw.parse().map_err(|_| expected())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => {}
        _ => return Err(expected()),
    }
    if uri.query().is_some() {
        return Err(form(format!("{raw:?} must not have a query string")));
    }
    Ok(uri)
}

/// A list of waits like `0s,5s,5m`.
pub(super) fn schedule(raw: &str) -> Result<Vec<Duration>, ValueError> {
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

pub(super) fn show_schedule(schedule: &[Duration]) -> String {
    schedule
        .iter()
        .map(|d| duration::format(*d))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_show() {
        assert_eq!(size("1MiB").unwrap(), 1 << 20);
        assert_eq!(size("512KiB").unwrap(), 512 << 10);
        assert_eq!(size("65536").unwrap(), 65536);
        for bad in ["0", "1MB", "MiB", "-1", "1.5MiB", "99999999999999999999GiB"] {
            assert!(size(bad).is_err(), "{bad}");
        }
        for text in ["1MiB", "512KiB", "1000", "3GiB"] {
            assert_eq!(show_size(size(text).unwrap()), text);
        }
    }

    #[test]
    fn lists_parse_and_show() {
        let waits = schedule("0s, 200ms,1s").unwrap();
        assert_eq!(show_schedule(&waits), "0s,200ms,1s");
        assert_eq!(
            show_classes(&classes("read,submission").unwrap()),
            "read,submission"
        );
        assert_eq!(show_classes(&classes("none").unwrap()), "none");
        assert!(classes("writes").is_err());
    }
}
