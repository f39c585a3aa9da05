//! What the layers read of a submission's JSON body, in one pass: the top-level
//! `callback_url` (and where it sits, to replace it leaving every other byte alone) and
//! the `model`.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
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

/// What the layers read of a submission's body (see [`Fields::parse`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    /// The top-level `callback_url`, or why it cannot be rewritten safely.
    pub callback_url: Result<Option<CallbackUrl>, RewriteError>,
    /// The top-level `model`, when it is a string (and the body is a JSON object).
    pub model: Option<String>,
    /// The top-level `duration` (or `seconds`) in milliseconds, when it is a positive
    /// number of seconds or a string holding one: what a video's price is estimated by.
    pub duration_ms: Option<u64>,
}

impl Fields {
    /// Read `body` once: validate it as one JSON object, find its top-level
    /// `callback_url`, and take its `model`.
    pub fn parse(body: &[u8]) -> Fields {
        #[cfg(test)]
        PARSES.with(|parses| parses.set(parses.get() + 1));
        let (callback_url, model, duration) = scan(body);
        Fields {
            callback_url,
            model,
            duration_ms: duration,
        }
    }
}

#[cfg(test)]
thread_local! {
    /// How many bodies this thread parsed (the layers' tests count them).
    pub(crate) static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn find_callback_url(body: &[u8]) -> Result<Option<CallbackUrl>, RewriteError> {
    scan(body).0
}

/// What one pass over a submission body found: its `callback_url`, `model` and duration.
type Found = (
    Result<Option<CallbackUrl>, RewriteError>,
    Option<String>,
    Option<u64>,
);

fn scan(body: &[u8]) -> Found {
    // serde_json skips the strings it ignores without checking them, so check all at once.
    let utf8 = std::str::from_utf8(body).is_ok();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let scanned = deserializer
        .deserialize_map(TopLevel {
            base: body.as_ptr() as usize,
        })
        .and_then(|found| deserializer.end().map(|()| found));
    let (found, model, duration) = match scanned {
        Ok(Scanned {
            found,
            model,
            duration,
        }) => (found, model, duration),
        Err(err) => (Err(RewriteError::NotAnObject(err.to_string())), None, None),
    };
    // Bytes that are not UTF-8 come first: decoders disagree on everything after them.
    let callback_url = if utf8 {
        found
    } else {
        Err(RewriteError::InvalidUtf8)
    };
    (callback_url, model, duration)
}

/// What one pass over the top level found: the `callback_url` (or why it cannot be
/// rewritten; the pass goes on, so the `model` is read all the same) and the `model`.
struct Scanned {
    found: Result<Option<CallbackUrl>, RewriteError>,
    model: Option<String>,
    duration: Option<u64>,
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
    type Value = Scanned;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scanned, A::Error> {
        let mut found: Result<Option<CallbackUrl>, RewriteError> = Ok(None);
        let mut model = None;
        let mut models = 0;
        let mut duration = None;
        while let Some(JsonKey(key)) = map.next_key::<JsonKey<'de>>()? {
            match key.as_ref() {
                "callback_url" => {
                    let raw: &'de RawValue = map.next_value()?;
                    found = match found {
                        Ok(None) => self.callback_url(raw),
                        Ok(Some(_)) => Err(RewriteError::Duplicate),
                        // The first problem stands.
                        problem => problem,
                    };
                }
                "model" => {
                    let raw: &'de RawValue = map.next_value()?;
                    models += 1;
                    model = serde_json::from_str::<String>(raw.get()).ok();
                }
                "duration" | "seconds" => {
                    let raw: &'de RawValue = map.next_value()?;
                    let text = raw.get().trim_matches('"');
                    duration = text
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .map(|s| (s.min(86_400.0) * 1000.0).round() as u64);
                }
                _ => {
                    if found.is_ok() && folds_to_callback_url(&key) {
                        found = Err(RewriteError::Ambiguous(key.clone().into_owned()));
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // Two models: which one the upstream reads is its business; the ledger names none.
        Ok(Scanned {
            found,
            model: model.filter(|_| models == 1),
            duration,
        })
    }
}

impl TopLevel {
    fn callback_url(&self, raw: &RawValue) -> Result<Option<CallbackUrl>, RewriteError> {
        let text = raw.get();
        let url: String = serde_json::from_str(text).map_err(|_| RewriteError::NotAString)?;
        // The raw value borrows from the body, so its address gives its offset.
        let start = text.as_ptr() as usize - self.base;
        Ok(Some(CallbackUrl {
            span: start..start + text.len(),
            url,
        }))
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
    fn one_pass_reads_the_callback_url_and_the_model() {
        let fields = Fields::parse(
            br#"{"model":"gen4_turbo","callback_url":"https://a.example/h","o":{"model":"x"}}"#,
        );
        assert_eq!(fields.model.as_deref(), Some("gen4_turbo"));
        assert_eq!(fields.callback_url.unwrap().unwrap().url, "https://a.example/h");
        // A callback_url that cannot be rewritten does not hide the model from the ledger.
        let ambiguous = Fields::parse(br#"{"CALLBACK_URL":"x","model":"gen4"}"#);
        assert!(matches!(ambiguous.callback_url, Err(RewriteError::Ambiguous(_))));
        assert_eq!(ambiguous.model.as_deref(), Some("gen4"));
        for unnamed in [
            &br#"{"model":4}"#[..],
            br#"{"model":"a","model":"b"}"#,
            b"{\"model\":\"a\"",
            b"[]",
        ] {
            assert_eq!(Fields::parse(unnamed).model, None, "{unnamed:?}");
        }
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
