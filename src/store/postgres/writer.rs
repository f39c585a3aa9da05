//! The group-commit writer: enqueues, completions and releases from every caller, applied
//! in batches of one transaction and one commit each, in an order that cannot deadlock.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc};

use super::{Applied, MAX_BATCH, Write, WriteOp, db_error, now_ms, pool_error};
use crate::store::{Completion, Enqueued, Error, Transition, WatchState};

/// The advisory lock of a task: 64 bits of a hash of its key.
pub(super) fn task_lock(task_key: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, task_key.as_bytes());
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(bytes)
}

/// The group-commit writer: takes the writes waiting, up to `writers` transactions at a
/// time, each answered after its commit.
pub(super) async fn write_batches(pool: Pool, mut queue: mpsc::Receiver<Write>, writers: usize) {
    let permits = Arc::new(Semaphore::new(writers));
    let mut written: u64 = 0;
    let mut next_analyze = FIRST_ANALYZE;
    while let Some(first) = queue.recv().await {
        // Waiting for a free writer is what lets a burst gather into one transaction.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        written += batch.len() as u64;
        if written >= next_analyze {
            next_analyze = next_analyze.saturating_mul(10);
            tokio::spawn(analyze(pool.clone()));
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            commit(&pool, batch).await;
            drop(permit);
        });
    }
}

/// Writes after which the writer first refreshes the planner's statistics, then every
/// tenfold more (1k, 10k, 100k, ...).
const FIRST_ANALYZE: u64 = 1000;

/// Refresh the statistics of the outbox's tables. A new table has none until autovacuum
/// gets to it (up to a minute, longer on a busy server), and the plans each connection
/// caches meanwhile were made for an empty table: the lookup that supersedes a task's
/// older statuses, say, walking every pending row. An `ANALYZE` gives the planner the
/// table as it is and makes every connection plan again. Autovacuum keeps them fresh
/// after that; this covers a replica's first burst.
async fn analyze(pool: Pool) {
    let analyzed = async {
        let client = pool.get().await.map_err(pool_error)?;
        client
            .batch_execute("ANALYZE runway_proxy_deliveries, runway_proxy_idempotency")
            .await
            .map_err(db_error)
    };
    if let Err(err) = analyzed.await {
        tracing::debug!(error = %err, "cannot refresh the outbox's statistics");
    }
}

/// Apply `batch` in one transaction; when it fails, apply each write alone, so one bad
/// write does not fail the others.
async fn commit(pool: &Pool, mut batch: Vec<Write>) {
    batch.sort_by_key(|write| write.op.order());
    let ops: Vec<&WriteOp> = batch.iter().map(|write| &write.op).collect();
    match apply(pool, &ops).await {
        Ok(applied) => {
            for (write, applied) in batch.into_iter().zip(applied) {
                let _ = write.reply.send(Ok(applied));
            }
        }
        Err(err) if batch.len() > 1 => {
            tracing::warn!(error = %err, writes = batch.len(), "outbox batch failed; applying its writes one by one");
            for write in batch {
                let result = apply(pool, &[&write.op])
                    .await
                    .map(|mut applied| applied.pop().unwrap_or(Applied::Done));
                let _ = write.reply.send(result);
            }
        }
        Err(err) => {
            for write in batch {
                let _ = write.reply.send(Err(err.clone()));
            }
        }
    }
}

const ENQUEUE: &str = "SELECT o_id, o_outcome FROM runway_proxy_enqueue($1, $2, $3, $4, $5, $6, $7, $8)";
/// A delivery's subscriber (its record made when new) and trace context, written apart
/// from the enqueue function, whose signature stays as it was.
const SET_SUBSCRIBER: &str = "
    WITH known AS (
        INSERT INTO runway_proxy_subscribers (id, url, created_at) VALUES ($2, $3, runway_proxy_now_ms())
        ON CONFLICT (id) DO NOTHING)
    UPDATE runway_proxy_deliveries SET subscriber = $2, trace = $4 WHERE id = $1";
/// Bind a token to a task id, unless it is bound already.
const BIND: &str = "INSERT INTO runway_proxy_token_bindings (token, task_id, bound_at)
                    VALUES ($1, $2, runway_proxy_now_ms()) ON CONFLICT (token) DO NOTHING";
/// The task id a token is bound to.
const BOUND: &str = "SELECT task_id FROM runway_proxy_token_bindings WHERE token = $1";
/// Hold a delivery just stored for archiving, with its job beside it (`$3`: how long it
/// may be held, by the database's clock).
const HOLD: &str = "
    WITH held AS (
        UPDATE runway_proxy_deliveries SET state = 'archiving' WHERE id = $1 AND state = 'pending'
        RETURNING id, task_key, body, trace)
    INSERT INTO runway_proxy_archive_jobs (delivery_id, task_key, nonce, body, state, deadline_at,
                                           next_attempt_at, created_at, updated_at, trace)
    SELECT id, task_key, $2, body, 'open', runway_proxy_now_ms() + $3, runway_proxy_now_ms(),
           runway_proxy_now_ms(), runway_proxy_now_ms(), trace
    FROM held";
/// An attempt's end, and its verdict on the subscriber, in one statement: the health
/// update's parameters (`$1` to `$10`, see `store::subscribers`), then `$11` the lease
/// owner, `$12` the delivery's new state, `$13` the wait before its next attempt. A failed
/// probe leaves its delivery waiting with its attempts unspent.
static COMPLETE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH done AS (
            UPDATE runway_proxy_deliveries d
            SET state = $12,
                attempts = attempts + CASE WHEN probe.id IS NOT NULL AND $12 = 'pending' THEN 0 ELSE 1 END,
                next_attempt_at = runway_proxy_now_ms()
                    + CASE WHEN probe.id IS NOT NULL AND $12 = 'pending' THEN 0 ELSE CAST($13 AS BIGINT) END,
                last_error = $10, delivered_at = CASE WHEN $12 = 'delivered' THEN runway_proxy_now_ms() END,
                lease_owner = NULL, lease_until = NULL, updated_at = runway_proxy_now_ms()
            FROM (SELECT (SELECT s.probe_id FROM runway_proxy_subscribers s WHERE s.id = $1 AND s.probe_id = $2)
                         AS id) probe
            WHERE d.id = $2 AND d.lease_owner = $11 AND d.state = 'in_flight'
            RETURNING d.id, d.task_key, d.status, probe.id IS NOT NULL AS probe),
         {}
         {}",
        super::journal::DELIVERY_ENTRY,
        super::subscribers::HEALTH.replace("WHERE id = $1", "WHERE id = $1 AND EXISTS (SELECT 1 FROM done)")
    )
});
const RELEASE: &str = "
    UPDATE runway_proxy_deliveries
    SET state = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = runway_proxy_now_ms()
    WHERE id = $1 AND lease_owner = $2 AND state = 'in_flight'";

/// A submission's task in place of its reservation; nothing when the reservation is gone
/// (released, or already replaced) or the task id is recorded already.
const REPLACE_RESERVATION: &str = "
    UPDATE runway_proxy_tasks
    SET task_id = $2, sealed_key = $3, subscriber = $4, state = $5,
        next_check_at = runway_proxy_now_ms() + $6, updated_at = runway_proxy_now_ms(), trace = $7
    WHERE task_id = $1 AND state = 'pending'
      AND NOT EXISTS (SELECT 1 FROM runway_proxy_tasks WHERE task_id = $2)";
/// A submission's task; recording a task id twice keeps the first record.
const RECORD: &str = "
    INSERT INTO runway_proxy_tasks (task_id, format, route, key_hash, key_label, model, sealed_key,
                                    subscriber, state, submitted_at, next_check_at, updated_at, trace)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, runway_proxy_now_ms(), runway_proxy_now_ms() + $10,
            runway_proxy_now_ms(), $11)
    ON CONFLICT (task_id) DO NOTHING";

async fn apply(pool: &Pool, ops: &[&WriteOp]) -> Result<Vec<Applied>, Error> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(db_error)?;
    let enqueue = tx.prepare_cached(ENQUEUE).await.map_err(db_error)?;
    let complete = tx.prepare_cached(&COMPLETE).await.map_err(db_error)?;
    let release = tx.prepare_cached(RELEASE).await.map_err(db_error)?;
    let replace_reservation = tx.prepare_cached(REPLACE_RESERVATION).await.map_err(db_error)?;
    let record = tx.prepare_cached(RECORD).await.map_err(db_error)?;
    // Issued together, the statements are pipelined: the batch costs about one round
    // trip and one commit, not one of each per write.
    let applied = futures_util::future::join_all(ops.iter().map(|op| async {
        match op {
            WriteOp::Enqueue { lock, delivery: d } => {
                if let Some(token) = &d.token {
                    if let Some(task_id) = &d.task_id {
                        tx.execute(BIND, &[token, task_id]).await?;
                    }
                    let bound: Option<String> = tx.query_opt(BOUND, &[token]).await?.map(|row| row.get(0));
                    let allowed = match (bound, &d.task_id) {
                        (Some(bound), Some(task_id)) => &bound == task_id,
                        (Some(_), None) => false,
                        (None, _) => true,
                    };
                    if !allowed {
                        return Ok(Applied::Enqueued(Enqueued::Refused));
                    }
                }
                let row = tx
                    .query_one(
                        &enqueue,
                        &[
                            lock,
                            &d.webhook_id,
                            &d.dedup_key,
                            &d.task_key,
                            &d.status,
                            &d.terminal,
                            &d.target_url,
                            &&d.body[..],
                        ],
                    )
                    .await?;
                let id: i64 = row.try_get(0)?;
                let outcome: &str = row.try_get(1)?;
                if let "stored" | "superseded" = outcome {
                    let subscriber = crate::store::subscriber_id(&d.target_url);
                    tx.execute(SET_SUBSCRIBER, &[&id, &subscriber, &d.target_url, &d.trace])
                        .await?;
                }
                if let (Some(until), "stored") = (d.hold_until, outcome) {
                    let hold_ms = (until - now_ms()).max(0);
                    tx.execute(HOLD, &[&id, &crate::store::archive::nonce(), &hold_ms])
                        .await?;
                }
                Ok(Applied::Enqueued(match outcome {
                    "duplicate" => Enqueued::Duplicate(id),
                    "superseded" => Enqueued::Superseded(id),
                    _ => Enqueued::Stored(id),
                }))
            }
            WriteOp::Complete {
                id,
                owner,
                completion,
                subscriber,
                health,
            } => {
                let spent = crate::store::journal::delivery_detail(completion, true);
                let probe_failed = crate::store::journal::delivery_detail(completion, false);
                let (state, delay, error) = match completion {
                    Completion::Delivered => ("delivered", 0_i64, None),
                    // The worker's clock scheduled it; the database's clock keeps it.
                    Completion::RetryAt { at, error } => ("pending", (at - now_ms()).max(0), Some(error)),
                    Completion::Dead { error } => ("dead", 0, Some(error)),
                };
                let [healthy, failing, gone, asked] = crate::store::subscribers::flags(health.signal);
                let pause_after = i32::try_from(health.breaker.pause_after).unwrap_or(i32::MAX);
                let probe_ms = health.breaker.probe_interval.as_millis() as i64;
                let now = now_ms();
                let row = tx
                    .query_opt(
                        &complete,
                        &[
                            subscriber,
                            id,
                            &healthy,
                            &failing,
                            &gone,
                            &asked,
                            &pause_after,
                            &probe_ms,
                            &now,
                            &error,
                            owner,
                            &state,
                            &delay,
                            &spent,
                            &probe_failed,
                        ],
                    )
                    .await?;
                let transition = match row {
                    Some(row) => Transition::parse(row.try_get::<_, Option<&str>>(0)?),
                    None => Transition::Unchanged,
                };
                if transition == Transition::Resumed {
                    tx.execute(super::subscribers::DRAIN.as_str(), &[subscriber, &now])
                        .await?;
                }
                Ok(Applied::Finished(transition))
            }
            WriteOp::Release { id, owner } => tx.execute(&release, &[id, owner]).await.map(|_| Applied::Done),
            WriteOp::Record { task, check_after } => {
                if let (Some(token), false) = (&task.callback_token, task.outcome_unknown) {
                    tx.execute(BIND, &[token, &task.task_id]).await?;
                }
                let state = if task.outcome_unknown {
                    WatchState::Unknown
                } else {
                    WatchState::Watching
                };
                if let Some(reservation) = &task.reservation {
                    // The reservation becomes the task: counted once, from its submission.
                    let replaced = tx
                        .execute(
                            &replace_reservation,
                            &[
                                reservation,
                                &task.task_id,
                                &task.sealed_key,
                                &task.subscriber,
                                &state.as_str(),
                                check_after,
                                &task.trace,
                            ],
                        )
                        .await?;
                    if replaced > 0 {
                        return Ok(Applied::Done);
                    }
                }
                tx.execute(
                    &record,
                    &[
                        &task.task_id,
                        &task.format.as_str(),
                        &task.route,
                        &task.key_hash,
                        &task.key,
                        &task.model,
                        &task.sealed_key,
                        &task.subscriber,
                        &state.as_str(),
                        check_after,
                        &task.trace,
                    ],
                )
                .await
                .map(|_| Applied::Done)
            }
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(applied)
}
