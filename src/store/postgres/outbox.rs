//! The [`Outbox`] on PostgreSQL: claims with `FOR UPDATE SKIP LOCKED`, one delivery per
//! task in flight, writes through the group-commit writer.

use std::time::Duration;

use tokio_postgres::Row;

use super::writer::task_lock;
use super::{Applied, PostgresOutbox, WriteOp, db_error, now_ms, pool_error};
use crate::store::{
    Completion, Delivery, DeliveryState, Depth, Enqueued, Error, NewDelivery, Outbox, StoreFuture,
};

const COLUMNS: &str = "d.id, d.webhook_id, d.task_key, d.status, d.target_url, d.body, d.state, d.attempts, \
                       d.next_attempt_at, d.last_error, d.created_at, d.delivered_at, d.trace";

fn rows_to_deliveries(rows: Vec<Row>) -> Result<Vec<Delivery>, Error> {
    rows.iter()
        .map(Delivery::from_columns)
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

/// A row may be claimed when no other delivery of its task is in flight, and no older one
/// still waits: one at a time per task, in order. (Both are index range scans of the
/// task's open deliveries.)
const TASK_IS_FREE: &str = "
    AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key AND o.id <> d.id
                    AND o.state = 'in_flight' AND o.lease_until > now.t)
    AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key AND o.id < d.id
                    AND o.state IN ('pending', 'in_flight'))";

/// The claim statement, made once.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(claim_sql);

fn claim_sql() -> String {
    // The time is read once, and compared as `(SELECT t FROM now)`: a value the planner
    // can put into an index condition. (Joined as a table, it is a filter applied after
    // the scan, and the scan of leases walks every lease, live or dead, on each claim.)
    format!(
        "WITH now AS (SELECT runway_proxy_now_ms() AS t),
         expired AS (
             SELECT d.id, d.task_key FROM runway_proxy_deliveries d, now
             WHERE d.state = 'in_flight' AND d.lease_until <= (SELECT t FROM now) {TASK_IS_FREE}
             ORDER BY d.lease_until LIMIT $1 FOR UPDATE OF d SKIP LOCKED),
         due AS (
             SELECT d.id, d.task_key FROM runway_proxy_deliveries d, now
             WHERE d.state = 'pending' AND d.next_attempt_at <= (SELECT t FROM now) {TASK_IS_FREE}
             ORDER BY d.next_attempt_at, d.id LIMIT $1 FOR UPDATE OF d SKIP LOCKED),
         picked AS (
             SELECT DISTINCT ON (c.task_key) c.id
             FROM (SELECT * FROM expired UNION ALL SELECT * FROM due) c
             ORDER BY c.task_key, c.id LIMIT $1)
         UPDATE runway_proxy_deliveries d
         SET state = 'in_flight', lease_owner = $2, lease_until = now.t + $3, updated_at = now.t
         FROM picked, now WHERE d.id = picked.id
         RETURNING {COLUMNS}"
    )
}

impl Outbox for PostgresOutbox {
    fn enqueue(&self, delivery: NewDelivery) -> StoreFuture<'_, Enqueued> {
        Box::pin(async move {
            let lock = task_lock(&delivery.task_key);
            match self.write(WriteOp::Enqueue { lock, delivery }).await? {
                Applied::Enqueued(enqueued) => Ok(enqueued),
                Applied::Done => Err(Error::corrupt("the store gave no id")),
            }
        })
    }

    fn claim(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<Delivery>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let claim = client.prepare_cached(&CLAIM).await.map_err(db_error)?;
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let rows = client
                .query(&claim, &[&(max as i64), &owner, &lease_ms])
                .await
                .map_err(db_error)?;
            let mut claimed = rows_to_deliveries(rows)?;
            claimed.sort_by_key(|d| d.id);
            Ok(claimed)
        }))
    }

    fn complete(&self, id: i64, owner: String, completion: Completion) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.write(WriteOp::Complete {
                id,
                owner,
                completion,
            })
            .await?;
            Ok(())
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

    fn replay(&self, id: i64) -> StoreFuture<'_, bool> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let changed = client
                .execute(
                    "UPDATE runway_proxy_deliveries
                     SET state = 'pending', attempts = 0, next_attempt_at = runway_proxy_now_ms(),
                         last_error = NULL, updated_at = runway_proxy_now_ms()
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

    fn ping(&self) -> StoreFuture<'_, ()> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(db_error)?;
            Ok(())
        }))
    }
}
