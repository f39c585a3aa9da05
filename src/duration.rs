//! Durations as people write them in flags and config files: `250ms`, `2s`, `1.5s`, `1m`, `2h`, `7d`.

use std::time::Duration;

/// Why a duration could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// A number without a unit (`30`): seconds or milliseconds?
    #[error("{0:?} has no unit (write it like 250ms, 2s or 1m)")]
    NoUnit(String),
    /// Not a number followed by a unit.
    #[error("{0:?} is not a duration like 250ms, 2s or 1m")]
    Malformed(String),
    /// A unit other than `ms`, `s`, `m`, `h` or `d`.
    #[error("{0:?} has an unknown unit (use ms, s, m, h or d)")]
    UnknownUnit(String),
    /// Longer than anything this crate waits for.
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Parse a duration written as a number followed by a unit (`ms`, `s`, `m`, `h` or `d`).
///
/// A bare number is refused: `timeout = 30` is ambiguous between seconds and
/// milliseconds, and guessing wrong by a factor of 1000 is worse than an error.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::NoUnit(text.to_owned()))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::Malformed(text.to_owned()))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(DurationError::UnknownUnit(text.to_owned())),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Format a duration the way [`parse`] reads it, in the largest unit that keeps it exact
/// to the millisecond: `250ms`, `45s`, `1.5s`, `2m`, `1h`, `24h`, `7d` (days only past one,
/// where hours stop reading easily).
pub fn format(duration: Duration) -> String {
    const DAY: u128 = 86_400_000;
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis > DAY && millis.is_multiple_of(DAY) {
        return format!("{}d", millis / DAY);
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    let fraction = format!("{:03}", millis % 1000);
    format!("{}.{}s", millis / 1000, fraction.trim_end_matches('0'))
}

/// `duration` scaled by a random factor in [0.8, 1.2], so waits of many things that
/// started together (retries of deliveries, checks of tasks) spread out.
pub fn jittered(duration: Duration) -> Duration {
    duration.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

/// `duration` in whole milliseconds, as the stores keep times (saturating).
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The time now, in Unix milliseconds (0 before 1970).
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse(" 2h "), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_ambiguous_or_malformed() {
        for bad in [
            "30",
            "",
            "s",
            "1.2.3s",
            "5 parsecs",
            "-1s",
            "1e3s",
            "99999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            parse("30").unwrap_err().to_string(),
            "\"30\" has no unit (write it like 250ms, 2s or 1m)"
        );
    }

    #[test]
    fn formats_round_trip() {
        for text in [
            "250ms", "45s", "1.5s", "0s", "2.25s", "2m", "90s", "1h", "10h", "24h", "7d", "36h",
        ] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
        assert_eq!(format(Duration::from_secs(60)), "1m");
    }
}
