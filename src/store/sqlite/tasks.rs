//! The watch list in the outbox's SQLite database: written by the same thread, with the
//! same group commit, as the webhooks.

use std::time::Duration;

use rusqlite::{Connection, params};

use super::statements::ExecuteCached;
use super::{SqliteOutbox, journal, now_ms};
use crate::store::StoreFuture;
use crate::store::{
    Checked, Finished, JournalEntry, JournalKind, Limit, NewTask, Reservation, Reserved, Seen, Spend,
    StatusClass, TaskCounts, TaskFilter, TaskLimits, TaskReport, TaskStore, UsageRow, WatchState,
    WatchedTask,
};

/// The columns `row_to_task` reads, in its order (a macro, so the statements that read
/// them stay literals).
macro_rules! columns {
    () => {
        "id, task_id, format, route, key_hash, sealed_key, subscriber, state, status, \
         submitted_at, last_callback_at, next_check_at, checks, recovered, key_label, model, \
         points, refunded, finished_at, progress"
    };
}
const COLUMNS: &str = columns!();

/// Tasks due for a check: their time has come and nobody holds them (or the holder's
/// lease ran out). One index range scan in the index's order, read as far as the claim
/// needs, not `LIMIT ?`: a bound LIMIT makes SQLite plan the statement again at every call.
pub(super) const CLAIM_DUE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM tasks WHERE state = 'watching' AND next_check_at <= ?1
        AND (lease_until IS NULL OR lease_until <= ?1)
      ORDER BY next_check_at"
);

/// What a task that just ended reports: read back in the statement that ended it.
const FINISHED: &str = "key_label, model, state, status, COALESCE(points, 0), COALESCE(refunded, 0)";

use crate::duration::millis;

fn row_to_task(row: &rusqlite::Row<'_>) -> rusqlite::Result<WatchedTask> {
    WatchedTask::from_columns(row)
}

fn row_to_finished(row: &rusqlite::Row<'_>) -> rusqlite::Result<Finished> {
    Finished::from_columns(row)
}

/// The condition that counts one key's tasks (`?2` is its label) or every key's.
fn scope(per_key: bool) -> &'static str {
    if per_key {
        "key_label = ?2 AND"
    } else {
        "?2 IS NOT NULL AND"
    }
}

/// Which limit `reservation` would pass, if any; the check and the insert run in one
/// command of the single writer, so no other reservation comes between them.
fn reserve(tx: &Connection, reservation: &Reservation, limits: &TaskLimits) -> rusqlite::Result<Reserved> {
    let now = now_ms();
    let window_start = now - millis(limits.window);
    let unknown_since = now - millis(limits.unknown_for);
    let key = reservation.key.as_str();
    let estimate = reservation
        .points
        .map_or(0, |p| i64::try_from(p).unwrap_or(i64::MAX));
    let budget =
        |limit: Limit, cap: Option<u64>, per_key: bool, points: bool| -> rusqlite::Result<Option<Reserved>> {
            let Some(cap) = cap else { return Ok(None) };
            let what = if points {
                "COALESCE(SUM(COALESCE(points, 0) - COALESCE(refunded, 0)), 0)"
            } else {
                "COUNT(*)"
            };
            let scope = scope(per_key);
            let used: i64 = tx
                .prepare_cached(&format!(
                    "SELECT {what} FROM tasks WHERE {scope} submitted_at > ?1"
                ))?
                .query_row(params![window_start, key], |row| row.get(0))?;
            let cap = i64::try_from(cap).unwrap_or(i64::MAX);
            // A point budget counts this submission's estimate too: it must fit whole.
            let over = used >= cap || (points && estimate > 0 && used.saturating_add(estimate) > cap);
            Ok(over.then_some(Reserved::Refused { limit, used }))
        };
    for (limit, cap, per_key, points) in [
        (Limit::TasksPerKey, limits.tasks_per_key, true, false),
        (Limit::PointsPerKey, limits.points_per_key, true, true),
        (Limit::Tasks, limits.tasks, false, false),
        (Limit::Points, limits.points, false, true),
    ] {
        if let Some(refused) = budget(limit, cap, per_key, points)? {
            return Ok(refused);
        }
    }
    for (limit, cap, per_key) in [
        (Limit::InFlightPerKey, limits.in_flight_per_key, true),
        (Limit::InFlight, limits.in_flight, false),
    ] {
        let Some(cap) = cap else { continue };
        let scope = scope(per_key);
        let used: i64 = tx
            .prepare_cached(&format!(
                "SELECT COUNT(*) FROM tasks WHERE state <> 'done' AND {scope}
                   (state = 'watching' OR submitted_at > ?1)"
            ))?
            .query_row(params![unknown_since, key], |row| row.get(0))?;
        if used >= i64::from(cap) {
            return Ok(Reserved::Refused { limit, used });
        }
    }
    tx.execute_cached(
        "INSERT INTO tasks (task_id, format, route, key_hash, key_label, model, state, submitted_at, next_check_at,
                            updated_at, points)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7, ?7, ?8)",
        params![
            reservation.id,
            reservation.format.as_str(),
            reservation.route,
            reservation.key_hash,
            reservation.key,
            reservation.model,
            now,
            reservation.points.and_then(|p| i64::try_from(p).ok())
        ],
    )?;
    Ok(Reserved::Granted)
}

pub(super) fn claim_due(
    tx: &Connection,
    owner: &str,
    max: usize,
    lease: Duration,
) -> rusqlite::Result<Vec<WatchedTask>> {
    let now = now_ms();
    let mut due = tx.prepare_cached(CLAIM_DUE)?;
    let claimed: Vec<WatchedTask> = due
        .query_map(params![now], row_to_task)?
        .take(max)
        .collect::<rusqlite::Result<_>>()?;
    let mut lease_it = tx.prepare_cached(
        "UPDATE tasks SET lease_owner = ?2, lease_until = ?3, updated_at = ?4 WHERE id = ?1",
    )?;
    for task in &claimed {
        lease_it.execute(params![task.id, owner, now + millis(lease), now])?;
    }
    Ok(claimed)
}

impl TaskStore for SqliteOutbox {
    fn record(&self, task: NewTask, check_after: Duration) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.run(move |tx| {
                let now = now_ms();
                // The token belongs to this task from now on, written on its row (an
                // outcome-unknown submission's binds to the first task id its webhooks
                // name, in `token_bindings`).
                let token = task.callback_token.filter(|_| !task.outcome_unknown);
                let state = if task.outcome_unknown {
                    WatchState::Unknown
                } else {
                    WatchState::Watching
                };
                let next_check = now + millis(check_after);
                if let Some(reservation) = &task.reservation {
                    // The reservation becomes the task: counted once, from its submission.
                    let replaced = tx.execute_cached(
                        "UPDATE OR IGNORE tasks SET task_id = ?2, sealed_key = ?3, subscriber = ?4, state = ?5,
                                next_check_at = ?6, updated_at = ?7, trace = ?8, callback_token = ?9
                         WHERE task_id = ?1 AND state = 'pending'",
                        params![
                            reservation,
                            task.task_id,
                            task.sealed_key,
                            task.subscriber,
                            state.as_str(),
                            next_check,
                            now,
                            task.trace,
                            token
                        ],
                    )?;
                    if replaced > 0 {
                        return Ok(());
                    }
                }
                tx.execute_cached(
                    "INSERT OR IGNORE INTO tasks (task_id, format, route, key_hash, key_label, model, sealed_key,
                                                  subscriber, state, submitted_at, next_check_at, updated_at, trace,
                                                  callback_token)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10, ?12, ?13)",
                    params![
                        task.task_id,
                        task.format.as_str(),
                        task.route,
                        task.key_hash,
                        task.key,
                        task.model,
                        task.sealed_key,
                        task.subscriber,
                        state.as_str(),
                        now,
                        next_check,
                        task.trace,
                        token
                    ],
                )
                .map(drop)
            })
            .await
        })
    }

    fn callback_seen(
        &self,
        task_id: String,
        report: TaskReport,
        check_after: Duration,
    ) -> StoreFuture<'_, Seen> {
        Box::pin(async move {
            self.run(move |tx| {
                let now = now_ms();
                // Points are noted whatever the state: a refund may come after the end.
                let listed = tx.execute_cached(
                    "UPDATE tasks SET points = COALESCE(?2, points), refunded = COALESCE(?3, refunded),
                            progress = COALESCE(?4, progress)
                     WHERE task_id = ?1",
                    params![task_id, report.points, report.refunded, report.progress],
                )? > 0;
                if !listed {
                    return Ok(Seen::NotListed);
                }
                journal::write(
                    tx,
                    &task_id,
                    now,
                    JournalKind::Callback,
                    report.status.as_deref(),
                    report.progress,
                    None,
                )?;
                // A callback for a task already done (a late one after a recovery) changes
                // nothing else.
                let mut seen = tx.prepare_cached(&format!(
                    "UPDATE tasks SET status = COALESCE(?2, status), last_callback_at = ?3, next_check_at = ?4,
                            state = CASE WHEN ?5 THEN 'done' ELSE state END,
                            finished_at = CASE WHEN ?5 THEN ?3 ELSE finished_at END, updated_at = ?3
                     WHERE task_id = ?1 AND state = 'watching'
                     RETURNING {FINISHED}"
                ))?;
                let mut rows = seen.query_map(
                    params![task_id, report.status, now, now + millis(check_after), report.terminal],
                    row_to_finished,
                )?;
                Ok(match rows.next().transpose()? {
                    Some(finished) if report.terminal => Seen::Finished(finished),
                    _ => Seen::Listed,
                })
            })
            .await
        })
    }

    fn claim_due(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<WatchedTask>> {
        Box::pin(async move { self.run(move |tx| claim_due(tx, &owner, max, lease)).await })
    }

    fn checked(&self, task_id: String, owner: String, checked: Checked) -> StoreFuture<'_, Option<Finished>> {
        Box::pin(async move {
            self.run(move |tx| {
                let now = now_ms();
                let mut check = tx.prepare_cached(&format!(
                    "UPDATE tasks SET status = COALESCE(?3, status), checks = checks + 1,
                            state = CASE WHEN ?4 THEN 'done' ELSE state END,
                            finished_at = CASE WHEN ?4 THEN ?7 ELSE finished_at END,
                            recovered = recovered OR ?5, next_check_at = ?6,
                            points = COALESCE(?8, points), refunded = COALESCE(?9, refunded),
                            progress = COALESCE(?10, progress),
                            lease_owner = NULL, lease_until = NULL, updated_at = ?7
                     WHERE task_id = ?1 AND lease_owner = ?2 AND state = 'watching'
                     RETURNING {FINISHED}"
                ))?;
                let mut rows = check.query_map(
                    params![
                        task_id,
                        owner,
                        checked.status,
                        checked.done,
                        checked.recovered,
                        now + millis(checked.again_after),
                        now,
                        checked.points,
                        checked.refunded,
                        checked.progress
                    ],
                    row_to_finished,
                )?;
                let Some(finished) = rows.next().transpose()? else {
                    // Not this owner's to record any more.
                    return Ok(None);
                };
                journal::write(
                    tx,
                    &task_id,
                    now,
                    JournalKind::Check,
                    checked.status.as_deref(),
                    checked.progress,
                    checked.note.as_deref(),
                )?;
                Ok(Some(finished).filter(|_| checked.done))
            })
            .await
        })
    }

    fn cancelled(&self, task_id: String) -> StoreFuture<'_, Option<(WatchedTask, Finished)>> {
        Box::pin(async move {
            self.run(move |tx| {
                let now = now_ms();
                let finished = tx
                    .prepare_cached(&format!(
                        "UPDATE tasks SET status = 'CANCELLED', state = 'done', finished_at = ?2,
                                lease_owner = NULL, lease_until = NULL, updated_at = ?2
                         WHERE task_id = ?1 AND state <> 'done'
                         RETURNING {FINISHED}"
                    ))?
                    .query_map(params![task_id, now], row_to_finished)?
                    .next()
                    .transpose()?;
                let Some(finished) = finished else {
                    return Ok(None);
                };
                journal::write(
                    tx,
                    &task_id,
                    now,
                    JournalKind::Cancelled,
                    Some("CANCELLED"),
                    None,
                    None,
                )?;
                let task = tx
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE task_id = ?1"))?
                    .query_map(params![task_id], row_to_task)?
                    .next()
                    .transpose()?;
                Ok(task.map(|task| (task, finished)))
            })
            .await
        })
    }

    fn count_tasks(&self) -> StoreFuture<'_, TaskCounts> {
        Box::pin(async move {
            self.run(|tx| {
                // One index range count per state, each its own statement: with the state a
                // bound parameter, SQLite re-plans the statement at every new value (the
                // value decides whether the partial index `tasks_open` applies), which
                // costs more than the count.
                let of = |sql: &str| tx.prepare_cached(sql)?.query_row([], |r| r.get::<_, u64>(0));
                Ok(TaskCounts {
                    pending: of("SELECT COUNT(*) FROM tasks WHERE state = 'pending'")?,
                    watching: of("SELECT COUNT(*) FROM tasks WHERE state = 'watching'")?,
                    done: of("SELECT COUNT(*) FROM tasks WHERE state = 'done'")?,
                    unknown: of("SELECT COUNT(*) FROM tasks WHERE state = 'unknown'")?,
                })
            })
            .await
        })
    }

    fn task(&self, task_id: String) -> StoreFuture<'_, Option<WatchedTask>> {
        Box::pin(async move {
            self.run(move |tx| {
                let mut select =
                    tx.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE task_id = ?1"))?;
                let mut rows = select.query_map(params![task_id], row_to_task)?;
                rows.next().transpose()
            })
            .await
        })
    }

    fn journal(&self, task_id: String) -> StoreFuture<'_, Vec<JournalEntry>> {
        Box::pin(async move { self.run(move |tx| journal::read(tx, &task_id)).await })
    }

    fn trace_of(&self, task_id: String) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            self.run(move |tx| {
                let mut select = tx.prepare_cached("SELECT trace FROM tasks WHERE task_id = ?1")?;
                let mut rows = select.query_map(params![task_id], |row| row.get::<_, Option<String>>(0))?;
                Ok(rows.next().transpose()?.flatten())
            })
            .await
        })
    }

    fn list_tasks(&self, filter: TaskFilter, after: i64, limit: usize) -> StoreFuture<'_, Vec<WatchedTask>> {
        Box::pin(async move {
            self.run(move |tx| {
                let mut select = tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM tasks
                     WHERE (?1 IS NULL OR state = ?1) AND (?4 IS NULL OR key_label = ?4 OR key_hash = ?4)
                       AND id > ?2
                     ORDER BY id LIMIT ?3"
                ))?;
                let state = filter.state.map(WatchState::as_str);
                select
                    .query_map(params![state, after, limit as i64, filter.key], row_to_task)?
                    .collect()
            })
            .await
        })
    }

    fn reserve(&self, reservation: Reservation, limits: TaskLimits) -> StoreFuture<'_, Reserved> {
        Box::pin(async move { self.run(move |tx| reserve(tx, &reservation, &limits)).await })
    }

    fn cancel_reservation(&self, reservation: String) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.run(move |tx| {
                tx.execute_cached(
                    "DELETE FROM tasks WHERE task_id = ?1 AND state = 'pending'",
                    params![reservation],
                )
                .map(drop)
            })
            .await
        })
    }

    fn spend(&self, key: Option<String>, since: i64) -> StoreFuture<'_, Vec<Spend>> {
        Box::pin(async move {
            self.run(move |tx| {
                let mut select = tx.prepare_cached(
                    "SELECT submitted_at, COALESCE(points, 0) - COALESCE(refunded, 0) FROM tasks
                     WHERE (?1 IS NULL OR key_label = ?1) AND submitted_at > ?2 ORDER BY submitted_at, id",
                )?;
                select
                    .query_map(params![key, since], |row| {
                        Ok(Spend {
                            submitted_at: row.get(0)?,
                            net_points: row.get(1)?,
                        })
                    })?
                    .collect()
            })
            .await
        })
    }

    fn usage(&self, key: Option<String>, from: i64, to: i64) -> StoreFuture<'_, Vec<UsageRow>> {
        Box::pin(async move {
            self.run(move |tx| {
                let mut select = tx.prepare_cached(
                    "SELECT key_label, model, state, status, COUNT(*), COALESCE(SUM(points), 0),
                            COALESCE(SUM(refunded), 0)
                     FROM tasks WHERE (?1 IS NULL OR key_label = ?1 OR key_hash = ?1)
                       AND submitted_at >= ?2 AND submitted_at < ?3 AND state <> 'pending'
                     GROUP BY key_label, model, state, status",
                )?;
                let rows = select.query_map(params![key, from, to], |row| {
                    let state: String = row.get(2)?;
                    let status: Option<String> = row.get(3)?;
                    Ok(UsageRow {
                        key: row.get(0)?,
                        model: row.get(1)?,
                        status: StatusClass::of(
                            WatchState::parse(&state).unwrap_or(WatchState::Unknown),
                            status.as_deref(),
                        ),
                        tasks: row.get(4)?,
                        points: row.get(5)?,
                        refunded: row.get(6)?,
                    })
                })?;
                rows.collect()
            })
            .await
        })
    }

    fn prune(&self, before: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.run(move |tx| {
                journal::prune(tx, now_ms(), before)?;
                tx.execute_cached(
                    "DELETE FROM tasks WHERE state IN ('done', 'unknown', 'pending') AND submitted_at < ?1",
                    params![before],
                )
                .map(|n| n as u64)
            })
            .await
        })
    }
}
