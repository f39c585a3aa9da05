//! Durations as people write them in flags and config files: `250ms`, `2s`, `1.5s`, `1m`, `2h`.

use std::time::Duration;

/// Parse a duration written as a number followed by a unit (`ms`, `s`, `m` or `h`).
///
/// A bare number is refused: `timeout = 30` is ambiguous between seconds and
/// milliseconds, and guessing wrong by a factor of 1000 is worse than an error.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit (write it like 250ms, 2s or 1m)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 2s or 1m"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?} has an unknown unit (use ms, s, m or h)")),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Format a duration the way [`parse`] reads it, in the largest unit that keeps it exact
/// to the millisecond: `250ms`, `60s`, `1.5s`.
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        format!("{millis}ms")
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        let fraction = format!("{:03}", millis % 1000);
        format!("{}.{}s", millis / 1000, fraction.trim_end_matches('0'))
    }
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
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "60s", "1.5s", "0ms", "2.25s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
