//! The submission-time check of a subscriber host's resolved addresses: cached, one
//! lookup per host at a time, and never a wait on a refresh.
//!
//! A host seen for the first time waits for its lookup (shared by every request that
//! asks meanwhile). Once a verdict is known it is served at once: when it is older than
//! its time to live, the request that notices starts one background refresh and every
//! request keeps the last verdict until the refresh lands. Delivery re-checks every
//! connection's addresses anyway (DNS rebinding), so a verdict a minute old is safe here.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Refused, SubscriberPolicy, SubscriberUrl};

/// How long a subscriber host may take to resolve when it is checked at submission.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a resolved host's verdict is fresh.
const RESOLVED_TTL: Duration = Duration::from_secs(60);
/// How long a host that did not resolve is let through before asking again.
const UNRESOLVED_TTL: Duration = Duration::from_secs(5);
/// Most hosts whose verdict is cached.
const RESOLVED_CACHE: usize = 1024;

type Verdict = Result<(), Refused>;
type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
/// Resolves a host and port to its addresses (the system resolver, or a test's).
pub(super) type Lookup = Arc<dyn Fn(String, u16) -> LookupFuture + Send + Sync>;

fn system_lookup() -> Lookup {
    Arc::new(|host, port| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

/// What is known about one host.
#[derive(Default)]
struct Entry {
    /// The last verdict and until when it is fresh.
    verdict: Option<(Instant, Verdict)>,
    /// A lookup under way: its result arrives here.
    pending: Option<watch::Receiver<Option<Verdict>>>,
}

/// Recent resolution verdicts by host. The lock is held for a lookup or an insert only,
/// never across an await.
pub(super) struct ResolvedCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    lookup: Lookup,
}

impl std::fmt::Debug for ResolvedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedCache").finish_non_exhaustive()
    }
}

impl Default for ResolvedCache {
    fn default() -> Self {
        ResolvedCache::with_lookup(system_lookup())
    }
}

/// What a check must do, decided under the lock.
enum Next {
    Answer(Verdict),
    Wait(watch::Receiver<Option<Verdict>>),
}

impl ResolvedCache {
    pub(super) fn with_lookup(lookup: Lookup) -> Self {
        ResolvedCache {
            entries: Arc::default(),
            lookup,
        }
    }

    /// Refuse a host that resolves to an internal address. A host that doesn't resolve
    /// now is let through: delivery checks again, and a DNS hiccup shouldn't fail a
    /// submission.
    pub(super) async fn check(&self, subscriber: &SubscriberUrl, policy: &SubscriberPolicy) -> Verdict {
        let next = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if entries.len() >= RESOLVED_CACHE && !entries.contains_key(&subscriber.host) {
                // Forget what is stale and idle; if everything is fresh, start over.
                entries.retain(|_, e| {
                    e.pending.is_some() || e.verdict.as_ref().is_some_and(|(until, _)| *until > now)
                });
                if entries.len() >= RESOLVED_CACHE {
                    entries.retain(|_, e| e.pending.is_some());
                }
            }
            let entry = entries.entry(subscriber.host.clone()).or_default();
            match (&entry.verdict, &entry.pending) {
                (Some((until, verdict)), _) if *until > now => Next::Answer(verdict.clone()),
                // Stale: answer with it now; one refresh runs meanwhile.
                (Some((_, verdict)), pending) => {
                    let verdict = verdict.clone();
                    if pending.is_none() {
                        entry.pending = Some(self.start(subscriber, policy));
                    }
                    Next::Answer(verdict)
                }
                (None, Some(pending)) => Next::Wait(pending.clone()),
                (None, None) => {
                    let pending = self.start(subscriber, policy);
                    entry.pending = Some(pending.clone());
                    Next::Wait(pending)
                }
            }
        };
        match next {
            Next::Answer(verdict) => verdict,
            Next::Wait(mut pending) => match pending.wait_for(Option::is_some).await {
                Ok(verdict) => verdict.clone().unwrap_or(Ok(())),
                // The lookup task went away (the runtime is shutting down): let it through,
                // delivery checks again.
                Err(_) => Ok(()),
            },
        }
    }

    /// Start a lookup of `subscriber`'s host in the background; its verdict lands in the
    /// cache and on the returned channel.
    fn start(
        &self,
        subscriber: &SubscriberUrl,
        policy: &SubscriberPolicy,
    ) -> watch::Receiver<Option<Verdict>> {
        let (done, pending) = watch::channel(None);
        let default_port = if subscriber.uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let port = subscriber.uri.port_u16().unwrap_or(default_port);
        let host = subscriber.host.clone();
        let lookup = (self.lookup)(host.clone(), port);
        let policy = policy.clone();
        let entries = Arc::clone(&self.entries);
        tokio::spawn(async move {
            let (verdict, ttl) = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => {
                    let verdict = addrs.into_iter().try_for_each(|ip| policy.check_resolved(ip));
                    (verdict, RESOLVED_TTL)
                }
                Ok(Err(err)) => {
                    tracing::debug!(%host, error = %err, "callback host does not resolve now");
                    (Ok(()), UNRESOLVED_TTL)
                }
                Err(_) => (Ok(()), UNRESOLVED_TTL),
            };
            {
                let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
                let entry = entries.entry(host).or_default();
                entry.verdict = Some((Instant::now() + ttl, verdict.clone()));
                entry.pending = None;
            }
            let _ = done.send(Some(verdict));
        });
        pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A resolver that takes `delay` and counts its lookups.
    fn slow(delay: Duration, answer: IpAddr, calls: Arc<AtomicUsize>) -> Lookup {
        Arc::new(move |_host, _port| {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(vec![answer])
            })
        })
    }

    async fn check_many(cache: &Arc<ResolvedCache>, n: usize) -> (Vec<Verdict>, Duration) {
        let started = Instant::now();
        let policy = SubscriberPolicy::default();
        let url = policy.check("https://hooks.example.com/runway").unwrap();
        let checks: Vec<_> = (0..n)
            .map(|_| {
                let (cache, url, policy) = (Arc::clone(cache), url.clone(), policy.clone());
                tokio::spawn(async move { cache.check(&url, &policy).await })
            })
            .collect();
        let mut verdicts = Vec::new();
        for check in checks {
            verdicts.push(check.await.unwrap());
        }
        (verdicts, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn one_lookup_per_host_and_no_request_waits_on_a_refresh() {
        let calls = Arc::new(AtomicUsize::new(0));
        let public: IpAddr = [93, 184, 216, 34].into();
        let cache = Arc::new(ResolvedCache::with_lookup(slow(
            Duration::from_millis(1500),
            public,
            Arc::clone(&calls),
        )));

        // First sight of the host: 64 requests share one lookup and wait for it.
        let (verdicts, waited) = check_many(&cache, 64).await;
        assert!(verdicts.iter().all(Result::is_ok));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one lookup for 64 requests");
        assert!(waited >= Duration::from_millis(1500), "{waited:?}");

        // The verdict expires: 64 requests get the last verdict at once, one refresh runs.
        tokio::time::sleep(RESOLVED_TTL + Duration::from_secs(1)).await;
        let (verdicts, waited) = check_many(&cache, 64).await;
        assert!(verdicts.iter().all(Result::is_ok));
        assert_eq!(waited, Duration::ZERO, "nobody waited on the refresh");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh");
        let (_, waited) = check_many(&cache, 8).await;
        assert_eq!(waited, Duration::ZERO);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "fresh again");
    }

    #[tokio::test(start_paused = true)]
    async fn an_internal_address_is_refused_and_a_dead_resolver_lets_through() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = Arc::new(ResolvedCache::with_lookup(slow(
            Duration::from_millis(10),
            [10, 0, 0, 7].into(),
            Arc::clone(&calls),
        )));
        let (verdicts, _) = check_many(&cache, 2).await;
        assert!(verdicts.iter().all(Result::is_err), "{verdicts:?}");

        let hanging: Lookup = Arc::new(|_, _| Box::pin(std::future::pending()));
        let cache = Arc::new(ResolvedCache::with_lookup(hanging));
        let (verdicts, waited) = check_many(&cache, 2).await;
        assert!(
            verdicts.iter().all(Result::is_ok),
            "a DNS hiccup never fails a submission"
        );
        assert_eq!(waited, RESOLVE_TIMEOUT);
    }
}
