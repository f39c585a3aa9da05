//! The stand-in's state: its tasks, counters, recorded requests and queued faults.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::fault::FaultQueue;
use super::{KeyUsage, MockConfig, RecordedRequest, RouteStats, SentCallback, TaskSnapshot};

#[derive(Debug)]
pub(super) struct Task {
    pub(super) id: String,
    pub(super) prompt: String,
    pub(super) callback_url: Option<String>,
    pub(super) created_at: Instant,
    pub(super) create_time: u64,
    pub(super) update_time: u64,
    /// 0 queued, 1 running, 2 failed, 3 succeeded.
    pub(super) status: u8,
    pub(super) will_fail: bool,
    /// What it costs: 32 points per second of video (CometAPI charges at submission and
    /// refunds a failed task in full).
    pub(super) points: u64,
    /// The hash of the key that submitted it ([`key_hash`](crate::tasks::key_hash)).
    pub(super) key: String,
    /// Waiting for a slot under [`MockConfig::max_running`] (Runway's `THROTTLED`).
    pub(super) throttled: bool,
    /// When it ended (its outputs expire from then).
    pub(super) finished_at: Option<Instant>,
}

/// The path prefix of the stand-in's CDN (served by `outputs`).
pub(super) const OUTPUTS: &str = "/cdn/";

/// The kinds of output a task has, with their extension and content type.
pub(super) const OUTPUT_KINDS: [(&str, &str, &str); 3] = [
    ("video", "mp4", "video/mp4"),
    ("poster", "png", "image/png"),
    ("last_frame", "png", "image/png"),
];

/// The URL of task `id`'s output of `kind` (`video`, `poster`, `last_frame`) under `base`.
pub(super) fn output_url(base: &str, kind: &str, id: &str) -> String {
    let ext = OUTPUT_KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map_or("bin", |(_, ext, _)| ext);
    format!("{base}{OUTPUTS}{kind}/{id}.{ext}")
}

/// Points per second of video the stand-in charges (so a default 10 s task costs 320).
pub(super) const POINTS_PER_SECOND: u64 = 32;

impl Task {
    pub(super) fn snapshot(&self) -> TaskSnapshot {
        TaskSnapshot {
            id: self.id.clone(),
            status: self.status_str(),
            callback_url: self.callback_url.clone(),
            prompt: self.prompt.clone(),
            points: self.points,
            throttled: self.throttled,
        }
    }

    pub(super) fn status_str(&self) -> &'static str {
        ["0", "1", "2", "3"][usize::from(self.status.min(3))]
    }

    /// The callback body, in CometAPI's documented shape: flat, every value a string.
    /// Outputs are served by the stand-in itself, under `base`.
    pub(super) fn callback_payload(&self, base: &str) -> Value {
        let done = self.status == 3;
        let media = |kind: &str| {
            if done {
                output_url(base, kind, &self.id)
            } else {
                String::new()
            }
        };
        json!({
            "task_id": self.id,
            "status": self.status_str(),
            "prompt": self.prompt,
            "prompt_en": self.prompt,
            "video_url": media("video"),
            "poster": media("poster"),
            "last_frame": media("last_frame"),
            "msg": if self.status == 2 { Value::from("generation failed") } else { Value::Null },
            "point": self.points.to_string(),
            "refund": if self.status == 2 { self.points.to_string() } else { "0".to_owned() },
            "create_time": self.create_time.to_string(),
            "update_time": self.update_time.to_string(),
        })
    }

    /// The task in the official shape; outputs under `base`.
    pub(super) fn official(&self, base: &str) -> Value {
        let status = match self.status {
            0 if self.throttled => "THROTTLED",
            0 => "PENDING",
            1 => "RUNNING",
            2 => "FAILED",
            _ => "SUCCEEDED",
        };
        json!({
            "id": self.id,
            "status": status,
            "createdAt": self.create_time,
            "output": if self.status == 3 { json!([output_url(base, "video", &self.id)]) } else { json!([]) },
            "failure": if self.status == 2 { Value::from("generation failed") } else { Value::Null },
            "failureCode": if self.status == 2 { Value::from("INTERNAL") } else { Value::Null },
            "progress": match self.status { 0 => 0.0, 1 => 0.5, _ => 1.0 },
        })
    }
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) faults: FaultQueue,
    pub(super) routes: BTreeMap<String, RouteStats>,
    pub(super) recorded: VecDeque<RecordedRequest>,
    pub(super) tasks: HashMap<String, Task>,
    pub(super) callbacks_sent: u64,
    pub(super) callbacks_failed: u64,
    pub(super) sent_callbacks: Vec<SentCallback>,
    pub(super) in_flight: u64,
    pub(super) max_in_flight: u64,
    /// Tasks accepted and not finished (throttled ones included), and the most at once.
    pub(super) unfinished: u64,
    pub(super) peak_unfinished: u64,
    /// Tasks that had to wait as `THROTTLED`.
    pub(super) throttled: u64,
    /// What each key was charged, by key hash.
    pub(super) keys: BTreeMap<String, KeyUsage>,
}

impl Inner {
    /// Tasks holding one of the account's generation slots (unfinished, not throttled).
    pub(super) fn running(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| t.status < 2 && !t.throttled)
            .count()
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) config: MockConfig,
    /// The stand-in's own URL (`http://{addr}`): its outputs are served there.
    pub(super) base: String,
    pub(super) inner: Mutex<Inner>,
    pub(super) callback_client: Client<HttpConnector, Full<Bytes>>,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl State {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock can't leave `Inner` half-updated in a way that
        // matters to a test double; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Now, in Unix seconds (the callbacks' time fields).
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
