//! The official API's resources that are no task, in the shapes the official SDKs read,
//! and cancelling a task: enough for every SDK method to get a typed answer offline.

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde_json::json;

use super::answer::json_response;
use super::state::{State, task_id};
use crate::body::{self, Body};
use crate::route::OFFICIAL_NON_TASK_POSTS;

/// Where the stand-in takes an upload's bytes (the `uploadUrl` it hands out): a storage
/// bucket's form endpoint, outside the API.
pub(super) const UPLOADS: &str = "/upload-bucket/";

/// Resources answered here: the non-task POSTs, and reads, updates and deletes of them
/// (and of workflows and avatar conversations, which are read and deleted only).
const RESOURCES: &[&str] = &[
    "voices",
    "avatars",
    "documents",
    "routers",
    "realtime_sessions",
    "workflows",
    "avatar_conversations",
];

/// Whether `method path` is one of the official API's non-task resources.
pub(super) fn known(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/runwayml/v1/") else {
        return false;
    };
    if *method == Method::POST {
        return OFFICIAL_NON_TASK_POSTS.contains(&rest);
    }
    if *method == Method::GET && rest == "organization" {
        return true;
    }
    let (resource, id) = rest.split_once('/').unwrap_or((rest, ""));
    RESOURCES.contains(&resource)
        && !id.contains('/')
        && match *method {
            Method::GET => true,
            Method::PATCH | Method::DELETE => !id.is_empty(),
            _ => false,
        }
}

/// Answer a request [`known`] accepted.
pub(super) fn answer(state: &State, method: &Method, path: &str) -> Response<Body> {
    let rest = path.strip_prefix("/runwayml/v1/").unwrap_or_default();
    match (method.as_str(), rest) {
        ("POST", "uploads") => {
            let id = task_id();
            json_response(
                StatusCode::OK,
                &json!({
                    "uploadUrl": format!("{}{UPLOADS}{id}", state.outputs.base()),
                    "fields": {"key": format!("uploads/{id}"), "policy": "stand-in"},
                    "runwayUri": format!("runway://uploads/{id}"),
                }),
            )
        }
        ("GET", "organization") => json_response(
            StatusCode::OK,
            &json!({
                "creditBalance": 10_000,
                "tier": {"maxMonthlyCreditSpend": 100_000,
                         "models": {"gen4_turbo": {"maxConcurrentGenerations": 5, "maxDailyGenerations": 500}}},
                "usage": {"models": {"gen4_turbo": {"dailyGenerations": 0}}},
            }),
        ),
        ("POST", "organization/usage") => {
            json_response(StatusCode::OK, &json!({"results": [], "models": []}))
        }
        ("POST", "voices/preview") => json_response(
            StatusCode::OK,
            &json!({"url": format!("{}/cdn/voice-preview.mp3", state.outputs.base()), "durationSecs": 3.0}),
        ),
        ("DELETE", _) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(body::empty())
            .unwrap_or_default(),
        ("GET", resource) if !resource.contains('/') => json_response(
            StatusCode::OK,
            &json!({"data": [], "hasMore": false, "nextCursor": null}),
        ),
        (_, rest) => {
            // A created, read or updated resource: its id, and the name a test can see.
            let id = rest.split_once('/').map_or_else(task_id, |(_, id)| id.to_owned());
            json_response(
                StatusCode::OK,
                &json!({"id": id, "name": "stand-in", "status": "READY"}),
            )
        }
    }
}

/// `DELETE /v1/tasks/{id}`: a task not yet finished is cancelled (`CANCELLED`, nothing
/// more happens to it, its points refunded); a finished one is deleted. 204 either way,
/// 404 for one the stand-in does not know.
pub(super) fn cancel(state: &Arc<State>, id: &str) -> Response<Body> {
    let mut inner = state.lock();
    let Some(task) = inner.tasks.get_mut(id) else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "Task not found"}));
    };
    if task.status >= 2 || task.cancelled {
        inner.tasks.remove(id);
    } else {
        task.cancelled = true;
        task.update_time = super::state::unix_now();
        let (key, points) = (task.key.clone(), task.points);
        inner.unfinished = inner.unfinished.saturating_sub(1);
        inner.keys.entry(key).or_default().refunded += points;
    }
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(body::empty())
        .unwrap_or_default()
}

/// An upload's bytes, taken as a bucket would.
pub(super) fn stored_upload(method: &Method) -> Response<Body> {
    let status = if *method == Method::POST || *method == Method::PUT {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    Response::builder()
        .status(status)
        .body(body::empty())
        .unwrap_or_default()
}
