//! CometAPI's response envelope, `{"code": ..., "msg": ..., "data": ...}`.
//!
//! Errors that runway-proxy makes itself use the same shape as CometAPI's, with a matching
//! HTTP status, so a client written for CometAPI handles them without change.

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// Content type of every JSON body this crate produces.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Serialize the error envelope `{"code": <status>, "msg": msg, "data": null}`.
pub fn error_body(status: StatusCode, msg: &str) -> Vec<u8> {
    let envelope = serde_json::json!({ "code": status.as_u16(), "msg": msg, "data": null });
    // Serializing a `Value` built from a string and integers cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// An HTTP response with status `status` carrying the error envelope for `msg`.
pub fn error_response(status: StatusCode, msg: &str) -> Response<Body> {
    let mut response = Response::new(body::full(error_body(status, msg)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_has_cometapi_shape() {
        let body = error_body(
            StatusCode::BAD_GATEWAY,
            "upstream connect failed: \"refused\"",
        );
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"code": 502, "msg": "upstream connect failed: \"refused\"", "data": null})
        );
    }
}
