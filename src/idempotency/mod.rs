//! `Idempotency-Key` on submissions: a client that sends a submission twice with the same
//! key (a retry after a timeout, a double click) pays for one task.
//!
//! [`Idempotent`] (made by [`IdempotencyLayer`]) follows the IETF httpapi draft's header,
//! as Stripe uses it. A submission that carries `Idempotency-Key` is recorded in an
//! [`IdempotencyStore`] under a hash of the client's API key and the key, with a hash of
//! its body, *before* it is sent:
//!
//! - a repeat with the same key and body gets the stored answer, marked
//!   `idempotent-replayed: true`, without a second upstream call;
//! - a repeat while the first is still in flight gets `409` (retry it shortly);
//! - the same key with a different body gets `422`;
//! - a submission whose outcome is unknown (the upstream may have created the task) stays
//!   recorded as unknown: its repeat gets the same `504 outcome unknown`, never a second
//!   task;
//! - an answer that proves no task was created (the limiter's 429, a connect failure,
//!   CometAPI still busy when the proxy stopped retrying, a refused `callback_url`)
//!   releases the key, so the client's retry with it goes through;
//! - records expire after the TTL (default 24 h).
//!
//! The sidecar keeps the records in its SQLite outbox, so they survive a restart;
//! [`MemoryIdempotencyStore`] serves an embedder with a single process.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use runway_proxy::idempotency::{IdempotencyLayer, MemoryIdempotencyStore};
//!
//! let layer = IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::default()));
//! let stack = tower::ServiceBuilder::new().layer(layer); // outermost: it sees the client's body
//! # let _ = stack;
//! ```

mod service;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower::Layer;

use crate::context::OnSubmission;
pub use crate::context::ResponseFuture;
pub use service::Idempotent;

use crate::settings::{InvalidSetting, check, longer_than_zero, parse, settings, show};
// The records and their stores live on the storage floor; these are their names where
// this layer's users have always found them.
pub use crate::store::MemoryIdempotencyStore;
pub use crate::store::idempotency::{Begin, Claim, Finished, IdempotencyStore, StoredAnswer};

/// The request header a client names its submission with.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header marking an answer replayed from the record.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

impl IdempotencySettings {
    /// Check every value.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        longer_than_zero(self.ttl, "idempotency.ttl")?;
        check(self.lease <= self.ttl, "idempotency.ttl", || {
            format!(
                "is shorter than a submission may stay in flight ({})",
                crate::duration::format(self.lease)
            )
        })
    }
}

settings! {
    /// Settings of the idempotency layer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct IdempotencySettings in idempotency {
        /// How long a record is kept (`idempotency.ttl`, default 24 h).
        pub ttl: Duration = Duration::from_secs(24 * 3600),
        /// How long a submission may stay in flight before its record counts as an unknown
        /// outcome (a process that died mid-request never finishes it; default 10 min).
        pub lease: Duration = Duration::from_secs(600),
        /// Largest body hashed; a larger submission with a key gets 413 (default 16 MiB).
        pub body_limit: usize = 16 * 1024 * 1024,
        /// Largest answer stored for replay; a larger one is recorded as an unknown outcome
        /// (default 1 MiB; a submission's answer is a few hundred bytes).
        pub answer_limit: usize = 1024 * 1024,
    }
    rows {
        ttl: restart, under Stores,
            env: "RUNWAY_PROXY_IDEMPOTENCY_TTL",
            flag: "idempotency-ttl",
            doc: "How long an Idempotency-Key is remembered: a repeat within it gets the first answer.",
            parse: parse::positive_duration, show: show::duration;
    }
}

/// Applies [`Idempotent`]: see the module docs.
#[derive(Clone, Debug)]
pub struct IdempotencyLayer {
    shared: Arc<Idempotency>,
}

/// The handler of [`Idempotent`]: the store of keys and the settings. Made by
/// [`IdempotencyLayer`].
#[derive(Debug)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    settings: IdempotencySettings,
}

impl IdempotencyLayer {
    /// Record submissions' keys in `store`, with the default settings.
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        IdempotencyLayer {
            shared: Arc::new(Idempotency {
                store,
                settings: IdempotencySettings::default(),
            }),
        }
    }

    /// Record submissions' keys in `store`, with `settings` (checked).
    pub fn with_settings(
        store: Arc<dyn IdempotencyStore>,
        settings: IdempotencySettings,
    ) -> Result<Self, InvalidSetting> {
        settings.validate()?;
        Ok(IdempotencyLayer {
            shared: Arc::new(Idempotency { store, settings }),
        })
    }

    /// The largest submission body it hashes.
    pub fn body_limit(&self) -> usize {
        self.shared.settings.body_limit
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotent<S>;

    fn layer(&self, inner: S) -> Idempotent<S> {
        OnSubmission::new(inner, Arc::clone(&self.shared))
    }
}
