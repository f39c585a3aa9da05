//! The submission-time check of a subscriber host's resolved addresses, cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Refused, SubscriberPolicy, SubscriberUrl};

/// How long a subscriber host may take to resolve when it is checked at submission.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a resolved host's verdict is reused.
const RESOLVED_TTL: Duration = Duration::from_secs(60);
/// How long a host that did not resolve is let through without asking again.
const UNRESOLVED_TTL: Duration = Duration::from_secs(5);
/// Most hosts whose verdict is cached.
const RESOLVED_CACHE: usize = 1024;

/// A verdict and when it stops being reused.
type CachedVerdict = (Instant, Result<(), Refused>);

/// Recent resolution verdicts by host. The lock is held for a lookup or an insert only.
#[derive(Debug, Default)]
pub(super) struct ResolvedCache {
    entries: Mutex<HashMap<String, CachedVerdict>>,
}

impl ResolvedCache {
    /// Refuse a host that resolves to an internal address. A host that doesn't resolve
    /// now is let through: delivery checks again, and a DNS hiccup shouldn't fail a
    /// submission. Verdicts are cached for a short while, so a busy subscriber host costs
    /// one lookup, not one per submission (delivery re-checks every connection anyway).
    pub(super) async fn check(
        &self,
        subscriber: &SubscriberUrl,
        policy: &SubscriberPolicy,
    ) -> Result<(), Refused> {
        if let Some(verdict) = self.get(&subscriber.host) {
            return verdict;
        }
        let default_port = if subscriber.uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let port = subscriber.uri.port_u16().unwrap_or(default_port);
        let lookup = tokio::net::lookup_host((subscriber.host.as_str(), port));
        let (verdict, ttl) = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => {
                let verdict = addrs.try_for_each(|addr| policy.check_resolved(addr.ip()));
                (verdict, RESOLVED_TTL)
            }
            Ok(Err(err)) => {
                tracing::debug!(host = %subscriber.host, error = %err, "callback host does not resolve now");
                (Ok(()), UNRESOLVED_TTL)
            }
            Err(_) => (Ok(()), UNRESOLVED_TTL),
        };
        self.insert(&subscriber.host, verdict.clone(), ttl);
        verdict
    }

    fn get(&self, host: &str) -> Option<Result<(), Refused>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(host)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, host: &str, verdict: Result<(), Refused>, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if entries.len() >= RESOLVED_CACHE {
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= RESOLVED_CACHE {
                entries.clear();
            }
        }
        entries.insert(host.to_owned(), (now + ttl, verdict));
    }
}
