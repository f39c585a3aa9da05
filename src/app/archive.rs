//! The output archive, wired from `[archive]`: the copier and its links for the relay,
//! the webhook listener's `/-/outputs/` for a `file://` store, and the retention sweep.

use std::sync::Arc;
use std::time::Duration;

use super::StartError;
use crate::archive::{
    ArchiveError, ArchiveLinks, ArchiveSettings, ArchiveStore, Archiver, LinkStyle, OutputLinks,
    OutputServer, SourceHosts,
};
use crate::callback::Callbacks;
use crate::relay::{ArchiveMetrics, Archiving};
use crate::store::ArchiveJobs;

/// The archive as `serve` runs it.
pub(super) struct Archive {
    pub(super) archiving: Archiving,
    store: ArchiveStore,
    /// Serves the links, when the proxy serves them itself (`file://`).
    pub(super) server: Option<OutputServer>,
    retention: Duration,
}

impl Archive {
    /// The archive `settings` name, keeping its jobs in `jobs`; `None` when off.
    /// Served links are minted under `public_url` (the webhook listener's).
    pub(super) fn open(
        settings: &ArchiveSettings,
        jobs: Arc<dyn ArchiveJobs>,
        callbacks: &Callbacks,
        public_url: &str,
    ) -> Result<Option<Archive>, StartError> {
        let Some(url) = &settings.url else {
            return Ok(None);
        };
        let store = ArchiveStore::open(url).map_err(setup)?;
        let archiver = Archiver::new(store.clone(), SourceHosts::new(settings.hosts.iter().cloned()))
            .map_err(setup)?
            .max_bytes(settings.max_bytes as u64)
            .timeout(settings.timeout);
        // Links signed with the callback token keys: the keys in force at start (a
        // reload that rotates them serves links minted before with the keys they kept).
        let keys = callbacks.keys().get();
        let (style, server) = match &settings.public_url {
            Some(base) => (LinkStyle::Public(base.clone()), None),
            None if store.can_sign() => (LinkStyle::Presigned(settings.link_lifetime), None),
            None => (
                LinkStyle::Served(OutputLinks::new(public_url, Arc::clone(&keys))),
                Some(OutputServer::new(store.clone(), keys, settings.link_lifetime)),
            ),
        };
        let links = ArchiveLinks::new(store.clone(), style).map_err(setup)?;
        tracing::info!(store = %store.url(), served = server.is_some(), "task outputs are archived");
        Ok(Some(Archive {
            archiving: Archiving::new(
                archiver,
                links,
                jobs,
                settings.deadline,
                settings.workers,
                settings.timeout,
            ),
            store,
            server,
            retention: settings.retention,
        }))
    }

    /// Delete copies older than the retention, once an hour, until `stopped`.
    pub(super) async fn sweep(
        store: ArchiveStore,
        retention: Duration,
        metrics: Option<Arc<ArchiveMetrics>>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        if retention.is_zero() {
            return;
        }
        loop {
            match store.sweep(retention).await {
                Ok(deleted) => {
                    if let Some(metrics) = &metrics {
                        metrics.swept.add(deleted);
                    }
                    tracing::info!(deleted, retention = ?retention, "archive retention sweep done");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "archive retention sweep failed; trying again in an hour")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    }

    /// The store and retention the sweep needs.
    pub(super) fn retention(&self) -> (ArchiveStore, Duration) {
        (self.store.clone(), self.retention)
    }
}

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

fn setup(err: ArchiveError) -> StartError {
    StartError::Setting(crate::settings::InvalidSetting::new(
        "archive.url",
        err.to_string(),
    ))
}
