//! CometAPI's Runway routes as the stand-in answers them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};

use super::answer::{Reset, json_response, json_response_bytes, reverse_error};
use super::lifecycle::{CallbackPlan, lifecycle};
use super::outputs;
use super::resources;
use super::state::{POINTS_PER_SECOND, State, Task, task_id, unix_now};
use super::{Fault, MAX_BODY, MAX_RECORDED, MockConfig, RecordedRequest};
use crate::body::{self, Body};
use crate::envelope;

pub(super) async fn handle(state: &Arc<State>, request: Request<Body>) -> Result<Response<Body>, Reset> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let at = Instant::now();
    let fault = {
        let mut inner = state.lock();
        inner.routes.entry(path.clone()).or_default().requests += 1;
        inner.faults.take(&path)
    };
    let fault = fault.filter(|f| *f != Fault::Pass);
    if fault == Some(Fault::ResetBeforeBody) {
        record(state, &parts, Bytes::new(), at);
        return Err(Reset);
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return Ok(reverse_error(
                StatusCode::BAD_REQUEST,
                400,
                &format!("cannot read request body: {err}"),
            ));
        }
    };
    record(state, &parts, bytes.clone(), at);
    let task_fault = match fault {
        Some(Fault::Delay { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            None
        }
        Some(Fault::Envelope { status, code, msg }) => {
            let body = json!({ "code": code, "msg": msg, "data": null });
            return Ok(json_response(status_or_500(status), &body));
        }
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => {
            let status = status_or_500(status);
            let body = body.map_or_else(
                || envelope::error_body(status, status.canonical_reason().unwrap_or("error")),
                String::into_bytes,
            );
            let mut response = json_response_bytes(status, body);
            if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return Ok(response);
        }
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => {
            let mut response = Response::new(body::full(body));
            *response.status_mut() = status_or_500(status);
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    response.headers_mut().append(name, value);
                }
            }
            return Ok(response);
        }
        other => other,
    };
    let reset_after = task_fault == Some(Fault::ResetAfterBody);
    let answer_after = match task_fault {
        Some(Fault::AcceptThenDelay { ms }) => Some(Duration::from_millis(ms)),
        _ => None,
    };
    let task_fault = task_fault.filter(Fault::is_task_fault);
    let response = route(state, &parts, &bytes, task_fault);
    if let Some(wait) = answer_after {
        // The task exists already; a client that gives up now can't know it.
        tokio::time::sleep(wait).await;
    }
    if reset_after { Err(Reset) } else { Ok(response) }
}

pub(super) fn record(state: &State, parts: &http::request::Parts, body: Bytes, at: Instant) {
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let mut inner = state.lock();
    if inner.recorded.len() == MAX_RECORDED {
        inner.recorded.pop_front();
    }
    inner.recorded.push_back(RecordedRequest {
        method: parts.method.clone(),
        uri,
        headers: parts.headers.clone(),
        body,
        at,
    });
}

pub(super) fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Dispatch a request that no fault answered.
pub(super) fn route(
    state: &Arc<State>,
    parts: &http::request::Parts,
    body: &[u8],
    fault: Option<Fault>,
) -> Response<Body> {
    let path = parts.uri.path();
    let method = &parts.method;
    if path.starts_with(outputs::PREFIX) {
        // The CDN: no key, as on CometAPI's.
        return outputs::serve(state, method, path, parts.uri.query());
    }
    let reverse = matches!(
        path,
        "/runway/pro/generate" | "/runway/pro/video2video" | "/runway/pro/act_one"
    );
    // Every task-creating POST of the official API (the proxy's own list), and the
    // resources that are no task.
    let official = *method == Method::POST
        && path.starts_with("/runwayml/v1/")
        && crate::route::RouteClass::of(method, path) == crate::route::RouteClass::Submission;
    let task_read = path
        .strip_prefix("/runwayml/v1/tasks/")
        .or_else(|| path.strip_prefix("/runwayml/v1/workflow_invocations/"))
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let resource = resources::known(method, path);
    let known = (*method == Method::POST && (reverse || official || path == "/runway/feed"))
        || (*method == Method::GET && task_read.is_some())
        || (*method == Method::DELETE && task_read.is_some())
        || resource
        || path.starts_with(resources::UPLOADS);
    if !known {
        return reverse_error(
            StatusCode::NOT_FOUND,
            404,
            &format!("no route {method} {path} on the CometAPI stand-in"),
        );
    }
    if path.starts_with(resources::UPLOADS) {
        // Where an upload's bytes go: a storage bucket, signed by its form fields.
        return resources::stored_upload(method);
    }
    if !authorized(&state.config, &parts.headers) {
        return if official || task_read.is_some() || resource {
            json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "Unauthorized: a valid bearer token is required"}),
            )
        } else {
            reverse_error(
                StatusCode::UNAUTHORIZED,
                401,
                "invalid token: an Authorization: Bearer <key> header is required",
            )
        };
    }
    if let (Some(id), true) = (task_read, *method == Method::DELETE) {
        return resources::cancel(state, id);
    }
    if resource {
        return resources::answer(state, method, path);
    }
    if let Some(id) = task_read {
        return match state.lock().tasks.get(id) {
            Some(task) => json_response(StatusCode::OK, &task.official(&state.outputs)),
            None => json_response(StatusCode::NOT_FOUND, &json!({"error": "Task not found"})),
        };
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return if official {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "the body must be a JSON object"}),
            )
        } else {
            reverse_error(
                StatusCode::BAD_REQUEST,
                400,
                "invalid_request: the body must be a JSON object",
            )
        };
    };
    if path == "/runway/feed" {
        return feed(state, &fields);
    }
    let callback_url = fields
        .get("callback_url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    if reverse && callback_url.is_none() {
        return json_response(
            StatusCode::OK,
            &json!({"code": 400, "msg": "callback_url_empty", "data": null}),
        );
    }
    let prompt = ["prompt", "promptText"]
        .iter()
        .find_map(|k| fields.get(*k).and_then(Value::as_str))
        .unwrap_or_default();
    // CometAPI charges by length: `duration` in seconds (a number or a string), 10 by default.
    let seconds = match fields.get("duration") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(10)
    .clamp(1, 60);
    let key = crate::tasks::key_hash(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .map_or(&b""[..], HeaderValue::as_bytes),
    );
    let task = NewMockTask {
        prompt,
        callback_url: callback_url.map(str::to_owned),
        points: seconds * POINTS_PER_SECOND,
        key,
    };
    let id = create_task(state, path, task, fault);
    if official {
        json_response(StatusCode::OK, &json!({ "id": id }))
    } else {
        json_response(
            StatusCode::OK,
            &json!({"code": 200, "msg": "success", "data": {"task_id": id}, "exec_time": 0.01}),
        )
    }
}

pub(super) fn authorized(config: &MockConfig, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    config.api_key.as_ref().is_none_or(|key| key.as_bytes() == token)
}

pub(super) fn feed(state: &State, fields: &serde_json::Map<String, Value>) -> Response<Body> {
    let id = fields.get("task_id").and_then(Value::as_str).unwrap_or_default();
    let inner = state.lock();
    match inner.tasks.get(id) {
        Some(task) if task.created_at.elapsed() >= state.config.feed_delay => {
            let mut data = task.callback_payload(&state.outputs);
            let word = match task.status {
                0 => "queued",
                1 => "running",
                2 => "failed",
                _ => "succeeded",
            };
            data["state"] = Value::from(word);
            json_response(
                StatusCode::OK,
                &json!({"code": 200, "msg": "success", "data": data}),
            )
        }
        _ => json_response(
            StatusCode::OK,
            &json!({"code": 404, "msg": "task_not_exist", "data": null}),
        ),
    }
}

/// What a submission asks the stand-in to create.
pub(super) struct NewMockTask<'a> {
    pub(super) prompt: &'a str,
    pub(super) callback_url: Option<String>,
    pub(super) points: u64,
    pub(super) key: String,
}

pub(super) fn create_task(
    state: &Arc<State>,
    path: &str,
    task: NewMockTask<'_>,
    fault: Option<Fault>,
) -> String {
    let id = task_id();
    let now = unix_now();
    {
        let mut inner = state.lock();
        inner.routes.entry(path.to_owned()).or_default().accepted += 1;
        let throttled = state
            .config
            .max_running
            .is_some_and(|most| inner.running() >= most);
        inner.throttled += u64::from(throttled);
        inner.unfinished += 1;
        inner.peak_unfinished = inner.peak_unfinished.max(inner.unfinished);
        let usage = inner.keys.entry(task.key.clone()).or_default();
        usage.tasks += 1;
        usage.points += task.points;
        inner.tasks.insert(
            id.clone(),
            Task {
                id: id.clone(),
                prompt: task.prompt.to_owned(),
                callback_url: task.callback_url,
                created_at: Instant::now(),
                create_time: now,
                update_time: now,
                status: 0,
                will_fail: fault == Some(Fault::FailTask),
                points: task.points,
                key: task.key,
                throttled,
                cancelled: false,
            },
        );
    }
    let plan = match fault {
        Some(Fault::DuplicateCallbacks) => CallbackPlan::Duplicate,
        Some(Fault::OutOfOrderCallbacks) => CallbackPlan::OutOfOrder,
        Some(Fault::DropCallbacks) => CallbackPlan::Dropped,
        _ => CallbackPlan::Normal,
    };
    tokio::spawn(lifecycle(Arc::clone(state), id.clone(), plan));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_look_like_uuids() {
        let id = task_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(id, task_id());
    }
}
