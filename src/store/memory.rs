//! [`MemoryIdempotencyStore`]: records in this process's memory.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use super::StoreFuture;
use super::idempotency::{Begin, Claim, Finished, IdempotencyStore, StoredAnswer};

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
    fn begin_now(&self, claim: Claim) -> Begin {
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() > 1024 {
            records.retain(|_, r| r.expires > now);
        }
        if let Some(record) = records.get_mut(&claim.key).filter(|r| r.expires > now) {
            if record.fingerprint != claim.fingerprint {
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
            fingerprint: claim.fingerprint,
            state: State::InFlight {
                until: now + claim.lease,
            },
            expires: now + claim.ttl,
        };
        records.insert(claim.key, record);
        Begin::Started
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn begin(&self, claim: Claim) -> StoreFuture<'_, Begin> {
        let begun = self.begin_now(claim);
        Box::pin(async move { Ok(begun) })
    }

    fn finish(&self, key: String, finished: Finished) -> StoreFuture<'_, ()> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = records.get_mut(&key) {
            record.state = match finished {
                Finished::Answer(answer) => State::Done(answer),
                Finished::Unknown => State::Unknown,
            };
        }
        Box::pin(async { Ok(()) })
    }

    fn release(&self, key: String) -> StoreFuture<'_, ()> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        Box::pin(async { Ok(()) })
    }
}
