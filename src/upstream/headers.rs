//! Hop-by-hop header handling (RFC 9110 §7.6.1).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection rather than the message, and so are never
/// forwarded by a proxy. `proxy-connection` is not standard but old clients still send it.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Remove the hop-by-hop headers, and every header the `Connection` header names.
///
/// Header values are bytes, not always UTF-8: a `Connection` value that is not valid
/// text, or names something that is not a header name, is skipped, never a panic.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Every message passes through here twice, and most carry one hop-by-hop header at
    // most (`Connection: keep-alive`): one pass over the names present (comparisons, no
    // hashing) finds them, and only those are removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << at;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection` is first in the list.
    if present & 1 != 0 {
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        // Nearly always one value; a copy of its bytes is a reference count.
        let more: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&more) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let Ok(name) = std::str::from_utf8(token.trim_ascii()) else {
                    continue;
                };
                // Options that name no header (`close`) or one removed below anyway.
                if name.eq_ignore_ascii_case("close")
                    || HOP_BY_HOP
                        .iter()
                        .any(|hop| hop.as_str().eq_ignore_ascii_case(name))
                {
                    continue;
                }
                // A borrowed lookup: a name that is not a valid header name finds nothing.
                headers.remove(name);
            }
        }
    }
    for (at, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << at) != 0 {
            headers.remove(name);
        }
    }
}

/// Append the client's address to `X-Forwarded-For`, keeping any earlier hops.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: std::net::IpAddr) {
    if let Ok(ip) = HeaderValue::from_str(&client.to_string()) {
        append_forwarded_for_value(headers, &ip);
    }
}

/// [`append_forwarded_for`] with the client's IP already written as a header value (as
/// [`ClientAddr`](super::ClientAddr) keeps it, once per connection).
pub fn append_forwarded_for_value(headers: &mut HeaderMap, ip: &HeaderValue) {
    let name = HeaderName::from_static("x-forwarded-for");
    let value = match headers.get(&name) {
        // Earlier hops are kept as the bytes they were, even if they are not UTF-8.
        Some(existing) => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + ip.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            HeaderValue::from_bytes(&joined)
        }
        None => Ok(ip.clone()),
    };
    // Neither can fail: an existing valid value plus ASCII digits stays valid.
    if let Ok(value) = value {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_listed_and_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private , bogus name"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        headers.insert("x-runway-version", HeaderValue::from_static("2024-11-06"));
        remove_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["authorization", "x-runway-version"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_alone() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        let before = headers.clone();
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
        // One listed header alone, without `Connection`, still goes.
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }

    #[test]
    fn non_utf8_connection_value_is_harmless() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"\xff\xfe, x-a").unwrap(),
        );
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-a"));
        assert!(headers.contains_key("x-b"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, [10, 0, 0, 1].into());
        append_forwarded_for(&mut headers, [127, 0, 0, 1].into());
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    }
}
