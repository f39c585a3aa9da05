//! Archive jobs in the outbox's SQLite database: written by the same thread, in the same
//! transactions, as the deliveries they hold back.

use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::statements::ExecuteCached;
use super::{SqliteOutbox, now_ms};
use crate::store::archive::{ANNOUNCEMENT_SUFFIX, announcement_dedup, nonce};
use crate::store::{
    ArchiveBacklog, ArchiveFinish, ArchiveJob, ArchiveJobs, NewDelivery, Released, StoreFuture,
};

/// The columns [`ArchiveJob::from_columns`] reads, in its order, from `archive_jobs j`
/// joined with its delivery `d` (a macro, so the statements that read them stay literals).
macro_rules! columns {
    () => {
        "j.id, j.delivery_id, j.task_key, j.nonce, j.body, j.state, d.state = 'archiving', j.attempts, \
         j.deadline_at, j.next_attempt_at, j.last_error, j.result, j.created_at, j.trace"
    };
}

/// Open jobs whose time has come and that nobody holds (or whose holder's lease ran out),
/// read as far as the claim needs.
const CLAIM_DUE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM archive_jobs j JOIN deliveries d ON d.id = j.delivery_id
      WHERE j.state = 'open' AND j.next_attempt_at <= ?1 AND (j.lease_until IS NULL OR j.lease_until <= ?1)
      ORDER BY j.next_attempt_at"
);

const LATEST_OF_TASK: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM archive_jobs j JOIN deliveries d ON d.id = j.delivery_id
      WHERE j.task_key = ?1 ORDER BY j.id DESC LIMIT 1"
);

/// The job beside a delivery just stored as `archiving`.
pub(super) fn add_job(
    tx: &Connection,
    delivery_id: i64,
    delivery: &NewDelivery,
    deadline_at: i64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute_cached(
        "INSERT INTO archive_jobs (delivery_id, task_key, nonce, body, state, deadline_at, next_attempt_at,
                                   created_at, updated_at, trace)
         VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?6, ?6, ?6, ?7)",
        params![
            delivery_id,
            delivery.task_key,
            nonce(),
            &delivery.body[..],
            deadline_at,
            now,
            delivery.trace
        ],
    )
    .map(drop)
}

/// Make every job a previous run held due now (the file is this process's alone, so a
/// lease still running is a killed run's).
pub(super) fn resume(connection: &Connection) -> rusqlite::Result<usize> {
    connection.execute(
        "UPDATE archive_jobs SET lease_owner = NULL, lease_until = NULL
         WHERE state = 'open' AND lease_owner IS NOT NULL",
        [],
    )
}

fn claim(tx: &Connection, owner: &str, max: usize, lease: Duration) -> rusqlite::Result<Vec<ArchiveJob>> {
    let now = now_ms();
    let jobs: Vec<ArchiveJob> = tx
        .prepare_cached(CLAIM_DUE)?
        .query_map(params![now], |row| ArchiveJob::from_columns(row))?
        .take(max)
        .collect::<rusqlite::Result<_>>()?;
    let lease_until = now + lease.as_millis() as i64;
    let mut update = tx.prepare_cached(
        "UPDATE archive_jobs SET lease_owner = ?2, lease_until = ?3, updated_at = ?4 WHERE id = ?1",
    )?;
    for job in &jobs {
        update.execute(params![job.id, owner, lease_until, now])?;
    }
    Ok(jobs)
}

/// The held delivery of `job` (leased by `owner`) goes out now with `body`.
fn release(tx: &Connection, job: i64, owner: &str, body: &[u8], now: i64) -> rusqlite::Result<bool> {
    let changed = tx.execute_cached(
        "UPDATE deliveries SET body = ?3, state = 'pending', next_attempt_at = ?4, updated_at = ?4
         WHERE state = 'archiving'
           AND id = (SELECT delivery_id FROM archive_jobs WHERE id = ?1 AND lease_owner = ?2 AND state = 'open')",
        params![job, owner, body, now],
    )?;
    Ok(changed > 0)
}

fn finish(tx: &Connection, job: i64, owner: &str, finish: &ArchiveFinish) -> rusqlite::Result<Released> {
    let now = now_ms();
    let claimed = tx
        .prepare_cached(
            "SELECT j.delivery_id, d.state = 'archiving' FROM archive_jobs j JOIN deliveries d ON d.id = j.delivery_id
             WHERE j.id = ?1 AND j.lease_owner = ?2 AND j.state = 'open'",
        )?
        .query_row(params![job, owner], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, bool>(1)?)))
        .optional()?;
    // Its lease ran out and another worker has it: that one records the outcome.
    let Some((delivery_id, holding)) = claimed else {
        return Ok(Released::Nothing);
    };
    let mut end = tx.prepare_cached(
        "UPDATE archive_jobs SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4,
                result = ?5, lease_owner = NULL, lease_until = NULL, updated_at = ?6
         WHERE id = ?1",
    )?;
    match finish {
        ArchiveFinish::RetryAt { at, error } => {
            end.execute(params![job, "open", at, error, None::<String>, now])?;
            Ok(Released::Nothing)
        }
        ArchiveFinish::Failed { error, body } => {
            // The release reads the lease, so it goes before the job lets it go.
            let released = holding && release(tx, job, owner, body, now)?;
            end.execute(params![job, "failed", now, error, None::<String>, now])?;
            Ok(if released {
                Released::Held
            } else {
                Released::Nothing
            })
        }
        ArchiveFinish::Archived { body, result } => {
            // The release reads the lease, so it goes before the job lets it go.
            let released = holding && release(tx, job, owner, body, now)?;
            end.execute(params![job, "archived", now, None::<String>, result, now])?;
            if released {
                return Ok(Released::Held);
            }
            // The webhook went out at the deadline without the copies: one more for the
            // task, after it in the task's order, says where they are.
            tx.execute_cached(
                "INSERT OR IGNORE INTO deliveries (webhook_id, dedup_key, task_key, status, terminal, target_url,
                                                   body, state, next_attempt_at, created_at, updated_at, trace,
                                                   subscriber)
                 SELECT webhook_id || ?2, ?3, task_key, status, 0, target_url, ?4, 'pending', ?5, ?5, ?5, trace,
                        subscriber
                 FROM deliveries WHERE id = ?1",
                params![delivery_id, ANNOUNCEMENT_SUFFIX, announcement_dedup(job), &body[..], now],
            )?;
            Ok(Released::Announcement)
        }
    }
}

impl ArchiveJobs for SqliteOutbox {
    fn claim_archive(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<ArchiveJob>> {
        Box::pin(self.run(move |tx| claim(tx, &owner, max, lease)))
    }

    fn release_held(&self, job: i64, owner: String, body: Bytes) -> StoreFuture<'_, bool> {
        Box::pin(self.run(move |tx| release(tx, job, &owner, &body, now_ms())))
    }

    fn finish_archive(&self, job: i64, owner: String, outcome: ArchiveFinish) -> StoreFuture<'_, Released> {
        Box::pin(self.run(move |tx| finish(tx, job, &owner, &outcome)))
    }

    fn archive_of(&self, task_key: String) -> StoreFuture<'_, Option<ArchiveJob>> {
        Box::pin(self.run(move |tx| {
            tx.prepare_cached(LATEST_OF_TASK)?
                .query_row(params![task_key], |row| ArchiveJob::from_columns(row))
                .optional()
        }))
    }

    fn release_all_held(&self, reason: String) -> StoreFuture<'_, u64> {
        Box::pin(self.run(move |tx| {
            let now = now_ms();
            let released = tx.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?1, updated_at = ?1 WHERE state = 'archiving'",
                params![now],
            )?;
            tx.execute(
                "UPDATE archive_jobs SET state = 'failed', last_error = ?2, lease_owner = NULL, lease_until = NULL,
                        updated_at = ?1
                 WHERE state = 'open'",
                params![now, reason],
            )?;
            Ok(released as u64)
        }))
    }

    fn archive_backlog(&self) -> StoreFuture<'_, ArchiveBacklog> {
        Box::pin(self.run(|tx| {
            let of = |sql: &str| tx.prepare_cached(sql)?.query_row([], |r| r.get::<_, u64>(0));
            Ok(ArchiveBacklog {
                open: of("SELECT COUNT(*) FROM archive_jobs WHERE state = 'open'")?,
                holding: of("SELECT COUNT(*) FROM deliveries WHERE state = 'archiving'")?,
            })
        }))
    }
}
