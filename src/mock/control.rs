//! The control API under `/-/mock/`.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};

use super::answer::{json_response, reverse_error};
use super::state::{Inner, State};
use super::{Fault, stats};
use crate::body::Body;

/// The control API under `/-/mock/`.
pub(super) async fn control(state: &State, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/-/mock/stats") => {
            let stats = stats(&state.lock());
            json_response(
                StatusCode::OK,
                &serde_json::to_value(stats).unwrap_or(Value::Null),
            )
        }
        (&Method::POST, "/-/mock/faults") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Inject {
                route: String,
                fault: Fault,
                #[serde(default = "one")]
                times: u32,
            }
            fn one() -> u32 {
                1
            }
            let bytes = match Limited::new(body, 64 * 1024).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    return reverse_error(StatusCode::BAD_REQUEST, 400, &format!("cannot read body: {err}"));
                }
            };
            match serde_json::from_slice::<Inject>(&bytes) {
                Ok(inject) => {
                    state
                        .lock()
                        .faults
                        .push(&inject.route, inject.fault, inject.times);
                    json_response(
                        StatusCode::OK,
                        &json!({"code": 200, "msg": "fault queued", "data": null}),
                    )
                }
                Err(err) => reverse_error(StatusCode::BAD_REQUEST, 400, &format!("invalid fault: {err}")),
            }
        }
        (&Method::DELETE, "/-/mock/faults") => {
            state.lock().faults.clear();
            json_response(
                StatusCode::OK,
                &json!({"code": 200, "msg": "faults cleared", "data": null}),
            )
        }
        (&Method::POST, "/-/mock/reset") => {
            *state.lock() = Inner::default();
            json_response(
                StatusCode::OK,
                &json!({"code": 200, "msg": "reset", "data": null}),
            )
        }
        (method, path) => reverse_error(
            StatusCode::NOT_FOUND,
            404,
            &format!("no control route {method} {path}"),
        ),
    }
}
