//! Writing setting values back as the config file would (`config check`, the README's
//! defaults); the rows of each settings type name these (`show: show::size`). Each takes
//! a reference to the field, and none ever writes a secret.

use std::time::Duration;

use super::{Secret, ServiceUrl};
use crate::duration;
use crate::route::RouteClass;

/// The value's own `Display`.
pub(crate) fn plain<T: std::fmt::Display>(value: &T) -> String {
    value.to_string()
}

/// A duration in its largest exact unit (`30s`, `5m`).
pub(crate) fn duration(value: &Duration) -> String {
    duration::format(*value)
}

/// A limit, or `unlimited`.
pub(crate) fn optional<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "unlimited".to_owned(), T::to_string)
}

/// Text, or `none`.
pub(crate) fn optional_text(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "none".to_owned())
}

/// A size as [`parse::size`](super::parse::size) reads it, in the largest exact unit.
pub(crate) fn size(bytes: &usize) -> String {
    let bytes = *bytes;
    for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// Route classes, comma-separated, or `none`.
pub(crate) fn classes(classes: &[RouteClass]) -> String {
    if classes.is_empty() {
        return "none".to_owned();
    }
    classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(",")
}

/// Waits, comma-separated.
pub(crate) fn schedule(schedule: &[Duration]) -> String {
    schedule
        .iter()
        .map(|d| duration::format(*d))
        .collect::<Vec<_>>()
        .join(",")
}

/// A service's URL without its user and password, or `none`.
pub(crate) fn service_url(url: &Option<ServiceUrl>) -> String {
    url.as_ref()
        .map_or_else(|| "none".to_owned(), ServiceUrl::redacted)
}

/// A secret made once and kept in the data directory when none is given: `(set)` or
/// `generated`.
pub(crate) fn generated(secret: &Option<Secret>) -> String {
    match secret {
        Some(_) => "(set)".to_owned(),
        None => "generated".to_owned(),
    }
}

pub(crate) fn list(items: &[String]) -> String {
    items.join(",")
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn sizes_parse_and_show() {
        assert_eq!(parse::size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse::size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse::size("65536").unwrap(), 65536);
        for bad in ["0", "1MB", "MiB", "-1", "1.5MiB", "99999999999999999999GiB"] {
            assert!(parse::size(bad).is_err(), "{bad}");
        }
        for text in ["1MiB", "512KiB", "1000", "3GiB"] {
            assert_eq!(super::size(&parse::size(text).unwrap()), text);
        }
    }

    #[test]
    fn lists_parse_and_show() {
        let waits = parse::schedule("0s, 200ms,1s").unwrap();
        assert_eq!(super::schedule(&waits), "0s,200ms,1s");
        let classes = parse::classes("read,submission").unwrap();
        assert_eq!(super::classes(&classes), "read,submission");
        assert_eq!(super::classes(&parse::classes("none").unwrap()), "none");
        assert!(parse::classes("writes").is_err());
    }
}
