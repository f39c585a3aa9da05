//! Faults the stand-in can inject, per route, from Rust or over its control API.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One scripted misbehaviour of the stand-in.
///
/// Request-level faults replace or disturb the answer to one request; task-level faults
/// ([`Fault::FailTask`], [`Fault::DuplicateCallbacks`], [`Fault::OutOfOrderCallbacks`],
/// [`Fault::DropCallbacks`])
/// let the request succeed and change the life of the task it creates.
///
/// Over the control API a fault is JSON tagged by `kind`, for example
/// `{"kind": "envelope", "code": 500, "msg": "system busy"}` or
/// `{"kind": "status", "status": 429, "retry_after": "1"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer normally (a gap in a scripted sequence of faults).
    Pass,
    /// Answer with an error envelope `{"code": code, "msg": msg, "data": null}` under
    /// HTTP `status` (200 by default: CometAPI's error inside a success).
    Envelope {
        /// HTTP status of the response.
        #[serde(default = "ok")]
        status: u16,
        /// The envelope's `code`: an integer or a string.
        code: Value,
        /// The envelope's `msg`.
        msg: String,
    },
    /// Answer with HTTP `status` (429, 5xx, ...), an optional `Retry-After` and a body
    /// (by default the error envelope with `code` equal to `status`).
    Status {
        /// HTTP status of the response.
        status: u16,
        /// Value of the `Retry-After` header: seconds or an HTTP date.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<String>,
        /// The response body, if not the default envelope.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Wait this long after reading the request, then answer normally.
    Delay {
        /// Milliseconds to wait.
        ms: u64,
    },
    /// Act on the request (a submission creates its task), then wait this long before
    /// answering: an upstream slower than the client's timeout, after accepting.
    AcceptThenDelay {
        /// Milliseconds to wait before the answer.
        ms: u64,
    },
    /// Close the connection without reading the request body or answering.
    ResetBeforeBody,
    /// Read the whole request and act on it (a submission creates its task), then close
    /// the connection without answering: the client can't know what happened.
    ResetAfterBody,
    /// Answer with exactly this status, headers and body.
    Respond {
        /// HTTP status of the response.
        status: u16,
        /// Response headers, in order.
        #[serde(default)]
        headers: Vec<(String, String)>,
        /// Response body.
        #[serde(default)]
        body: String,
    },
    /// Accept the submission, then let the task fail (status "2", points refunded).
    FailTask,
    /// Accept the submission and send every callback of the task twice.
    DuplicateCallbacks,
    /// Accept the submission and send the terminal callback before the earlier one.
    OutOfOrderCallbacks,
    /// Accept the submission and never call back: the task runs its life (the feed and
    /// `GET /runwayml/v1/tasks/{id}` follow it), but its callbacks are lost.
    DropCallbacks,
}

fn ok() -> u16 {
    200
}

impl Fault {
    /// CometAPI's busy answer: HTTP 200 with `{"code": 500, "msg": "system busy, please try again"}`.
    pub fn busy() -> Self {
        Fault::Envelope {
            status: 200,
            code: Value::from(500),
            msg: "system busy, please try again".into(),
        }
    }

    /// HTTP 429 with `Retry-After: {seconds}`.
    pub fn too_many_requests(seconds: u64) -> Self {
        Fault::Status {
            status: 429,
            retry_after: Some(seconds.to_string()),
            body: None,
        }
    }

    /// Wait `duration` before answering normally.
    pub fn delay(duration: Duration) -> Self {
        Fault::Delay {
            ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Whether this fault changes the created task rather than the response.
    pub(crate) fn is_task_fault(&self) -> bool {
        matches!(
            self,
            Fault::FailTask | Fault::DuplicateCallbacks | Fault::OutOfOrderCallbacks | Fault::DropCallbacks
        )
    }
}

/// Faults waiting to fire, in the order they were injected.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    entries: Vec<Scripted>,
}

#[derive(Debug)]
struct Scripted {
    route: String,
    fault: Fault,
    /// Requests left to disturb; `None` for every request until cleared.
    remaining: Option<u32>,
}

impl FaultQueue {
    /// Queue `fault` for the next `times` requests matching `route` (0: every request).
    pub(crate) fn push(&mut self, route: &str, fault: Fault, times: u32) {
        let remaining = (times > 0).then_some(times);
        self.entries.push(Scripted {
            route: route.to_owned(),
            fault,
            remaining,
        });
    }

    /// Take the first fault whose route matches `path`.
    pub(crate) fn take(&mut self, path: &str) -> Option<Fault> {
        let index = self.entries.iter().position(|s| route_matches(&s.route, path))?;
        let entry = &mut self.entries[index];
        match &mut entry.remaining {
            None => Some(entry.fault.clone()),
            Some(n) if *n > 1 => {
                *n -= 1;
                Some(entry.fault.clone())
            }
            Some(_) => Some(self.entries.remove(index).fault),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

/// `route` is an exact path, a prefix ending in `*`, or `*` for every path.
fn route_matches(route: &str, path: &str) -> bool {
    match route.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => route == path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_in_order_and_count_down() {
        let mut queue = FaultQueue::default();
        queue.push("/runway/pro/generate", Fault::busy(), 2);
        queue.push("/runwayml/v1/tasks/*", Fault::ResetBeforeBody, 0);
        assert_eq!(queue.take("/runway/feed"), None);
        assert_eq!(queue.take("/runway/pro/generate"), Some(Fault::busy()));
        assert_eq!(queue.take("/runway/pro/generate"), Some(Fault::busy()));
        assert_eq!(queue.take("/runway/pro/generate"), None);
        for _ in 0..3 {
            assert_eq!(queue.take("/runwayml/v1/tasks/x"), Some(Fault::ResetBeforeBody));
        }
    }

    #[test]
    fn faults_read_from_json() {
        let fault: Fault =
            serde_json::from_str(r#"{"kind":"status","status":429,"retry_after":"1"}"#).unwrap();
        assert_eq!(fault, Fault::too_many_requests(1));
        let fault: Fault = serde_json::from_str(r#"{"kind":"envelope","code":"error","msg":"x"}"#).unwrap();
        assert_eq!(
            fault,
            Fault::Envelope {
                status: 200,
                code: "error".into(),
                msg: "x".into()
            }
        );
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"explode"}"#).is_err());
    }
}
