//! Idempotency records: what a store knows of an `Idempotency-Key`, and the
//! [`IdempotencyStore`] that keeps them.

use std::time::Duration;

use bytes::Bytes;

use super::{BoxFuture, Error};

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

/// A store of idempotency records, shared by every replica that should honour a key.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Look `key` up for a submission whose body hashes to `fingerprint`; when the key is
    /// new (or its record expired), record it as in flight for `lease` and keep it `ttl`.
    fn begin(
        &self,
        key: String,
        fingerprint: String,
        lease: Duration,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Begin, Error>>;

    /// Record how the submission with `key` ended.
    fn finish(&self, key: String, finished: Finished) -> BoxFuture<'_, Result<(), Error>>;

    /// Forget `key`: the submission provably created nothing, so its retry may go.
    fn release(&self, key: String) -> BoxFuture<'_, Result<(), Error>>;
}

impl std::fmt::Debug for dyn IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyStore")
    }
}
