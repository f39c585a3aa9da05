//! What makes two webhooks the same one: the identity the outbox dedups and orders
//! deliveries by, for a received callback and for an event the watcher made alike.

use bytes::Bytes;
use ring::digest;
use serde_json::Value;

use super::{NewDelivery, TaskReport};

/// The fields of a callback (or an event the watcher made) that identify it.
struct Identity {
    dedup_key: String,
    task_key: String,
    task_id: Option<String>,
    status: Option<String>,
    terminal: bool,
    /// Points charged and refunded, when the callback says.
    points: TaskReport,
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn identify(body: &[u8]) -> Option<Identity> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if let Some(task_id) = value.get("task_id").and_then(text) {
        // CometAPI's flat callback (and a result the watcher read from the feed).
        let status = value.get("status").and_then(text)?;
        let update_time = value.get("update_time").and_then(text).unwrap_or_default();
        let mut points = TaskReport::default();
        points.read_points(&value);
        points.read_progress(&value);
        return Some(Identity {
            points,
            dedup_key: format!("task:{task_id}\u{1f}{status}\u{1f}{update_time}"),
            // "2" failed and "3" succeeded are the ends of a task's life.
            terminal: matches!(status.as_str(), "2" | "3"),
            task_key: format!("task:{task_id}"),
            task_id: Some(task_id),
            status: Some(status),
        });
    }
    // An official-format task, as `GET /runwayml/v1/tasks/{id}` shows it (the watcher's
    // events): one event per status.
    let task_id = value.get("id").and_then(text)?;
    let status = value.get("status").and_then(text)?;
    Some(Identity {
        dedup_key: format!("task:{task_id}\u{1f}{status}"),
        terminal: matches!(status.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED"),
        task_key: format!("task:{task_id}"),
        task_id: Some(task_id),
        status: Some(status),
        points: TaskReport::default(),
    })
}

/// The delivery of `body` to `subscriber`: what the receiver stores for a callback, and
/// the watcher for an event it made. Deduped and ordered per subscriber (the holder of
/// another route token must not be able to suppress this subscriber's webhook by posting
/// its task fields first), by task, status and update time.
pub fn event_delivery(subscriber: &str, body: Bytes) -> NewDelivery {
    event(subscriber, body).0
}

pub(crate) fn event(subscriber: &str, body: Bytes) -> (NewDelivery, Option<String>, TaskReport) {
    let identity = identify(&body).unwrap_or_else(|| {
        tracing::warn!(
            bytes = body.len(),
            "webhook is not the documented callback shape; relaying it as it is"
        );
        let key = format!("body:{}", hex(digest::digest(&digest::SHA256, &body).as_ref()));
        Identity {
            dedup_key: key.clone(),
            task_key: key,
            task_id: None,
            status: None,
            terminal: false,
            points: TaskReport::default(),
        }
    });
    let webhook_id = format!(
        "msg_{}",
        &hex(digest::digest(&digest::SHA256, identity.dedup_key.as_bytes()).as_ref())[..32]
    );
    let scope = scope(subscriber);
    let delivery = NewDelivery {
        webhook_id,
        dedup_key: format!("{scope}/{}", identity.dedup_key),
        task_key: format!("{scope}/{}", identity.task_key),
        status: identity.status,
        terminal: identity.terminal,
        target_url: subscriber.to_owned(),
        body,
        trace: None,
        hold_until: None,
        token: None,
        task_id: None,
    };
    (delivery, identity.task_id, identity.points)
}

/// The key a task's deliveries (and archive job) to `subscriber` are kept under.
pub fn task_key(subscriber: &str, task_id: &str) -> String {
    format!("{}/task:{task_id}", scope(subscriber))
}

/// The task id a [`task_key`] (or a callback's) names, if it names one.
pub(crate) fn task_id_of(task_key: &str) -> Option<&str> {
    task_key
        .split_once("/task:")
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty())
}

/// Deliveries are deduped and ordered per subscriber: a hash of its URL.
fn scope(subscriber: &str) -> String {
    hex(digest::digest(&digest::SHA256, subscriber.as_bytes()).as_ref())[..24].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_callbacks_by_task_status_and_time() {
        let a = identify(br#"{"task_id":"t1","status":"3","update_time":"17"}"#).unwrap();
        let b = identify(br#"{"update_time":17,"status":"3","task_id":"t1","extra":true}"#).unwrap();
        assert_eq!(
            a.dedup_key, b.dedup_key,
            "same task, status and time, whatever the field order"
        );
        assert!(a.terminal);
        let running = identify(br#"{"task_id":"t1","status":"1","update_time":"16"}"#).unwrap();
        assert!(!running.terminal);
        assert_eq!(running.task_key, a.task_key);
        assert_eq!(running.points.progress, None);
        let scoped = task_key("https://app.example/hook", "t1");
        assert_eq!(task_id_of(&scoped), Some("t1"));
        assert_eq!(task_id_of("0123/webhook:abc"), None);
        let halfway = identify(br#"{"task_id":"t1","status":"1","progress":"45%"}"#).unwrap();
        assert_eq!(halfway.points.progress, Some(45));
        assert!(identify(b"[1,2]").is_none());
        assert!(identify(br#"{"status":"3"}"#).is_none());
        // The watcher's official-format events: one per status.
        let official = identify(br#"{"id":"o1","status":"RUNNING","progress":0.4}"#).unwrap();
        let later = identify(br#"{"id":"o1","status":"RUNNING","progress":0.9}"#).unwrap();
        assert_eq!(official.dedup_key, later.dedup_key);
        assert!(!official.terminal);
        for end in ["SUCCEEDED", "FAILED", "CANCELLED"] {
            let body = format!(r#"{{"id":"o1","status":"{end}"}}"#);
            assert!(identify(body.as_bytes()).unwrap().terminal, "{end}");
        }
    }
}
