//! Quotas as people write them: `5/s`, `300/min`, `5/s burst 10`.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

/// A quota written in a form this crate does not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Not `N/UNIT` or `N/UNIT burst B`.
    #[error("{0:?} is not a rate like 5/s, 300/min or \"5/s burst 10\"")]
    Malformed(String),
    /// So fast that one request's share of the period is below a nanosecond.
    #[error("{0:?} is faster than one request per nanosecond")]
    TooFast(String),
}

impl From<QuotaError> for crate::settings::ValueError {
    fn from(err: QuotaError) -> Self {
        crate::settings::ValueError::invalid(err)
    }
}

/// A rate: `count` requests per `period`, with bursts of up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaSpec {
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

impl QuotaSpec {
    /// `count` per `period`, with a burst of `count` (governor's default: a full period's
    /// worth may go at once after a quiet spell).
    pub fn new(count: NonZeroU32, period: Duration) -> Self {
        QuotaSpec {
            count,
            period,
            burst: count,
        }
    }

    /// The same rate with a different burst size.
    pub fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    /// Parse `N/UNIT` or `N/UNIT burst B`, where UNIT is `s`, `min`, `h` or `d`.
    pub fn parse(text: &str) -> Result<QuotaSpec, QuotaError> {
        let expected = || QuotaError::Malformed(text.to_owned());
        let mut words = text.split_whitespace();
        let rate = words.next().ok_or_else(expected)?;
        let (count, unit) = rate.split_once('/').ok_or_else(expected)?;
        let count: NonZeroU32 = count.parse().map_err(|_| expected())?;
        let period = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(expected()),
        };
        let mut spec = QuotaSpec::new(count, period);
        match (words.next(), words.next(), words.next()) {
            (None, _, _) => {}
            (Some("burst"), Some(burst), None) => spec.burst = burst.parse().map_err(|_| expected())?,
            _ => return Err(expected()),
        }
        if spec.replenish_interval().is_zero() {
            return Err(QuotaError::TooFast(text.to_owned()));
        }
        Ok(spec)
    }

    /// How many requests may go at once after a quiet spell.
    pub fn burst_size(&self) -> NonZeroU32 {
        self.burst
    }

    /// Time for one request's worth of quota to come back.
    pub fn replenish_interval(&self) -> Duration {
        self.period / self.count.get()
    }

    /// The governor quota.
    pub fn quota(&self) -> Quota {
        // `parse` and `new` callers keep the interval above zero; fall back to the
        // smallest step rather than panic if one didn't.
        Quota::with_period(self.replenish_interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst)
    }
}

impl std::str::FromStr for QuotaSpec {
    type Err = QuotaError;

    fn from_str(text: &str) -> Result<Self, QuotaError> {
        QuotaSpec::parse(text)
    }
}

impl fmt::Display for QuotaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            86_400 => "d",
            _ => return write!(f, "{}/{}", self.count, crate::duration::format(self.period)),
        };
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// Parse an optional quota: `unlimited` (or empty) means none.
pub fn parse_optional(text: &str) -> Result<Option<QuotaSpec>, QuotaError> {
    match text.trim() {
        "" | "unlimited" | "none" => Ok(None),
        other => QuotaSpec::parse(other).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_bursts() {
        let q = QuotaSpec::parse("5/s").unwrap();
        assert_eq!(q.replenish_interval(), Duration::from_millis(200));
        assert_eq!(q.quota().burst_size().get(), 5);
        assert_eq!(q.to_string(), "5/s");
        let q = QuotaSpec::parse("300/min").unwrap();
        assert_eq!(q.replenish_interval(), Duration::from_millis(200));
        let q = QuotaSpec::parse("5/s burst 10").unwrap();
        assert_eq!(q.quota().burst_size().get(), 10);
        assert_eq!(q.to_string(), "5/s burst 10");
        assert_eq!(parse_optional("unlimited"), Ok(None));
    }

    #[test]
    fn refuses_malformed_rates() {
        for bad in [
            "5",
            "5/",
            "/s",
            "0/s",
            "-1/s",
            "5/fortnight",
            "5/s burst",
            "5/s burst 0",
            "5/s bursty 3",
            "5/s burst 2 x",
        ] {
            assert!(QuotaSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
