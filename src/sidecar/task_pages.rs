//! `GET /-/tasks` (the watch list, filtered by state and key) and `GET /-/tasks/{id}`
//! (one task: its record, journal, trace id and archive).

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::query::percent_decoded;
use crate::body::Body;
use crate::envelope;
use crate::relay::{RelayAdmin, TaskArchive, redact};
use crate::tasks::{TaskFilter, TaskStore, WatchState, WatchedTask};

/// Most tasks one page of `/-/tasks` lists.
const TASK_PAGE: usize = 100;

/// A task as the admin paths show it: its record, and its subscriber without the parts
/// of the URL that carry secrets.
fn shown(task: &WatchedTask) -> Value {
    let mut value = serde_json::to_value(task).unwrap_or(Value::Null);
    if let Some(fields) = value.as_object_mut() {
        fields.insert("subscriber".into(), task.subscriber.as_deref().map(redact).into());
    }
    value
}

/// `GET /-/tasks?status=pending|watching|done|unknown&key=LABEL|HASH&after=ID&limit=N`: a
/// page of the watch list, oldest first, with `next` (the `after` for the next page). With
/// outputs archived, each task says its archive job's state.
pub(super) async fn tasks(
    store: &dyn TaskStore,
    archive: Option<&dyn TaskArchive>,
    query: Option<&str>,
) -> http::Response<Body> {
    let bad = |msg: &str| envelope::error_response(StatusCode::BAD_REQUEST, msg);
    let (mut filter, mut after, mut limit) = (TaskFilter::default(), 0i64, TASK_PAGE);
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(value) = percent_decoded(raw) else {
            return bad(&format!("{name}: the value is not percent-encoded UTF-8"));
        };
        match name {
            "status" if value.is_empty() => {}
            "status" => match WatchState::parse(&value) {
                Some(parsed) => filter.state = Some(parsed),
                None => {
                    return bad(&format!(
                        "status {value:?} is not pending, watching, done or unknown"
                    ));
                }
            },
            "key" if value.is_empty() => {}
            "key" => filter = filter.key(value),
            "after" => match value.parse() {
                Ok(parsed) => after = parsed,
                Err(_) => return bad("after must be a task row id"),
            },
            "limit" => match value.parse::<usize>() {
                Ok(parsed) if parsed > 0 => limit = parsed.min(1000),
                _ => return bad("limit must be a number from 1 to 1000"),
            },
            _ => {
                return bad(&format!(
                    "unknown query parameter {name:?}: /-/tasks takes status, key, after and limit"
                ));
            }
        }
    }
    let status = filter.state;
    let listed = match store.list_tasks(filter, after, limit).await {
        Ok(tasks) => tasks,
        Err(err) => return envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    };
    let next = (listed.len() == limit)
        .then(|| listed.last().map(|t| t.id))
        .flatten();
    let mut tasks = Vec::with_capacity(listed.len());
    for task in &listed {
        let mut value = shown(task);
        if let (Some(archive), Some(subscriber), Some(fields)) =
            (archive, task.subscriber.clone(), value.as_object_mut())
        {
            let state = archive.state(subscriber, task.task_id.clone()).await;
            // A store that does not answer leaves the column empty, not the page.
            fields.insert("archive".into(), state.ok().flatten().into());
        }
        tasks.push(value);
    }
    let page = json!({ "status": status, "tasks": tasks, "next": next });
    envelope::json_response(StatusCode::OK, page.to_string())
}

/// Answer `GET /-/tasks/{id}`: the task's record (as `/-/tasks` lists it), its
/// `journal` (each callback, check and failed delivery attempt, oldest first), the
/// `deliveries` of its events to its subscriber (state, attempts, last error, when
/// delivered), the `trace_id` of its submission when traces were on, and, when the proxy
/// archives outputs, `archive`: its job's state and each copy with a link minted now (ask
/// again for a fresh link). 404 for a task the watch list does not hold.
pub(super) async fn task(
    store: &dyn TaskStore,
    relay: Option<&RelayAdmin>,
    archive: Option<&dyn TaskArchive>,
    method: &Method,
    id: &str,
) -> http::Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return envelope::error_response(StatusCode::METHOD_NOT_ALLOWED, "/-/tasks/{id} only answers GET");
    }
    let unavailable = |err: crate::store::Error| {
        tracing::warn!(error = %err, "cannot read a task for /-/tasks/{{id}}");
        envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, "the task store does not answer")
    };
    let task = match store.task(id.to_owned()).await {
        Ok(Some(task)) => task,
        Ok(None) => return envelope::error_response(StatusCode::NOT_FOUND, "no such task on the watch list"),
        Err(err) => return unavailable(err),
    };
    let journal = match store.journal(id.to_owned()).await {
        Ok(journal) => journal,
        Err(err) => return unavailable(err),
    };
    let trace_id = match store.trace_of(id.to_owned()).await {
        Ok(trace) => trace.as_deref().and_then(trace_id_of).map(str::to_owned),
        Err(err) => return unavailable(err),
    };
    let deliveries = match (relay, task.subscriber.as_deref()) {
        (Some(relay), Some(subscriber)) => match relay.deliveries_of(subscriber, id).await {
            Ok(deliveries) => deliveries,
            Err(err) => return unavailable(err),
        },
        _ => Vec::new(),
    };
    let archive = match (archive, task.subscriber.clone()) {
        (Some(archive), Some(subscriber)) => match archive.report(subscriber, task.task_id.clone()).await {
            Ok(report) => report,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a task's archive job");
                Some(json!({"error": "the store does not answer"}))
            }
        },
        _ => None,
    };
    let page = json!({
        "task": shown(&task),
        "journal": journal,
        "deliveries": deliveries,
        "trace_id": trace_id,
        "archive": archive,
    });
    envelope::json_response(StatusCode::OK, page.to_string().into_bytes())
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn a_traceparent_names_its_trace() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("00-short-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of(""), None);
    }
}
