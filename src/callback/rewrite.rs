//! Replace the top-level `callback_url` of a JSON object, leaving every other byte alone.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::envelope::JsonKey;

/// Why a submission body can't be rewritten.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The body is not one JSON object.
    #[error("the request body is not a JSON object: {0}")]
    NotAnObject(String),
    /// `callback_url` appears more than once: which one the upstream uses is anyone's guess.
    #[error("callback_url appears more than once in the request body")]
    Duplicate,
    /// `callback_url` is there but not a string.
    #[error("callback_url must be a string")]
    NotAString,
    /// Another key is `callback_url` under case folding (`CALLBACK_URL`, `Callback_Url`):
    /// a decoder that matches keys case-insensitively (Go's `encoding/json`) could use it
    /// instead of the checked one.
    #[error("the request body has a key {0:?}, which reads as callback_url to a case-insensitive decoder")]
    Ambiguous(String),
    /// Bytes that are not UTF-8: decoders disagree on what they mean.
    #[error("the request body is not valid UTF-8")]
    InvalidUtf8,
}

/// The top-level `callback_url` of a submission body: what it says, and where it sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackUrl {
    /// Byte range of the value (the JSON string, quotes included).
    span: Range<usize>,
    /// The URL, unescaped.
    pub url: String,
}

impl CallbackUrl {
    /// Find the top-level `callback_url` of a JSON object, validating the whole body in
    /// the same pass. `Ok(None)` when the object has no such member.
    pub fn find(body: &[u8]) -> Result<Option<CallbackUrl>, RewriteError> {
        find_callback_url(body)
    }

    /// Byte range of the value in the body (the JSON string, quotes included).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// `body` (the one it was found in) with this value replaced by `url`, every other
    /// byte unchanged: field order, whitespace, escapes and number forms.
    pub fn replace(&self, body: &[u8], url: &str) -> Bytes {
        replace(body, self.span.clone(), url)
    }
}

fn find_callback_url(body: &[u8]) -> Result<Option<CallbackUrl>, RewriteError> {
    // serde_json skips the strings it ignores without checking them, so check all at once.
    if std::str::from_utf8(body).is_err() {
        return Err(RewriteError::InvalidUtf8);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let found = deserializer
        .deserialize_map(TopLevel {
            base: body.as_ptr() as usize,
        })
        .map_err(|e| {
            // serde_json appends the position to custom errors.
            let text = e.to_string();
            if text.starts_with(DUPLICATE) {
                RewriteError::Duplicate
            } else if let Some(rest) = text.strip_prefix(AMBIGUOUS) {
                let key = rest.split(" at line ").next().unwrap_or_default();
                RewriteError::Ambiguous(key.to_owned())
            } else if text.starts_with(NOT_A_STRING) {
                RewriteError::NotAString
            } else {
                RewriteError::NotAnObject(text)
            }
        })?;
    deserializer
        .end()
        .map_err(|e| RewriteError::NotAnObject(e.to_string()))?;
    Ok(found)
}

/// `body` with the bytes in `span` replaced by `url` as a JSON string.
///
/// `url` must need no JSON escaping (a URL made of the public URL and a base64url token
/// doesn't); anything that would is escaped all the same, to keep the body valid.
fn replace(body: &[u8], span: Range<usize>, url: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() - span.len() + url.len() + 8);
    out.extend_from_slice(&body[..span.start]);
    if url.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(b"\"");
        out.extend_from_slice(url.as_bytes());
        out.extend_from_slice(b"\"");
    } else {
        out.extend_from_slice(serde_json::Value::from(url).to_string().as_bytes());
    }
    out.extend_from_slice(&body[span.end..]);
    out.freeze()
}

const DUPLICATE: &str = "runway-proxy: duplicate callback_url";
const NOT_A_STRING: &str = "runway-proxy: callback_url not a string";
const AMBIGUOUS: &str = "runway-proxy: ambiguous key ";

/// Whether `key` is `callback_url` to a decoder that folds case, Unicode's simple folds
/// included (the Kelvin sign is a `k` to Go's `encoding/json`).
fn folds_to_callback_url(key: &str) -> bool {
    let fold = |c: char| match c {
        '\u{212A}' => 'k',
        '\u{0130}' | '\u{0131}' => 'i',
        '\u{017F}' => 's',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq("callback_url".chars())
}

struct TopLevel {
    base: usize,
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = Option<CallbackUrl>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(JsonKey(key)) = map.next_key::<JsonKey<'de>>()? {
            if key != "callback_url" {
                if folds_to_callback_url(&key) {
                    return Err(de::Error::custom(format_args!("{AMBIGUOUS}{}", key.as_ref())));
                }
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let raw: &'de RawValue = map.next_value()?;
            if found.is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
            let text = raw.get();
            let url: String = serde_json::from_str(text).map_err(|_| de::Error::custom(NOT_A_STRING))?;
            // The raw value borrows from the body, so its address gives its offset.
            let start = text.as_ptr() as usize - self.base;
            found = Some(CallbackUrl {
                span: start..start + text.len(),
                url,
            });
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(body: &str, url: &str) -> Result<String, RewriteError> {
        let found = find_callback_url(body.as_bytes())?.expect("has callback_url");
        Ok(String::from_utf8(replace(body.as_bytes(), found.span, url).to_vec()).unwrap())
    }

    #[test]
    fn replaces_only_the_value() {
        let body = "{ \"prompt\" : \"caf\\u00e9 \\\"x\\\"\",\n  \"callback_url\":\"https://a.example/h?x=1\" ,\"n\":1.50e3,\"o\":{\"callback_url\":\"keep\"}}";
        let out = rewrite(body, "http://proxy/hooks/runway/T0k-_").unwrap();
        assert_eq!(
            out,
            "{ \"prompt\" : \"caf\\u00e9 \\\"x\\\"\",\n  \"callback_url\":\"http://proxy/hooks/runway/T0k-_\" ,\"n\":1.50e3,\"o\":{\"callback_url\":\"keep\"}}"
        );
    }

    #[test]
    fn reads_escaped_keys_and_values() {
        let body = r#"{"callback\u005furl":"https:\/\/a.example\/h"}"#;
        let found = find_callback_url(body.as_bytes()).unwrap().unwrap();
        assert_eq!(found.url, "https://a.example/h");
        assert_eq!(&body[found.span], r#""https:\/\/a.example\/h""#);
    }

    #[test]
    fn refuses_what_it_cannot_rewrite_safely() {
        assert_eq!(
            find_callback_url(br#"{"callback_url":"a","callback_url":"b"}"#),
            Err(RewriteError::Duplicate)
        );
        assert_eq!(
            find_callback_url(br#"{"callback_url":42}"#),
            Err(RewriteError::NotAString)
        );
        for bad in [&b"[]"[..], b"\"x\"", b"", b"{", b"{\"a\":1} x", b"{\"a\":01}"] {
            assert!(
                matches!(find_callback_url(bad), Err(RewriteError::NotAnObject(_))),
                "{bad:?}"
            );
        }
        assert_eq!(find_callback_url(br#"{"prompt":"x"}"#), Ok(None));
    }

    #[test]
    fn refuses_keys_that_fold_to_callback_url_and_invalid_utf8() {
        for key in [
            "CALLBACK_URL",
            "Callback_Url",
            "callbac\\u212a_url",
            "callbac\u{212A}_url",
        ] {
            let body =
                format!(r#"{{"callback_url":"https://a.example/h","{key}":"http://169.254.169.254/"}}"#);
            assert!(
                matches!(
                    find_callback_url(body.as_bytes()),
                    Err(RewriteError::Ambiguous(_))
                ),
                "{key}"
            );
            // Without the real one too: the unchecked URL would otherwise pass unchanged.
            let alone = format!(r#"{{"{key}":"http://169.254.169.254/"}}"#);
            assert!(matches!(
                find_callback_url(alone.as_bytes()),
                Err(RewriteError::Ambiguous(_))
            ));
        }
        let err = find_callback_url(br#"{"CALLBACK_URL":"x"}"#).unwrap_err();
        assert_eq!(err, RewriteError::Ambiguous("CALLBACK_URL".into()));
        assert!(err.to_string().contains("CALLBACK_URL"));
        assert_eq!(
            find_callback_url(b"{\"callback_url\":\"https://a.example/h\",\"prompt\":\"\xff\xfe\"}"),
            Err(RewriteError::InvalidUtf8)
        );
        // Nested objects are the upstream's business, not a second callback_url.
        assert!(
            find_callback_url(br#"{"o":{"CALLBACK_URL":"x"}}"#)
                .unwrap()
                .is_none()
        );
    }
}
