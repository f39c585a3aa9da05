//! [`MemoryIdempotencyStore`]: records in this process's memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::idempotency::{Begin, Finished, IdempotencyStore, StoredAnswer};
use super::{BoxFuture, Error};

/// Idempotency records kept in memory: for one process that needs no durability (a
/// restart forgets every key). The sidecar uses its SQLite outbox instead.
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    records: Mutex<HashMap<String, Record>>,
}

#[derive(Debug)]
struct Record {
    fingerprint: String,
    state: State,
    expires: Instant,
}

#[derive(Debug)]
enum State {
    InFlight { until: Instant },
    Done(StoredAnswer),
    Unknown,
}

impl MemoryIdempotencyStore {
    fn begin_now(&self, key: String, fingerprint: String, lease: Duration, ttl: Duration) -> Begin {
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() > 1024 {
            records.retain(|_, r| r.expires > now);
        }
        if let Some(record) = records.get_mut(&key).filter(|r| r.expires > now) {
            if record.fingerprint != fingerprint {
                return Begin::Mismatch;
            }
            return match &record.state {
                State::InFlight { until } if *until > now => Begin::InFlight,
                State::InFlight { .. } => {
                    record.state = State::Unknown;
                    Begin::Unknown
                }
                State::Done(answer) => Begin::Replay(answer.clone()),
                State::Unknown => Begin::Unknown,
            };
        }
        let record = Record {
            fingerprint,
            state: State::InFlight { until: now + lease },
            expires: now + ttl,
        };
        records.insert(key, record);
        Begin::Started
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn begin(
        &self,
        key: String,
        fingerprint: String,
        lease: Duration,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Begin, Error>> {
        let begun = self.begin_now(key, fingerprint, lease, ttl);
        Box::pin(async move { Ok(begun) })
    }

    fn finish(&self, key: String, finished: Finished) -> BoxFuture<'_, Result<(), Error>> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = records.get_mut(&key) {
            record.state = match finished {
                Finished::Answer(answer) => State::Done(answer),
                Finished::Unknown => State::Unknown,
            };
        }
        Box::pin(async { Ok(()) })
    }

    fn release(&self, key: String) -> BoxFuture<'_, Result<(), Error>> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        Box::pin(async { Ok(()) })
    }
}
