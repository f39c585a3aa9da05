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

/// Unix milliseconds as an RFC 3339 UTC time, to the second: `2026-12-02T18:40:57Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A point in time as the admin API takes it: RFC 3339 (`2026-12-02T18:40:57Z`, an offset
/// such as `+01:00`, fractional seconds ignored), a date (`2026-12-02`, midnight UTC), or
/// Unix seconds. Unix milliseconds, or `None` when it is none of these.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<i64>().ok()?.checked_mul(1000);
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())?
    };
    let bytes = text.as_bytes();
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    if bytes.len() > 10 {
        if !matches!(bytes[10], b'T' | b't' | b' ')
            || bytes.len() < 19
            || bytes[13] != b':'
            || bytes[16] != b':'
        {
            return None;
        }
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        secs += hour * 3600 + minute * 60 + second;
        let mut rest = &text[19..];
        if let Some(fraction) = rest.strip_prefix('.') {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            rest = &fraction[digits..];
        }
        match rest {
            "Z" | "z" => {}
            offset if offset.len() == 6 && matches!(&offset[..1], "+" | "-") && &offset[3..4] == ":" => {
                let hours: i64 = offset[1..3].parse().ok()?;
                let minutes: i64 = offset[4..6].parse().ok()?;
                let shift = hours * 3600 + minutes * 60;
                secs -= if offset.starts_with('+') { shift } else { -shift };
            }
            _ => return None,
        }
    }
    secs.checked_mul(1000)
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_and_read_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_236_857_000), "2026-12-02T18:40:57Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        for ms in [0, 951_782_400_000, 1_796_236_857_000, 4_102_444_800_000] {
            assert_eq!(parse_time(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_time("2026-12-02"), Some(1_796_169_600_000));
        assert_eq!(parse_time("1796236857"), Some(1_796_236_857_000));
        assert_eq!(
            parse_time("2026-12-02T19:40:57.250+01:00"),
            Some(1_796_236_857_000)
        );
        assert_eq!(parse_time("2026-12-02T17:40:57-01:00"), Some(1_796_236_857_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-12-02T25:00:00Z",
            "2026-12-02T10:00:00",
            "-5",
            "2026-12-02T10:00:00.Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

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
