//! The admin paths under `/-/`, answered by the sidecar itself and never forwarded: one
//! router for health, readiness, metrics and the relay's deliveries.

use http::{Method, Response, StatusCode, Uri, header};

use super::AdminState;
use crate::body::{self, Body};
use crate::envelope;

/// Answer an admin path.
pub(crate) async fn answer(state: &AdminState, method: &Method, uri: &Uri) -> Response<Body> {
    let path = uri.path();
    if path.starts_with("/-/deliveries") {
        if let Some(relay) = &state.relay
            && let Some(response) = relay.handle(method, path, uri.query()).await
        {
            return response;
        }
        return not_found(path);
    }
    if method != Method::GET && method != Method::HEAD {
        return envelope::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} is an admin path of runway-proxy and only answers GET"),
        );
    }
    match path {
        "/-/healthz" => json(StatusCode::OK, r#"{"status":"alive"}"#),
        "/-/readyz" if state.readiness.get() => json(StatusCode::OK, r#"{"status":"ready"}"#),
        "/-/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"shutting down"}"#),
        "/-/metrics" => {
            let sets: Vec<_> = state.metric_sets.iter().map(|s| s.as_ref()).collect();
            let mut response = Response::new(body::full(crate::metrics::render_all(&sets)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => not_found(path),
    }
}

fn not_found(path: &str) -> Response<Body> {
    envelope::error_response(
        StatusCode::NOT_FOUND,
        &format!("{path} is not an admin path of runway-proxy (paths under /-/ are never forwarded)"),
    )
}

fn json(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, envelope::JSON);
    response
}
