//! Idempotency records: what a store knows of an `Idempotency-Key`, and the
//! [`IdempotencyStore`] that keeps them.

use std::time::Duration;

use bytes::Bytes;

use super::StoreFuture;

/// An answer kept for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The HTTP status.
    pub status: u16,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body, exactly as the client got it.
    pub body: Bytes,
}

/// What a store knows of a key when a submission with it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// The key is new: it is now recorded as in flight, and the submission may go.
    Started,
    /// The first submission with this key is still in flight.
    InFlight,
    /// The key was used with a different body.
    Mismatch,
    /// The first submission's answer.
    Replay(StoredAnswer),
    /// The first submission's outcome is unknown: it may have created a task.
    Unknown,
}

/// How a recorded submission ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// With this answer, to replay.
    Answer(StoredAnswer),
    /// With an unknown outcome.
    Unknown,
}

/// A submission's claim on an idempotency key: the key (as stored: hashed with the API
/// key), a hash of the body, how long its record stays in flight, and how long it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The key, as stored.
    pub key: String,
    /// A hash of the submission's body: a repeat with another body is refused.
    pub fingerprint: String,
    /// How long the record counts as in flight (a crashed holder's lease runs out).
    pub lease: Duration,
    /// How long the record is kept.
    pub ttl: Duration,
}

impl Claim {
    /// A claim on `key` for a body that hashes to `fingerprint`.
    pub fn new(
        key: impl Into<String>,
        fingerprint: impl Into<String>,
        lease: Duration,
        ttl: Duration,
    ) -> Self {
        Claim {
            key: key.into(),
            fingerprint: fingerprint.into(),
            lease,
            ttl,
        }
    }
}

/// A store of idempotency records, shared by every replica that should honour a key.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Look the claim's key up for a submission whose body hashes to its fingerprint;
    /// when the key is new (or its record expired), record it as in flight for its lease
    /// and keep it its ttl.
    fn begin(&self, claim: Claim) -> StoreFuture<'_, Begin>;

    /// Record how the submission with `key` ended.
    fn finish(&self, key: String, finished: Finished) -> StoreFuture<'_, ()>;

    /// Forget `key`: the submission provably created nothing, so its retry may go.
    fn release(&self, key: String) -> StoreFuture<'_, ()>;
}

impl std::fmt::Debug for dyn IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyStore")
    }
}
