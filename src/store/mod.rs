//! The storage floor: every durable record the proxy keeps (webhooks and their
//! deliveries, the watch list and ledger, idempotency records), the traits the layers
//! above use, and the backends behind them.
//!
//! | trait | what it keeps | used by |
//! |---|---|---|
//! | [`Outbox`] | received webhooks and their deliveries | the [`relay`](crate::relay) |
//! | [`TaskStore`] | accepted tasks to watch, the ledger, the guard's reservations | [`tasks`](crate::tasks), [`guard`](crate::guard), the relay |
//! | [`IdempotencyStore`] | `Idempotency-Key` records | [`idempotency`](crate::idempotency) |
//!
//! Two backends implement all three, so one database holds a proxy's whole state:
//! [`SqliteOutbox`] (embedded, one file, one writer thread with group commit) and, with
//! the `postgres` feature, [`PostgresOutbox`] (shared by replicas). A third,
//! [`MemoryIdempotencyStore`], keeps idempotency records for one process only.
//!
//! Every operation fails with one [`Error`], whose [`ErrorKind`] says what failed (the
//! store is unreachable, too slow, full, holds what this version cannot read, or another
//! writer holds what was wanted) whatever the backend.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use runway_proxy::store::{Outbox, SqliteOutbox, TaskStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), runway_proxy::store::Error> {
//! let dir = std::env::temp_dir().join(format!("runway-proxy-store-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| runway_proxy::store::Error::setup(e.to_string()))?;
//! let store = Arc::new(SqliteOutbox::open(&dir.join("outbox.sqlite3"))?);
//! assert_eq!(store.depth().await?.pending, 0);
//! assert_eq!(store.count_tasks().await?.watching, 0);
//! # drop(store);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```

mod archive;
mod columns;
mod database;
mod event;
pub mod idempotency;
pub(crate) mod journal;
mod ledger;
mod memory;
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
mod subscribers;
mod tasks;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use archive::{ArchiveBacklog, ArchiveFinish, ArchiveJob, ArchiveJobs, ArchiveState, Released};
pub use database::DatabaseSettings;
pub(crate) use event::event;
pub(crate) use event::task_id_of;
pub use event::{event_delivery, task_key};
pub use idempotency::{Begin, Claim, IdempotencyStore, StoredAnswer};
pub use journal::{JOURNAL_PAGE, JOURNAL_RETENTION, JournalEntry, JournalKind};
pub use ledger::{
    Finished, Limit, Reservation, Reserved, Seen, Spend, StatusClass, TaskLimits, TaskReport, UsageRow,
};
pub use memory::MemoryIdempotencyStore;
pub use outbox::{
    Completion, Delivery, DeliveryState, Depth, Enqueued, EventSink, Health, NewDelivery, Outbox,
};
#[cfg(feature = "postgres")]
pub use postgres::PostgresOutbox;
pub use sqlite::SqliteOutbox;
pub use subscribers::{
    Breaker, Fairness, GONE_PAUSES_AFTER, PauseReason, Rate, ReplayFilter, Signal, SubscriberReport,
    SubscriberState, Transition, subscriber_id,
};
pub use tasks::{Checked, NewTask, TaskCounts, TaskFilter, TaskFormat, TaskStore, WatchState, WatchedTask};

/// A boxed future, so the stores' traits can be used as `dyn` objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every store operation returns: a boxed future of its result or a store [`Error`].
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, Error>>;

/// What kind of failure a store had, whatever the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// It could not be set up: a path, URL or setting it cannot use.
    Setup,
    /// It cannot be reached, or has stopped (its writer thread, its connection, its pool).
    Unavailable,
    /// It did not answer in time.
    Timeout,
    /// Its disk, or a quota of the database, is full.
    Full,
    /// What it holds, or answered, is not what this version can read (a schema from a
    /// newer release, a damaged file, a row that does not parse).
    Corrupt,
    /// Another writer holds what was wanted (a lock, a data directory, a conflicting
    /// transaction).
    Conflict,
    /// Any other failure of the database.
    Other,
}

impl ErrorKind {
    /// Its name, for logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Setup => "setup",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Full => "full",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Other => "other",
        }
    }
}

/// A failure of a store itself (its disk, its connection, its data): what failed, why,
/// and the backend's own error as the source.
///
/// Cheap to clone (the source is shared), so one failure can answer every submission of
/// a group commit.
#[derive(Clone, Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A failure of `kind`, saying what failed.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The store could not be set up.
    pub fn setup(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Setup, message)
    }

    /// The store cannot be reached or has stopped.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message)
    }

    /// What the store holds or answered cannot be read.
    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Corrupt, message)
    }

    /// With the backend's own error as its source.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Arc::new(source));
        self
    }

    /// With a source other failures share (a group commit's).
    pub(crate) fn with_shared_source(mut self, source: Arc<dyn std::error::Error + Send + Sync>) -> Error {
        self.source = Some(source);
        self
    }

    /// The same failure, its message preceded by what was being done (`cannot open
    /// /data/outbox.sqlite3: ...`).
    pub fn context(mut self, doing: impl std::fmt::Display) -> Error {
        self.message = format!("{doing}: {}", self.message);
        self
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store {}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for Error {
    /// Two failures are equal when they are of one kind and say the same (sources are
    /// not compared).
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_its_kind_and_keeps_its_source() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::new(ErrorKind::Full, "cannot write").with_source(io);
        assert_eq!(err.to_string(), "store full: cannot write");
        assert_eq!(err.kind(), ErrorKind::Full);
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("disk on fire"));
        assert_eq!(Error::corrupt("schema v9").kind(), ErrorKind::Corrupt);
    }
}
