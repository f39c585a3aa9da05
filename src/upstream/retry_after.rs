//! The `Retry-After` header, read by the retry layer (from CometAPI) and by the relay
//! (from a subscriber).

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The wait a `Retry-After` header asks for, in seconds or as an HTTP date, capped at
/// `cap`. `None` when absent or unreadable (never a panic on odd bytes).
pub fn retry_after(headers: &HeaderMap, now: SystemTime, cap: Duration) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cap = Duration::from_secs(60);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now, cap), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers, now, cap), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&headers, now, cap), Some(cap), "capped");
        let date = httpdate::fmt_http_date(now + Duration::from_secs(12));
        headers.insert(RETRY_AFTER, date.parse().unwrap());
        assert_eq!(retry_after(&headers, now, cap), Some(Duration::from_secs(12)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        headers.insert(RETRY_AFTER, past.parse().unwrap());
        assert_eq!(retry_after(&headers, now, cap), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, http::HeaderValue::from_bytes(b"\xff soon").unwrap());
        assert_eq!(retry_after(&headers, now, cap), None);
    }
}
