//! The relay's upkeep beside the delivery workers: the outbox and subscriber gauges kept
//! equal to what the store holds (and whether it answers at all), and webhooks past `delivery.max_age` made dead letters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::RelayMetrics;
use crate::store::Outbox;

/// How often the gauges are refreshed from the store.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// How often webhooks past their age are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Most subscribers the gauges read (the admin API pages through more).
const MOST_SUBSCRIBERS: usize = 10_000;

/// Keep `runway_proxy_outbox_depth` and the subscriber gauges equal to what the store
/// holds, and expire what waited longer than `max_age_ms` (which a reload may change).
/// Asking the store (rather than counting in the receiver and the workers) stays right
/// through superseded statuses, replays, restarts, and other replicas sharing the store.
pub(super) async fn run(
    outbox: Arc<dyn Outbox>,
    metrics: Arc<RelayMetrics>,
    max_age_ms: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut expired_at: Option<Instant> = None;
    loop {
        match outbox.depth().await {
            Ok(depth) => {
                metrics.outbox_up.set(1);
                metrics
                    .outbox_depth
                    .set(i64::try_from(depth.pending + depth.in_flight).unwrap_or(i64::MAX));
            }
            Err(_) => metrics.outbox_up.set(0),
        }
        if let Ok(subscribers) = outbox.subscribers(String::new(), MOST_SUBSCRIBERS).await {
            metrics.publish_subscribers(&subscribers);
        }
        if expired_at.is_none_or(|at| at.elapsed() >= EXPIRE_EVERY) {
            expired_at = Some(Instant::now());
            let max_age = Duration::from_millis(max_age_ms.load(Ordering::Relaxed));
            match outbox.expire(max_age).await {
                Ok(0) => {}
                Ok(expired) => {
                    metrics.expired.add(expired);
                    metrics.dead.add(expired);
                    tracing::warn!(
                        expired,
                        max_age = %crate::duration::format(max_age),
                        "webhooks waited longer than delivery.max_age: now dead letters"
                    );
                }
                Err(err) => tracing::warn!(error = %err, "cannot expire old webhooks"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(GAUGES_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}
