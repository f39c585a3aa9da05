//! The watch list in the outbox's SQLite database: written by the same thread, with the
//! same group commit, as the webhooks.

use std::time::Duration;

use rusqlite::{Transaction, params};

use super::sqlite::{SqliteOutbox, now_ms};
use crate::store::{BoxFuture, StoreError};
use crate::tasks::{Checked, NewTask, TaskCounts, TaskFormat, TaskStore, WatchState, WatchedTask};

const COLUMNS: &str = "id, task_id, format, route, key_hash, sealed_key, subscriber, state, status, \
                       submitted_at, last_callback_at, next_check_at, checks, recovered";

use crate::duration::millis;

fn row_to_task(row: &rusqlite::Row<'_>) -> rusqlite::Result<WatchedTask> {
    let format: String = row.get(2)?;
    let state: String = row.get(7)?;
    Ok(WatchedTask {
        id: row.get(0)?,
        task_id: row.get(1)?,
        format: TaskFormat::parse(&format).unwrap_or(TaskFormat::Reverse),
        route: row.get(3)?,
        key_hash: row.get(4)?,
        sealed_key: row.get(5)?,
        subscriber: row.get(6)?,
        state: WatchState::parse(&state).unwrap_or(WatchState::Unknown),
        status: row.get(8)?,
        submitted_at: row.get(9)?,
        last_callback_at: row.get(10)?,
        next_check_at: row.get(11)?,
        checks: row.get(12)?,
        recovered: row.get(13)?,
    })
}

fn claim_due(
    tx: &Transaction<'_>,
    owner: &str,
    max: usize,
    lease: Duration,
) -> rusqlite::Result<Vec<WatchedTask>> {
    let now = now_ms();
    // A task is due when its time has come and nobody holds it (or its holder's lease
    // ran out): one index range scan.
    let mut due = tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE state = 'watching' AND next_check_at <= ?1
           AND (lease_until IS NULL OR lease_until <= ?1)
         ORDER BY next_check_at LIMIT ?2"
    ))?;
    let claimed: Vec<WatchedTask> = due
        .query_map(params![now, max as i64], row_to_task)?
        .collect::<rusqlite::Result<_>>()?;
    let mut lease_it = tx.prepare_cached(
        "UPDATE tasks SET lease_owner = ?2, lease_until = ?3, updated_at = ?4 WHERE id = ?1",
    )?;
    for task in &claimed {
        lease_it.execute(params![task.id, owner, now + millis(lease), now])?;
    }
    Ok(claimed)
}

fn store_error(err: super::OutboxError) -> StoreError {
    StoreError(err.0)
}

impl TaskStore for SqliteOutbox {
    fn record(&self, task: NewTask, check_after: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.run(move |tx| {
                let now = now_ms();
                let state = if task.outcome_unknown {
                    WatchState::Unknown
                } else {
                    WatchState::Watching
                };
                tx.execute(
                    "INSERT OR IGNORE INTO tasks (task_id, format, route, key_hash, sealed_key, subscriber, state,
                                                  submitted_at, next_check_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?8)",
                    params![
                        task.task_id,
                        task.format.as_str(),
                        task.route,
                        task.key_hash,
                        task.sealed_key,
                        task.subscriber,
                        state.as_str(),
                        now,
                        now + millis(check_after)
                    ],
                )
                .map(drop)
            })
            .await
            .map_err(store_error)
        })
    }

    fn callback_seen(
        &self,
        task_id: String,
        status: Option<String>,
        terminal: bool,
        check_after: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            self.run(move |tx| {
                let now = now_ms();
                // A callback for a task already done (a late one after a recovery) changes
                // nothing.
                let changed = tx.execute(
                    "UPDATE tasks SET status = COALESCE(?2, status), last_callback_at = ?3, next_check_at = ?4,
                            state = CASE WHEN ?5 THEN 'done' ELSE state END, updated_at = ?3
                     WHERE task_id = ?1 AND state = 'watching'",
                    params![task_id, status, now, now + millis(check_after), terminal],
                )?;
                if changed > 0 {
                    return Ok(true);
                }
                tx.query_row("SELECT 1 FROM tasks WHERE task_id = ?1", params![task_id], |_| Ok(()))
                    .map(|()| true)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(false),
                        e => Err(e),
                    })
            })
            .await
            .map_err(store_error)
        })
    }

    fn claim_due(
        &self,
        owner: String,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<WatchedTask>, StoreError>> {
        Box::pin(async move {
            self.run(move |tx| claim_due(tx, &owner, max, lease))
                .await
                .map_err(store_error)
        })
    }

    fn checked(
        &self,
        task_id: String,
        owner: String,
        checked: Checked,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.run(move |tx| {
                let now = now_ms();
                tx.execute(
                    "UPDATE tasks SET status = COALESCE(?3, status), checks = checks + 1,
                            state = CASE WHEN ?4 THEN 'done' ELSE state END,
                            recovered = recovered OR ?5, next_check_at = ?6,
                            lease_owner = NULL, lease_until = NULL, updated_at = ?7
                     WHERE task_id = ?1 AND lease_owner = ?2 AND state = 'watching'",
                    params![
                        task_id,
                        owner,
                        checked.status,
                        checked.done,
                        checked.recovered,
                        now + millis(checked.again_after),
                        now
                    ],
                )
                .map(drop)
            })
            .await
            .map_err(store_error)
        })
    }

    fn count_tasks(&self) -> BoxFuture<'_, Result<TaskCounts, StoreError>> {
        Box::pin(async move {
            self.run(|tx| {
                // One index range count per state.
                let mut count = tx.prepare_cached("SELECT COUNT(*) FROM tasks WHERE state = ?1")?;
                let mut of =
                    |state: WatchState| count.query_row(params![state.as_str()], |r| r.get::<_, u64>(0));
                Ok(TaskCounts {
                    watching: of(WatchState::Watching)?,
                    done: of(WatchState::Done)?,
                    unknown: of(WatchState::Unknown)?,
                })
            })
            .await
            .map_err(store_error)
        })
    }

    fn task(&self, task_id: String) -> BoxFuture<'_, Result<Option<WatchedTask>, StoreError>> {
        Box::pin(async move {
            self.run(move |tx| {
                let mut select =
                    tx.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE task_id = ?1"))?;
                let mut rows = select.query_map(params![task_id], row_to_task)?;
                rows.next().transpose()
            })
            .await
            .map_err(store_error)
        })
    }

    fn list_tasks(
        &self,
        state: Option<WatchState>,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<WatchedTask>, StoreError>> {
        Box::pin(async move {
            self.run(move |tx| {
                let mut select = tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM tasks WHERE (?1 IS NULL OR state = ?1) AND id > ?2 ORDER BY id LIMIT ?3"
                ))?;
                select
                    .query_map(params![state.map(WatchState::as_str), after, limit as i64], row_to_task)?
                    .collect()
            })
            .await
            .map_err(store_error)
        })
    }
}
