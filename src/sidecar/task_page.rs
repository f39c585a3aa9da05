//! `GET /-/tasks/{id}`: one watched task, and its archive when outputs are archived.

use http::{Method, StatusCode};

use crate::body::Body;
use crate::envelope;
use crate::relay::TaskArchive;
use crate::tasks::TaskStore;

/// Answer `GET /-/tasks/{id}`: the task's record (as `/-/tasks` lists it) and, when the
/// proxy archives outputs, `archive`: its job's state and each copy with a link minted
/// now (ask again for a fresh link). 404 for a task the watch list does not hold.
pub(super) async fn task(
    store: &dyn TaskStore,
    archive: Option<&dyn TaskArchive>,
    method: &Method,
    id: &str,
) -> http::Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return envelope::error_response(StatusCode::METHOD_NOT_ALLOWED, "/-/tasks/{id} only answers GET");
    }
    let task = match store.task(id.to_owned()).await {
        Ok(Some(task)) => task,
        Ok(None) => return envelope::error_response(StatusCode::NOT_FOUND, "no such task on the watch list"),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read a task for /-/tasks/{{id}}");
            return envelope::error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the task store does not answer",
            );
        }
    };
    let archive = match (archive, task.subscriber.clone()) {
        (Some(archive), Some(subscriber)) => match archive.report(subscriber, task.task_id.clone()).await {
            Ok(report) => report,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a task's archive job");
                Some(serde_json::json!({"error": "the store does not answer"}))
            }
        },
        _ => None,
    };
    let page = serde_json::json!({ "task": task, "archive": archive });
    envelope::json_response(StatusCode::OK, page.to_string().into_bytes())
}
