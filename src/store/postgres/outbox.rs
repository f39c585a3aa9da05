//! The [`Outbox`] on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, one delivery per
//! task in flight, writes through the group-commit writer.

use std::time::Duration;

use tokio_postgres::Row;

use super::writer::task_lock;
use super::{Applied, PostgresOutbox, WriteOp, db_error, now_ms, pool_error};
use crate::store::{
    Completion, Delivery, DeliveryState, Depth, Enqueued, Error, Fairness, Health, NewDelivery, Outbox,
    ReplayFilter, StoreFuture, SubscriberReport, Transition,
};

const COLUMNS: &str = "d.id, d.webhook_id, d.task_key, d.status, d.target_url, d.body, d.state, d.attempts, \
                       d.next_attempt_at, d.last_error, d.created_at, d.delivered_at, d.trace, d.subscriber";

fn rows_to_deliveries(rows: Vec<Row>) -> Result<Vec<Delivery>, Error> {
    rows.iter()
        .map(Delivery::from_columns)
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

/// The claim: `runway_proxy_claim` (migration 8) picks and leases the rows.
const CLAIM: &str = "SELECT o_id, o_probe FROM runway_proxy_claim($1, $2, $3, $4, $5, $6)";

/// The claimed rows, read by a statement of their own: one that joined the function's
/// result would read the table with the snapshot taken before the function ran, and miss
/// a delivery committed in between that the function saw and claimed.
static CLAIMED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {COLUMNS} FROM runway_proxy_deliveries d WHERE d.id = ANY($1)")
});

impl Outbox for PostgresOutbox {
    fn enqueue(&self, delivery: NewDelivery) -> StoreFuture<'_, Enqueued> {
        Box::pin(async move {
            let lock = task_lock(&delivery.task_key);
            match self.write(WriteOp::Enqueue { lock, delivery }).await? {
                Applied::Enqueued(enqueued) => Ok(enqueued),
                Applied::Done | Applied::Finished(_) => Err(Error::corrupt("the store gave no id")),
            }
        })
    }

    fn claim_within(
        &self,
        owner: String,
        max: usize,
        lease: Duration,
        fairness: Fairness,
    ) -> StoreFuture<'_, Vec<Delivery>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let claim = client.prepare_cached(CLAIM).await.map_err(db_error)?;
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let max = i32::try_from(max).unwrap_or(i32::MAX);
            let cap = i64::from(fairness.max_in_flight);
            let (interval, burst) = fairness
                .rate
                .map_or((0, 0), |rate| (rate.interval_ms(), i64::from(rate.burst)));
            let picked = client
                .query(&claim, &[&owner, &max, &lease_ms, &cap, &interval, &burst])
                .await
                .map_err(db_error)?;
            if picked.is_empty() {
                return Ok(Vec::new());
            }
            let mut ids = Vec::with_capacity(picked.len());
            let mut probes = std::collections::HashSet::new();
            for row in &picked {
                let id: i64 = row.try_get(0).map_err(db_error)?;
                if row.try_get::<_, bool>(1).map_err(db_error)? {
                    probes.insert(id);
                }
                ids.push(id);
            }
            let read = client.prepare_cached(&CLAIMED).await.map_err(db_error)?;
            let rows = client.query(&read, &[&ids]).await.map_err(db_error)?;
            let mut claimed = rows_to_deliveries(rows)?;
            for delivery in &mut claimed {
                delivery.probe = probes.contains(&delivery.id);
            }
            claimed.sort_by_key(|d| d.id);
            Ok(claimed)
        }))
    }

    fn finish_attempt(
        &self,
        id: i64,
        owner: String,
        subscriber: Option<String>,
        completion: Completion,
        health: Health,
    ) -> StoreFuture<'_, Transition> {
        Box::pin(async move {
            let subscriber = match subscriber {
                Some(subscriber) => subscriber,
                None => match self.subscriber_of(id).await? {
                    Some(subscriber) => subscriber,
                    None => return Ok(Transition::Unchanged),
                },
            };
            match self
                .write(WriteOp::Complete {
                    id,
                    owner,
                    completion,
                    subscriber,
                    health,
                })
                .await?
            {
                Applied::Finished(transition) => Ok(transition),
                _ => Ok(Transition::Unchanged),
            }
        })
    }

    fn release(&self, id: i64, owner: String) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.write(WriteOp::Release { id, owner }).await?;
            Ok(())
        })
    }

    fn list(&self, state: DeliveryState, after: i64, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let list = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM runway_proxy_deliveries d WHERE d.state = $1 AND d.id > $2
                     ORDER BY d.id LIMIT $3"
                ))
                .await
                .map_err(db_error)?;
            let rows = client
                .query(&list, &[&state.as_str(), &after, &(limit as i64)])
                .await
                .map_err(db_error)?;
            rows_to_deliveries(rows)
        }))
    }

    fn deliveries_of_task(&self, task_key: String, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let select = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM runway_proxy_deliveries d WHERE d.task_key = $1 ORDER BY d.id LIMIT $2"
                ))
                .await
                .map_err(db_error)?;
            let rows = client
                .query(&select, &[&task_key, &(limit as i64)])
                .await
                .map_err(db_error)?;
            rows_to_deliveries(rows)
        }))
    }

    fn replay(&self, id: i64) -> StoreFuture<'_, bool> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let changed = client
                .execute(
                    "UPDATE runway_proxy_deliveries
                     SET state = 'pending', attempts = 0, next_attempt_at = runway_proxy_now_ms(),
                         last_error = NULL, updated_at = runway_proxy_now_ms(), queued_at = runway_proxy_now_ms()
                     WHERE id = $1 AND state NOT IN ('in_flight', 'archiving')",
                    &[&id],
                )
                .await
                .map_err(db_error)?;
            Ok(changed > 0)
        }))
    }

    fn next_due(&self) -> StoreFuture<'_, Option<i64>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let next = client
                .prepare_cached(
                    "SELECT LEAST(
                         (SELECT MIN(next_attempt_at) FROM runway_proxy_deliveries WHERE state = 'pending'),
                         (SELECT MIN(lease_until) FROM runway_proxy_deliveries WHERE state = 'in_flight')
                     ) - runway_proxy_now_ms()",
                )
                .await
                .map_err(db_error)?;
            let row = client.query_one(&next, &[]).await.map_err(db_error)?;
            // How long from now, by the database's clock, as a time on this one's.
            let wait: Option<i64> = row.try_get(0).map_err(db_error)?;
            Ok(wait.map(|wait| now_ms() + wait))
        }))
    }

    fn depth(&self) -> StoreFuture<'_, Depth> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let count = client
                .prepare_cached(
                    "SELECT COUNT(*) FILTER (WHERE state = 'pending'),
                            COUNT(*) FILTER (WHERE state = 'in_flight'),
                            COUNT(*) FILTER (WHERE state = 'dead')
                     FROM runway_proxy_deliveries WHERE state IN ('pending', 'in_flight', 'dead')",
                )
                .await
                .map_err(db_error)?;
            let row = client.query_one(&count, &[]).await.map_err(db_error)?;
            let get = |i: usize| {
                row.try_get::<_, i64>(i)
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(db_error)
            };
            Ok(Depth {
                pending: get(0)?,
                in_flight: get(1)?,
                dead: get(2)?,
            })
        }))
    }

    fn subscribers(&self, after: String, limit: usize) -> StoreFuture<'_, Vec<SubscriberReport>> {
        self.list_subscribers(after, limit)
    }

    fn pause_subscriber(&self, id: String) -> StoreFuture<'_, bool> {
        self.set_paused(id, true)
    }

    fn resume_subscriber(&self, id: String) -> StoreFuture<'_, bool> {
        self.set_paused(id, false)
    }

    fn replay_dead(&self, filter: ReplayFilter) -> StoreFuture<'_, u64> {
        self.replay_all_dead(filter)
    }

    fn expire(&self, max_age: Duration) -> StoreFuture<'_, u64> {
        self.expire_old(max_age)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(db_error)?;
            Ok(())
        }))
    }
}
