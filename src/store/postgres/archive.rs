//! Archive jobs on PostgreSQL: claimed with `FOR UPDATE SKIP LOCKED`, so with several
//! replicas each job is worked by one at a time, and each output is copied once.

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::GenericClient;

use super::{PostgresOutbox, db_error, pool_error};
use crate::store::archive::{ANNOUNCEMENT_SUFFIX, announcement_dedup};
use crate::store::{ArchiveBacklog, ArchiveFinish, ArchiveJob, ArchiveJobs, Error, Released, StoreFuture};

/// The columns [`ArchiveJob::from_columns`] reads, from `runway_proxy_archive_jobs j`
/// joined with its delivery `d`.
const COLUMNS: &str = "j.id, j.delivery_id, j.task_key, j.nonce, j.body, j.state, d.state = 'archiving', \
                       j.attempts, j.deadline_at, j.next_attempt_at, j.last_error, j.result, j.created_at, j.trace";

static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH now AS (SELECT runway_proxy_now_ms() AS t),
         picked AS (
             SELECT j.id FROM runway_proxy_archive_jobs j
             WHERE j.state = 'open' AND j.next_attempt_at <= (SELECT t FROM now)
               AND (j.lease_until IS NULL OR j.lease_until <= (SELECT t FROM now))
             ORDER BY j.next_attempt_at LIMIT $1 FOR UPDATE OF j SKIP LOCKED)
         UPDATE runway_proxy_archive_jobs j
         SET lease_owner = $2, lease_until = now.t + $3, updated_at = now.t
         FROM picked, now, runway_proxy_deliveries d
         WHERE j.id = picked.id AND d.id = j.delivery_id
         RETURNING {COLUMNS}"
    )
});

const RELEASE: &str = "
    UPDATE runway_proxy_deliveries
    SET body = $3, state = 'pending', next_attempt_at = runway_proxy_now_ms(), updated_at = runway_proxy_now_ms()
    WHERE state = 'archiving'
      AND id = (SELECT delivery_id FROM runway_proxy_archive_jobs WHERE id = $1 AND lease_owner = $2 AND state = 'open')";

const END: &str = "
    UPDATE runway_proxy_archive_jobs
    SET state = $2, attempts = attempts + 1, next_attempt_at = runway_proxy_now_ms() + $3, last_error = $4,
        result = $5, lease_owner = NULL, lease_until = NULL, updated_at = runway_proxy_now_ms()
    WHERE id = $1";

const ANNOUNCE: &str = "
    INSERT INTO runway_proxy_deliveries (webhook_id, dedup_key, task_key, status, terminal, target_url, body,
                                         state, next_attempt_at, created_at, updated_at, trace, subscriber)
    SELECT webhook_id || $2, $3, task_key, status, false, target_url, $4, 'pending',
           runway_proxy_now_ms(), runway_proxy_now_ms(), runway_proxy_now_ms(), trace, subscriber
    FROM runway_proxy_deliveries WHERE id = $1
    ON CONFLICT (dedup_key) DO NOTHING";

async fn release<C: GenericClient>(client: &C, job: i64, owner: &str, body: &[u8]) -> Result<bool, Error> {
    let changed = client
        .execute(RELEASE, &[&job, &owner, &body])
        .await
        .map_err(db_error)?;
    Ok(changed > 0)
}

impl ArchiveJobs for PostgresOutbox {
    fn claim_archive(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<ArchiveJob>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let claim = client.prepare_cached(&CLAIM).await.map_err(db_error)?;
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let rows = client
                .query(&claim, &[&(max as i64), &owner, &lease_ms])
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(ArchiveJob::from_columns)
                .collect::<Result<_, _>>()
                .map_err(db_error)
        }))
    }

    fn release_held(&self, job: i64, owner: String, body: Bytes) -> StoreFuture<'_, bool> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            release(&client, job, &owner, &body).await
        }))
    }

    fn finish_archive(&self, job: i64, owner: String, outcome: ArchiveFinish) -> StoreFuture<'_, Released> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            let claimed = tx
                .query_opt(
                    "SELECT j.delivery_id, d.state = 'archiving'
                     FROM runway_proxy_archive_jobs j JOIN runway_proxy_deliveries d ON d.id = j.delivery_id
                     WHERE j.id = $1 AND j.lease_owner = $2 AND j.state = 'open' FOR UPDATE OF j",
                    &[&job, &owner],
                )
                .await
                .map_err(db_error)?;
            // Its lease ran out and another worker has it: that one records the outcome.
            let Some(row) = claimed else {
                return Ok(Released::Nothing);
            };
            let delivery_id: i64 = row.try_get(0).map_err(db_error)?;
            let holding: bool = row.try_get(1).map_err(db_error)?;
            let none: Option<String> = None;
            let released = match &outcome {
                ArchiveFinish::RetryAt { at, error } => {
                    let delay = (at - crate::duration::unix_millis()).max(0);
                    tx.execute(END, &[&job, &"open", &delay, error, &none])
                        .await
                        .map_err(db_error)?;
                    Released::Nothing
                }
                ArchiveFinish::Failed { error, body } => {
                    let released = holding && release(&tx, job, &owner, body).await?;
                    tx.execute(END, &[&job, &"failed", &0_i64, error, &none])
                        .await
                        .map_err(db_error)?;
                    if released {
                        Released::Held
                    } else {
                        Released::Nothing
                    }
                }
                ArchiveFinish::Archived { body, result } => {
                    let released = holding && release(&tx, job, &owner, body).await?;
                    tx.execute(END, &[&job, &"archived", &0_i64, &none, result])
                        .await
                        .map_err(db_error)?;
                    if released {
                        Released::Held
                    } else {
                        tx.execute(
                            ANNOUNCE,
                            &[
                                &delivery_id,
                                &ANNOUNCEMENT_SUFFIX,
                                &announcement_dedup(job),
                                &&body[..],
                            ],
                        )
                        .await
                        .map_err(db_error)?;
                        Released::Announcement
                    }
                }
            };
            tx.commit().await.map_err(db_error)?;
            Ok(released)
        }))
    }

    fn archive_of(&self, task_key: String) -> StoreFuture<'_, Option<ArchiveJob>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM runway_proxy_archive_jobs j
                         JOIN runway_proxy_deliveries d ON d.id = j.delivery_id
                         WHERE j.task_key = $1 ORDER BY j.id DESC LIMIT 1"
                    ),
                    &[&task_key],
                )
                .await
                .map_err(db_error)?;
            row.as_ref()
                .map(ArchiveJob::from_columns)
                .transpose()
                .map_err(db_error)
        }))
    }

    fn release_all_held(&self, reason: String) -> StoreFuture<'_, u64> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            let released = tx
                .execute(
                    "UPDATE runway_proxy_deliveries SET state = 'pending', next_attempt_at = runway_proxy_now_ms(),
                            updated_at = runway_proxy_now_ms()
                     WHERE state = 'archiving'",
                    &[],
                )
                .await
                .map_err(db_error)?;
            tx.execute(
                "UPDATE runway_proxy_archive_jobs SET state = 'failed', last_error = $1, lease_owner = NULL,
                        lease_until = NULL, updated_at = runway_proxy_now_ms()
                 WHERE state = 'open'",
                &[&reason],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok(released)
        }))
    }

    fn archive_backlog(&self) -> StoreFuture<'_, ArchiveBacklog> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM runway_proxy_archive_jobs WHERE state = 'open'),
                            (SELECT COUNT(*) FROM runway_proxy_deliveries WHERE state = 'archiving')",
                    &[],
                )
                .await
                .map_err(db_error)?;
            let get = |i: usize| {
                row.try_get::<_, i64>(i)
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(db_error)
            };
            Ok(ArchiveBacklog {
                open: get(0)?,
                holding: get(1)?,
            })
        }))
    }
}
