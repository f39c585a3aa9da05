//! What every route of the stand-in answers with: JSON responses, CometAPI's error
//! envelope, and the scripted reset that drops a connection without an answer.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::body::Body;
use crate::envelope;

/// The connection is dropped without an answer (a scripted reset).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by the stand-in's fault script")]
pub(super) struct Reset;

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    json_response_bytes(status, value.to_string().into_bytes())
}

pub(super) fn json_response_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    envelope::json_response(status, body)
}

/// A reverse-format error: the envelope with `code`, under HTTP `status`.
pub(super) fn reverse_error(status: StatusCode, code: u16, msg: &str) -> Response<Body> {
    json_response(status, &json!({"code": code, "msg": msg, "data": null}))
}
