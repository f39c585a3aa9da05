//! What one check of a watched task found: the answer of `GET /runwayml/v1/tasks/{id}`
//! or of the feed, read into a status and, when it is new, an event to relay.

use bytes::Bytes;
use serde_json::Value;

use super::ANSWER_LIMIT;
use crate::tasks::TaskReport;

/// What one check found.
#[derive(Debug, PartialEq)]
pub(super) enum Found {
    /// The task's status now, and the event to relay if it is new.
    Status {
        status: String,
        terminal: bool,
        event: Option<Bytes>,
        /// Points charged and refunded, when the answer says (the feed does).
        points: TaskReport,
    },
    /// Not known upstream yet (`task_not_exist` right after creation) or not finished.
    NotYet,
    /// No usable answer.
    Failed(CheckFailed),
}

/// Why a check got no usable answer.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(super) enum CheckFailed {
    /// The request could not be built (a task id that is no path segment).
    #[error("the task id is not a valid path")]
    BadTaskId,
    /// The feed request could not be built.
    #[error("cannot build the feed request")]
    FeedRequest,
    /// The poller failed before an answer came (its error, as it says it).
    #[error("{0}")]
    Poller(String),
    /// The answer's body broke off.
    #[error("the answer broke off: {0}")]
    Body(String),
    /// An answer past [`ANSWER_LIMIT`].
    #[error("the answer is larger than {ANSWER_LIMIT} bytes")]
    TooLarge,
    /// An error status.
    #[error("the upstream answered {0}")]
    Status(http::StatusCode),
    /// An answer that is not JSON.
    #[error("the answer is not JSON")]
    NotJson,
    /// A task answer without a status.
    #[error("the task answer has no status")]
    NoStatus,
}

/// What `GET /runwayml/v1/tasks/{id}` says, bare (`{"id", "status", ...}`) or wrapped in
/// CometAPI's envelope (`{"code", "data": {...}}`): an event when the status is new.
pub(super) fn official_found(bytes: &[u8], known: Option<&str>) -> Found {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Found::Failed(CheckFailed::NotJson);
    };
    let mut task = match value.get("data") {
        Some(data) if data.get("status").is_some() => data.clone(),
        _ => value,
    };
    let Some(status) = task.get("status").and_then(Value::as_str).map(str::to_owned) else {
        return Found::Failed(CheckFailed::NoStatus);
    };
    let terminal = matches!(status.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED");
    let mut points = TaskReport::default();
    points.read_progress(&task);
    let event = (known != Some(status.as_str())).then(|| {
        if let Some(fields) = task.as_object_mut() {
            fields.insert("runway_proxy_source".into(), Value::from("poll"));
        }
        Bytes::from(task.to_string())
    });
    Found::Status {
        status,
        terminal,
        event,
        points,
    }
}

/// What the feed says of a reverse-format task: its final result, in the flat shape of
/// CometAPI's callbacks (marked with `source`), once it has one.
pub(super) fn feed_found(bytes: &[u8], source: &str) -> Found {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Found::Failed(CheckFailed::NotJson);
    };
    let code = value.get("code");
    if code.and_then(Value::as_u64) != Some(200) && code.and_then(Value::as_str) != Some("200") {
        // `task_not_exist` right after creation, or a passing error: ask again later.
        return Found::NotYet;
    }
    let Some(mut data) = value.get("data").filter(|d| d.is_object()).cloned() else {
        return Found::NotYet;
    };
    let status = match data.get("status") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Found::NotYet,
    };
    // "2" failed and "3" succeeded are the ends of a task's life.
    if !matches!(status.as_str(), "2" | "3") {
        return Found::NotYet;
    }
    if let Some(fields) = data.as_object_mut() {
        // The feed's own word for the state is not part of a callback.
        fields.remove("state");
        fields.insert("runway_proxy_source".into(), Value::from(source));
    }
    let mut points = TaskReport::default();
    points.read_points(&data);
    points.read_progress(&data);
    Found::Status {
        status,
        terminal: true,
        event: Some(Bytes::from(data.to_string())),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_answers_bare_or_wrapped_make_an_event_per_new_status() {
        let bare = br#"{"id":"o1","status":"RUNNING","progress":0.5}"#;
        let Found::Status {
            status,
            terminal,
            event,
            ..
        } = official_found(bare, Some("PENDING"))
        else {
            panic!()
        };
        assert_eq!((status.as_str(), terminal), ("RUNNING", false));
        let event: Value = serde_json::from_slice(&event.unwrap()).unwrap();
        assert_eq!(event["progress"], 0.5);
        assert_eq!(event["runway_proxy_source"], "poll");
        let Found::Status { event, .. } = official_found(bare, Some("RUNNING")) else {
            panic!()
        };
        assert_eq!(event, None, "the same status again: no event");
        let wrapped =
            br#"{"code":200,"data":{"id":"o1","status":"FAILED","failure":"x","failureCode":"INTERNAL"}}"#;
        let Found::Status { terminal, event, .. } = official_found(wrapped, None) else {
            panic!()
        };
        assert!(terminal);
        let event: Value = serde_json::from_slice(&event.unwrap()).unwrap();
        assert_eq!(event["failureCode"], "INTERNAL");
        assert!(matches!(official_found(b"<html>", None), Found::Failed(_)));
        assert!(matches!(
            official_found(br#"{"id":"o1"}"#, None),
            Found::Failed(_)
        ));
    }

    #[test]
    fn the_feed_gives_a_final_result_in_the_callback_shape_or_nothing_yet() {
        let done = br#"{"code":200,"msg":"success","data":{"task_id":"t1","status":"3","state":"succeeded","update_time":"17","video_url":"v"}}"#;
        let Found::Status {
            status,
            terminal,
            event,
            ..
        } = feed_found(done, "recovered")
        else {
            panic!()
        };
        assert_eq!((status.as_str(), terminal), ("3", true));
        let event: Value = serde_json::from_slice(&event.unwrap()).unwrap();
        assert_eq!(event["update_time"], "17");
        assert_eq!(event["runway_proxy_source"], "recovered");
        assert!(event.get("state").is_none());
        let running = br#"{"code":200,"data":{"task_id":"t1","status":"1"}}"#;
        assert_eq!(feed_found(running, "recovered"), Found::NotYet);
        let missing = br#"{"code":404,"msg":"task_not_exist","data":null}"#;
        assert_eq!(feed_found(missing, "recovered"), Found::NotYet);
        assert!(matches!(feed_found(b"nope", "recovered"), Found::Failed(_)));
    }
}
