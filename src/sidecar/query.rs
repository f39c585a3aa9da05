//! Query strings of the admin paths.

/// `%XX` escapes decoded (`+` stays itself: it is a time's offset sign more often than a
/// space); `None` when an escape is broken or the result is not UTF-8.
pub(super) fn percent_decoded(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = raw.get(at + 1..at + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decoded;

    #[test]
    fn query_values_are_percent_decoded_and_checked() {
        assert_eq!(percent_decoded("team%40example").as_deref(), Some("team@example"));
        assert_eq!(
            percent_decoded("2026-12-02T18:00:00+01:00").as_deref(),
            Some("2026-12-02T18:00:00+01:00")
        );
        assert_eq!(percent_decoded("%2B01%3A00").as_deref(), Some("+01:00"));
        assert_eq!(percent_decoded("%4"), None, "a broken escape");
        assert_eq!(percent_decoded("%zz"), None);
        assert_eq!(percent_decoded("%ff"), None, "not UTF-8");
    }
}
