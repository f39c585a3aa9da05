//! Copies of a task's outputs in storage the operator owns, so a result outlives the
//! upstream's expiring URLs.
//!
//! [`Archiver::copy`] streams one output from its source URL into an [`ArchiveStore`]
//! (local files, S3, GCS, Azure: the `object_store` crate), never holding it whole in
//! memory: the body goes up in parts of [`PART`] bytes, at most two in flight, while its
//! SHA-256 is computed on the way. A download goes only to [`SourceHosts`] (the SSRF
//! guard), follows at most five redirects (each checked again), and is refused past
//! `max_bytes` or when fewer bytes arrive than its `Content-Length` said; the partial
//! upload is then abandoned, so a key holds a whole copy or nothing. [`webhook`] finds the
//! outputs a webhook names and rewrites it to point at their copies; for a `file://`
//! store, [`OutputLinks`] mints signed, expiring links that [`OutputServer`] serves.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "archive")]
//! # mod example {
//! use runway_proxy::archive::{Archiver, ArchiveStore, ObjectKey, SourceHosts};
//!
//! # async fn run() -> Result<(), runway_proxy::archive::ArchiveError> {
//! let store = ArchiveStore::open("file:///var/lib/runway-proxy/outputs")?;
//! let archiver = Archiver::new(store, SourceHosts::default())?;
//! let key = ObjectKey::new("d51c94db-f7fa-4ad3-a083-b8918686c478", 0, "mp4");
//! let copy = archiver
//!     .copy("https://runwaycdn.cometapi.com/attachments/video/runway/x.mp4", &key)
//!     .await?;
//! println!("{} bytes, sha256 {}", copy.bytes, copy.sha256);
//! # Ok(())
//! # }
//! # }
//! ```

#[cfg(feature = "archive")]
mod copy;
#[cfg(feature = "archive")]
mod links;
mod settings;
#[cfg(feature = "archive")]
mod sources;
#[cfg(feature = "archive")]
mod store;
#[cfg(feature = "archive")]
pub mod webhook;

use std::time::Duration;

#[cfg(feature = "archive")]
pub use copy::{Archived, ObjectKey};
#[cfg(feature = "archive")]
pub use links::{ArchiveLinks, LinkStyle, OutputLinks, OutputServer, PREFIX as OUTPUTS_PATH};
pub use settings::{ArchiveSettings, DEFAULT_HOSTS};
#[cfg(feature = "archive")]
pub use sources::SourceHosts;
#[cfg(feature = "archive")]
pub use store::ArchiveStore;

/// Bytes per uploaded part (S3 wants at least 5 MiB for every part but the last).
pub const PART: usize = 8 * 1024 * 1024;

/// Why an output could not be archived.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The store or the client could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The source URL is not one the proxy downloads from.
    #[error("output source refused: {0}")]
    Refused(String),
    /// The source answered 403 or 404: its URL expired, or the output is gone.
    #[error("output source answered {0}: expired or gone")]
    Gone(u16),
    /// The source answered another status; 429 and 5xx are worth trying again.
    #[error("output source answered {0}")]
    Status(u16),
    /// The output is larger than the limit (by its `Content-Length`, or as it arrived).
    #[error("output larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Fewer or more bytes arrived than the source's `Content-Length` said.
    #[error("output source sent {got} bytes of the {declared} it declared")]
    Truncated {
        /// `Content-Length`.
        declared: u64,
        /// Bytes received.
        got: u64,
    },
    /// The connection failed, or the body broke off.
    #[error("output download failed: {0}")]
    Download(String),
    /// The copy took longer than its timeout.
    #[error("output copy took longer than {0:?}")]
    Timeout(Duration),
    /// The store refused or failed a write.
    #[error("archive store: {0}")]
    Store(String),
}

impl ArchiveError {
    /// A short name for the kind of failure (a metric label): `setup`, `refused`,
    /// `gone`, `status`, `too_large`, `truncated`, `download`, `timeout`, `store`.
    pub fn reason(&self) -> &'static str {
        match self {
            ArchiveError::Setup(_) => "setup",
            ArchiveError::Refused(_) => "refused",
            ArchiveError::Gone(_) => "gone",
            ArchiveError::Status(_) => "status",
            ArchiveError::TooLarge { .. } => "too_large",
            ArchiveError::Truncated { .. } => "truncated",
            ArchiveError::Download(_) => "download",
            ArchiveError::Timeout(_) => "timeout",
            ArchiveError::Store(_) => "store",
        }
    }

    /// Whether trying again later may succeed (a 429 or 5xx, a broken connection, a
    /// timeout, a store failure); not for a refusal, a size over the limit or a gone
    /// source (which needs fresh URLs first).
    pub fn is_transient(&self) -> bool {
        match self {
            ArchiveError::Status(status) => *status == 429 || *status >= 500,
            ArchiveError::Download(_)
            | ArchiveError::Timeout(_)
            | ArchiveError::Store(_)
            | ArchiveError::Truncated { .. } => true,
            _ => false,
        }
    }
}

/// Copies outputs into one store. Cheap to clone.
#[cfg(feature = "archive")]
#[derive(Clone, Debug)]
pub struct Archiver {
    store: ArchiveStore,
    hosts: SourceHosts,
    client: sources::SourceClient,
    max_bytes: u64,
    timeout: Duration,
}

#[cfg(feature = "archive")]
impl Archiver {
    /// Copy into `store`, downloading only from `hosts`. Limits: 2 GiB per output and 10
    /// minutes per copy, until changed with [`max_bytes`](Self::max_bytes) and
    /// [`timeout`](Self::timeout).
    pub fn new(store: ArchiveStore, hosts: SourceHosts) -> Result<Archiver, ArchiveError> {
        let client = sources::source_client(&hosts, Duration::from_secs(10))?;
        Ok(Archiver {
            store,
            hosts,
            client,
            max_bytes: 2 << 30,
            timeout: Duration::from_secs(600),
        })
    }

    /// Refuse an output larger than this.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Give up a copy (download and upload) after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The store it copies into.
    pub fn store(&self) -> &ArchiveStore {
        &self.store
    }
}
