//! CometAPI's response envelope, `{"code": ..., "msg": ..., "data": ...}`.
//!
//! [`Envelope::parse`] reads just the fields a retry decision needs (`code`, `msg`, and
//! their variants in newer wrappers and Runway's own errors) and skips the rest without
//! building it. Errors that runway-proxy makes itself use the same shape as CometAPI's,
//! with a matching HTTP status, so a client written for CometAPI handles them unchanged.
//!
//! # Example
//!
//! ```
//! use runway_proxy::envelope::{Code, Envelope};
//!
//! let busy = Envelope::parse(br#"{"code": 500, "msg": "system busy", "data": null}"#).unwrap();
//! assert_eq!(busy.code, Some(Code::Int(500)));
//! assert_eq!(busy.msg.as_deref(), Some("system busy"));
//!
//! let newer = Envelope::parse(br#"{"code": "success", "message": "ok", "data": {}}"#).unwrap();
//! assert!(newer.is_success());
//!
//! assert!(Envelope::parse(b"<html>502 Bad Gateway</html>").is_none());
//! ```

use std::borrow::Cow;
use std::fmt;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::body::{self, Body};

/// Content type of every JSON body this crate produces.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Response header telling a client whether retrying this request is safe and useful
/// (`true`) or could pay twice or multiply load (`false`). The official Runway SDKs
/// (Stainless) follow it before their own status-based rules.
pub const SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// Mark `response` as safe (`true`) or unsafe (`false`) for a client to retry.
pub fn should_retry(response: &mut Response<Body>, retry: bool) {
    let value = if retry { "true" } else { "false" };
    response
        .headers_mut()
        .insert(SHOULD_RETRY, HeaderValue::from_static(value));
}

/// Serialize the error envelope `{"code": <status>, "msg": msg, "data": null}`.
pub fn error_body(status: StatusCode, msg: &str) -> Vec<u8> {
    let envelope = serde_json::json!({ "code": status.as_u16(), "msg": msg, "data": null });
    // Serializing a `Value` built from a string and integers cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// Marks a response that runway-proxy made itself rather than received from the upstream
/// (a response extension). The retry layer never retries such a response: the layer that
/// made it (a rate limiter that already waited its bound, say) has decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generated;

/// An HTTP response with status `status` carrying the error envelope for `msg`.
pub fn error_response(status: StatusCode, msg: &str) -> Response<Body> {
    generated(status, error_body(status, msg))
}

/// The error shape a client of `path` expects: Runway's own `{"error": msg}` on the
/// official routes (`/runwayml/...`, what the Runway SDKs parse), CometAPI's envelope
/// everywhere else.
pub fn error_response_for(path: &str, status: StatusCode, msg: &str) -> Response<Body> {
    if path.starts_with("/runwayml/") {
        let body = serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default();
        generated(status, body)
    } else {
        error_response(status, msg)
    }
}

fn generated(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = json_response(status, body);
    response.extensions_mut().insert(Generated);
    response
}

/// A response with status `status` whose body, `body`, is JSON.
pub fn json_response(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    response
}

/// The envelope's `code`: an integer on most routes, a string (`"success"`) on newer ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code<'a> {
    /// A numeric code (a string of digits is read as a number too).
    Int(i64),
    /// A textual code such as `"success"` or `"error"`.
    Str(Cow<'a, str>),
}

impl Code<'_> {
    /// Whether this code says the call succeeded: `200` or `"success"`.
    pub fn is_success(&self) -> bool {
        match self {
            Code::Int(code) => *code == 200,
            Code::Str(text) => text.eq_ignore_ascii_case("success"),
        }
    }
}

impl fmt::Display for Code<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Code::Int(code) => write!(f, "{code}"),
            Code::Str(text) => f.write_str(text),
        }
    }
}

/// The fields of a response body that decide what happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope<'a> {
    /// `code`, when present and a number or a string; else `error.code` (CometAPI's
    /// OpenAI-style errors: `"invalid_request"`).
    pub code: Option<Code<'a>>,
    /// `msg`, else `message`, else a string `error` or `error.message` (Runway's own
    /// shape, and CometAPI's OpenAI-style `{"error": {"message", "type", "code"}}`).
    pub msg: Option<Cow<'a, str>>,
    /// Whether the body has an `error` member (how the official format reports failure).
    pub has_error: bool,
}

impl<'a> Envelope<'a> {
    /// Read the envelope fields of a JSON object; `None` when `body` is not a JSON object.
    ///
    /// Never panics, whatever the bytes: a field of an unexpected type is treated as
    /// absent rather than failing the parse.
    pub fn parse(body: &'a [u8]) -> Option<Envelope<'a>> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let envelope = deserializer.deserialize_map(EnvelopeVisitor).ok()?;
        deserializer.end().ok()?;
        Some(envelope)
    }

    /// Whether the code says the call succeeded.
    pub fn is_success(&self) -> bool {
        self.code.as_ref().is_some_and(Code::is_success)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = Envelope::default();
        let mut message = None;
        let mut error = None;
        let mut error_code = None;
        while let Some(JsonKey(key)) = map.next_key::<JsonKey<'de>>()? {
            match key.as_ref() {
                "code" => envelope.code = map.next_value::<Lenient<CodeValue<'de>>>()?.0.map(|c| c.0),
                "msg" => envelope.msg = map.next_value::<Lenient<Text<'de>>>()?.0.map(|t| t.0),
                "message" => message = map.next_value::<Lenient<Text<'de>>>()?.0.map(|t| t.0),
                "error" => {
                    let value = map.next_value::<ErrorValue<'de>>()?;
                    envelope.has_error = value.present;
                    error = value.message;
                    error_code = value.code;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        envelope.msg = envelope.msg.or(message).or(error);
        envelope.code = envelope.code.or(error_code);
        Ok(envelope)
    }
}

/// An object key, borrowed from the body where it can be. (serde's own `Cow<str>` always
/// copies: one allocation per key of every body read.)
pub(crate) struct JsonKey<'de>(pub(crate) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for JsonKey<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = JsonKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonKey(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                // Escapes in the key: serde_json had to unescape it into a scratch buffer.
                Ok(JsonKey(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonKey(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value; `Some` when it deserialized as `T`, `None` for another type.
struct Lenient<T>(Option<T>);

impl<'de, T: LenientValue<'de>> de::Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor::<T>(std::marker::PhantomData))
    }
}

/// A type read from a subset of JSON values, ignoring the others.
trait LenientValue<'de>: Sized {
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_str(_: Cow<'de, str>) -> Option<Self> {
        None
    }
}

struct CodeValue<'a>(Code<'a>);

impl<'de> LenientValue<'de> for CodeValue<'de> {
    fn from_i64(v: i64) -> Option<Self> {
        Some(CodeValue(Code::Int(v)))
    }
    fn from_str(v: Cow<'de, str>) -> Option<Self> {
        let trimmed = v.trim();
        let is_number =
            !trimmed.is_empty() && trimmed.len() < 19 && trimmed.bytes().all(|b| b.is_ascii_digit());
        match trimmed.parse::<i64>() {
            Ok(n) if is_number => Some(CodeValue(Code::Int(n))),
            _ => Some(CodeValue(Code::Str(v))),
        }
    }
}

struct Text<'a>(Cow<'a, str>);

impl<'de> LenientValue<'de> for Text<'de> {
    fn from_str(v: Cow<'de, str>) -> Option<Self> {
        Some(Text(v))
    }
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: LenientValue<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = Lenient<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Lenient(T::from_i64(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Lenient(i64::try_from(v).ok().and_then(T::from_i64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // A code written 500.0 is still 500; other fractions are no code at all.
        let whole = v.fract() == 0.0 && v.abs() < 1e15;
        Ok(Lenient(if whole { T::from_i64(v as i64) } else { None }))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Lenient(T::from_str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Lenient(T::from_str(Cow::Owned(v.to_owned()))))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Lenient(None))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Lenient(None))
    }
}

/// The `error` member: present or not (null counts as absent), its message and code if any.
#[derive(Default)]
struct ErrorValue<'a> {
    present: bool,
    message: Option<Cow<'a, str>>,
    code: Option<Code<'a>>,
}

impl<'de> de::Deserialize<'de> for ErrorValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ErrorVisitor;
        impl<'de> Visitor<'de> for ErrorVisitor {
            type Value = ErrorValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ErrorValue {
                    present: false,
                    message: None,
                    code: None,
                })
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ErrorValue {
                    present: true,
                    message: Some(Cow::Borrowed(v)),
                    code: None,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ErrorValue {
                    present: true,
                    message: Some(Cow::Owned(v.to_owned())),
                    code: None,
                })
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ErrorValue {
                    present: v,
                    message: None,
                    code: None,
                })
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ErrorValue {
                    present: true,
                    message: None,
                    code: None,
                })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ErrorValue {
                    present: true,
                    message: None,
                    code: None,
                })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ErrorValue {
                    present: true,
                    message: None,
                    code: None,
                })
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ErrorValue {
                    present: true,
                    message: None,
                    code: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut message = None;
                let mut code = None;
                while let Some(JsonKey(key)) = map.next_key::<JsonKey<'de>>()? {
                    match key.as_ref() {
                        "message" => message = map.next_value::<Lenient<Text<'de>>>()?.0.map(|t| t.0),
                        "code" => code = map.next_value::<Lenient<CodeValue<'de>>>()?.0.map(|c| c.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(ErrorValue {
                    present: true,
                    message,
                    code,
                })
            }
        }
        deserializer.deserialize_any(ErrorVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_integer_and_string_codes() {
        let e = Envelope::parse(br#"{"code":200,"msg":"success","data":{"task_id":"t"},"exec_time":0.4}"#)
            .unwrap();
        assert!(e.is_success());
        let e = Envelope::parse(br#"{"data":null,"code":"success","message":"ok"}"#).unwrap();
        assert!(e.is_success());
        assert_eq!(e.msg.as_deref(), Some("ok"));
        let e = Envelope::parse(br#"{"code":"500","msg":"busy"}"#).unwrap();
        assert_eq!(e.code, Some(Code::Int(500)));
        let e = Envelope::parse(br#"{"code":"error","msg":"x"}"#).unwrap();
        assert_eq!(e.code, Some(Code::Str("error".into())));
        assert!(!e.is_success());
        let e = Envelope::parse(br#"{"code":500.0}"#).unwrap();
        assert_eq!(e.code, Some(Code::Int(500)));
    }

    #[test]
    fn odd_field_types_count_as_absent() {
        let e = Envelope::parse(br#"{"code":{"a":[1,2]},"msg":42,"data":[1,{"x":"y"}]}"#).unwrap();
        assert_eq!(e, Envelope::default());
        let e = Envelope::parse(br#"{"code":true,"msg":null}"#).unwrap();
        assert_eq!(e, Envelope::default());
        let e = Envelope::parse(br#"{"code":99999999999999999999999}"#).unwrap();
        assert_eq!(e.code, None);
    }

    #[test]
    fn reads_runway_errors() {
        let e = Envelope::parse(br#"{"error":"Task not found"}"#).unwrap();
        assert!(e.has_error);
        assert_eq!(e.msg.as_deref(), Some("Task not found"));
        let e = Envelope::parse(br#"{"error":{"message":"invalid_request: bad ratio","type":"x"}}"#).unwrap();
        assert_eq!(e.msg.as_deref(), Some("invalid_request: bad ratio"));
        let e = Envelope::parse(br#"{"id":"abc","error":null}"#).unwrap();
        assert!(!e.has_error);
    }

    #[test]
    fn reads_cometapi_openai_style_errors() {
        let body = br#"{"error":{"message":"invalid_request: ratio","type":"comet_api_error","code":"invalid_request"}}"#;
        let e = Envelope::parse(body).unwrap();
        assert!(e.has_error);
        assert_eq!(e.code, Some(Code::Str("invalid_request".into())));
        assert_eq!(e.msg.as_deref(), Some("invalid_request: ratio"));
        let e = Envelope::parse(br#"{"code":500,"error":{"code":"x"}}"#).unwrap();
        assert_eq!(e.code, Some(Code::Int(500)), "a top-level code wins");
        let e = Envelope::parse(br#"{"error":{"code":503}}"#).unwrap();
        assert_eq!(e.code, Some(Code::Int(503)));
    }

    #[test]
    fn non_objects_are_not_envelopes() {
        for body in [
            &b""[..],
            b"[]",
            b"null",
            b"\"x\"",
            b"{",
            b"{}{}",
            b"\xff\xfe",
            b"<html>",
        ] {
            assert!(
                Envelope::parse(body).is_none(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(Envelope::parse(b" {} ").is_some());
    }

    #[test]
    fn error_envelope_has_cometapi_shape() {
        let body = error_body(StatusCode::BAD_GATEWAY, "upstream connect failed: \"refused\"");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"code": 502, "msg": "upstream connect failed: \"refused\"", "data": null})
        );
    }
}
