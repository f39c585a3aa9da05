//! The stand-in's state: its tasks, counters, recorded requests and queued faults.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    /// Cancelled (`DELETE /v1/tasks/{id}` before it finished): `CANCELLED`, and nothing
    /// more happens to it.
    pub(super) cancelled: bool,
}

/// The path prefix of the stand-in's CDN (served by `outputs`).
pub(super) const OUTPUTS: &str = "/cdn/";

/// The kinds of output a task has, with their extension and content type.
pub(super) const OUTPUT_KINDS: [(&str, &str, &str); 3] = [
    ("video", "mp4", "video/mp4"),
    ("poster", "png", "image/png"),
    ("last_frame", "png", "image/png"),
];

/// How the stand-in's output URLs are made: under its own base URL and, when outputs
/// expire, signed with their expiry (`?expires={unix ms}&signature={hex}`), as a CDN's
/// signed URLs are: a URL read later (a task read again) expires later, and an altered
/// expiry does not verify.
#[derive(Debug)]
pub(super) struct OutputUrls {
    base: String,
    lifetime: Option<Duration>,
    secret: u64,
}

impl OutputUrls {
    pub(super) fn new(base: String, lifetime: Option<Duration>) -> OutputUrls {
        OutputUrls {
            base,
            lifetime,
            secret: rand::random(),
        }
    }

    /// The stand-in's own base URL.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// The URL of task `id`'s output of `kind` (`video`, `poster`, `last_frame`), issued now.
    pub(super) fn url(&self, kind: &str, id: &str) -> String {
        let ext = OUTPUT_KINDS
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map_or("bin", |(_, ext, _)| ext);
        let path = format!("{OUTPUTS}{kind}/{id}.{ext}");
        match self.lifetime {
            None => format!("{}{path}", self.base),
            Some(lifetime) => {
                let expires = crate::duration::unix_millis() + crate::duration::millis(lifetime);
                let signature = self.signature(&path, expires);
                format!("{}{path}?expires={expires}&signature={signature:016x}", self.base)
            }
        }
    }

    /// Whether a request for `path` with `query` may read the output now: always when
    /// outputs do not expire, else with a genuine signature before its expiry.
    pub(super) fn admits(&self, path: &str, query: Option<&str>) -> bool {
        if self.lifetime.is_none() {
            return true;
        }
        let mut expires = None;
        let mut signature = None;
        for pair in query.unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("expires", value)) => expires = value.parse::<i64>().ok(),
                Some(("signature", value)) => signature = u64::from_str_radix(value, 16).ok(),
                _ => {}
            }
        }
        match (expires, signature) {
            (Some(expires), Some(signature)) => {
                signature == self.signature(path, expires) && crate::duration::unix_millis() < expires
            }
            _ => false,
        }
    }

    /// FNV-1a over the secret, the path and the expiry: enough to tell an altered URL.
    fn signature(&self, path: &str, expires: i64) -> u64 {
        self.secret
            .to_le_bytes()
            .iter()
            .chain(path.as_bytes())
            .chain(&expires.to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
            })
    }
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
    /// Outputs are served by the stand-in itself ([`OutputUrls`]).
    pub(super) fn callback_payload(&self, outputs: &OutputUrls) -> Value {
        let done = self.status == 3;
        let media = |kind: &str| {
            if done {
                outputs.url(kind, &self.id)
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

    /// The task in the official shape.
    pub(super) fn official(&self, outputs: &OutputUrls) -> Value {
        let status = match self.status {
            _ if self.cancelled => "CANCELLED",
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
            "output": if self.status == 3 { json!([outputs.url("video", &self.id)]) } else { json!([]) },
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
            .filter(|t| t.status < 2 && !t.throttled && !t.cancelled)
            .count()
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) config: MockConfig,
    /// Its outputs' URLs: under its own address.
    pub(super) outputs: OutputUrls,
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

/// A random id in the UUID v4 text form CometAPI uses.
pub(super) fn task_id() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}
