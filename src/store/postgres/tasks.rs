//! The watch list in the outbox's PostgreSQL database: one list for every replica, each
//! task claimed by one watcher at a time (`FOR UPDATE SKIP LOCKED`, a lease on the
//! database's clock).

use std::time::Duration;

use tokio_postgres::Row;

use super::{PostgresOutbox, WriteOp, db_error, pool_error};
use crate::store::{
    Checked, Finished, JournalEntry, Limit, NewTask, Reservation, Reserved, Seen, Spend, StatusClass,
    TaskCounts, TaskFilter, TaskLimits, TaskReport, TaskStore, UsageRow, WatchState, WatchedTask,
};
use crate::store::{Error, StoreFuture};

/// The columns `row_to_task` reads, in its order (a macro, so statements stay literals).
macro_rules! columns {
    () => {
        "t.id, t.task_id, t.format, t.route, t.key_hash, t.sealed_key, t.subscriber, t.state, \
         t.status, t.submitted_at, t.last_callback_at, t.next_check_at, t.checks, t.recovered, t.key_label, \
         t.model, t.points, t.refunded, t.finished_at, t.progress"
    };
}

/// What a task that just ended reports, read back by the statement that ended it.
macro_rules! finished {
    () => {
        "t.key_label, t.model, t.state, t.status, COALESCE(t.points, 0), COALESCE(t.refunded, 0)"
    };
}

fn first_finished(rows: &[Row]) -> Result<Option<Finished>, Error> {
    rows.first()
        .map(Finished::from_columns)
        .transpose()
        .map_err(db_error)
}

fn limit_param(limit: Option<u64>) -> Option<i64> {
    limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

use crate::duration::millis;

fn rows_to_tasks(rows: Vec<Row>) -> Result<Vec<WatchedTask>, Error> {
    rows.iter()
        .map(WatchedTask::from_columns)
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

impl PostgresOutbox {
    /// Run one statement with `params` on the outbox's runtime; the rows it returns.
    pub(super) async fn task_statement(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
    ) -> Result<Vec<Row>, Error> {
        let pool = self.pool();
        self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let statement = client.prepare_cached(sql).await.map_err(db_error)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            client.query(&statement, &refs).await.map_err(db_error)
        })
        .await
    }
}

impl TaskStore for PostgresOutbox {
    fn record(&self, task: NewTask, check_after: Duration) -> StoreFuture<'_, ()> {
        // Group-committed with the outbox's writes: a burst of submissions pays one
        // commit, and each is answered once its batch is durable.
        Box::pin(async move {
            self.write(WriteOp::Record {
                task,
                check_after: millis(check_after),
            })
            .await
            .map(drop)
        })
    }

    fn callback_seen(
        &self,
        task_id: String,
        report: TaskReport,
        check_after: Duration,
    ) -> StoreFuture<'_, Seen> {
        Box::pin(async move {
            // Points are noted whatever the state (a refund may come after the end); the
            // watch moves on only while the task is watched. One statement, which also
            // says whether the task is listed at all.
            let rows = self
                .task_statement(
                    concat!(
                        "WITH points AS (
                         UPDATE runway_proxy_tasks
                         SET points = COALESCE($5, points), refunded = COALESCE($6, refunded),
                             progress = COALESCE($7, progress)
                         WHERE task_id = $1 AND state <> 'watching'
                         RETURNING 1),
                     seen AS (
                         UPDATE runway_proxy_tasks t
                         SET status = COALESCE($2, status), last_callback_at = runway_proxy_now_ms(),
                             next_check_at = runway_proxy_now_ms() + $3,
                             state = CASE WHEN $4 THEN 'done' ELSE state END,
                             finished_at = CASE WHEN $4 THEN runway_proxy_now_ms() ELSE finished_at END,
                             points = COALESCE($5, points), refunded = COALESCE($6, refunded),
                             progress = COALESCE($7, progress), updated_at = runway_proxy_now_ms()
                         WHERE task_id = $1 AND state = 'watching'
                         RETURNING ",
                        finished!(),
                        ")
                     SELECT r.*, runway_proxy_journal($1, 'callback', $2, $7, NULL)
                     FROM (SELECT true, s.* FROM seen s
                           UNION ALL SELECT false, NULL, NULL, NULL, NULL, NULL, NULL FROM points) r"
                    ),
                    vec![
                        Box::new(task_id),
                        Box::new(report.status),
                        Box::new(millis(check_after)),
                        Box::new(report.terminal),
                        Box::new(report.points),
                        Box::new(report.refunded),
                        Box::new(report.progress.map(i64::from)),
                    ],
                )
                .await?;
            let Some(row) = rows.first() else {
                return Ok(Seen::NotListed);
            };
            let watched: bool = row.try_get(0).map_err(db_error)?;
            if !(watched && report.terminal) {
                return Ok(Seen::Listed);
            }
            let finished = Finished {
                key: row.try_get(1).map_err(db_error)?,
                model: row.try_get(2).map_err(db_error)?,
                status: {
                    let state: Option<&str> = row.try_get(3).map_err(db_error)?;
                    let status: Option<&str> = row.try_get(4).map_err(db_error)?;
                    StatusClass::of(
                        state.and_then(WatchState::parse).unwrap_or(WatchState::Done),
                        status,
                    )
                },
                points: row.try_get(5).map_err(db_error)?,
                refunded: row.try_get(6).map_err(db_error)?,
            };
            Ok(Seen::Finished(finished))
        })
    }

    fn claim_due(&self, owner: String, max: usize, lease: Duration) -> StoreFuture<'_, Vec<WatchedTask>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    concat!(
                        "WITH now AS (SELECT runway_proxy_now_ms() AS t),
                     due AS (
                         SELECT t.id FROM runway_proxy_tasks t
                         WHERE t.state = 'watching' AND t.next_check_at <= (SELECT t FROM now)
                           AND (t.lease_until IS NULL OR t.lease_until <= (SELECT t FROM now))
                         ORDER BY t.next_check_at LIMIT $1 FOR UPDATE OF t SKIP LOCKED)
                     UPDATE runway_proxy_tasks t
                     SET lease_owner = $2, lease_until = now.t + $3, updated_at = now.t
                     FROM due, now WHERE t.id = due.id
                     RETURNING ",
                        columns!()
                    ),
                    vec![Box::new(max as i64), Box::new(owner), Box::new(millis(lease))],
                )
                .await?;
            let mut tasks = rows_to_tasks(rows)?;
            tasks.sort_by_key(|t| t.next_check_at);
            Ok(tasks)
        })
    }

    fn checked(&self, task_id: String, owner: String, checked: Checked) -> StoreFuture<'_, Option<Finished>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    concat!(
                        "WITH c AS (
                 UPDATE runway_proxy_tasks t
                 SET status = COALESCE($3, status), checks = checks + 1,
                     state = CASE WHEN $4 THEN 'done' ELSE state END, recovered = recovered OR $5,
                     finished_at = CASE WHEN $4 THEN runway_proxy_now_ms() ELSE finished_at END,
                     points = COALESCE($7, points), refunded = COALESCE($8, refunded),
                     progress = COALESCE($9, progress),
                     next_check_at = runway_proxy_now_ms() + $6, lease_owner = NULL, lease_until = NULL,
                     updated_at = runway_proxy_now_ms()
                 WHERE task_id = $1 AND lease_owner = $2 AND state = 'watching'
                 RETURNING ",
                        finished!(),
                        ") SELECT c.*, runway_proxy_journal($1, 'check', $3, $9, $10) FROM c"
                    ),
                    vec![
                        Box::new(task_id),
                        Box::new(owner),
                        Box::new(checked.status),
                        Box::new(checked.done),
                        Box::new(checked.recovered),
                        Box::new(millis(checked.again_after)),
                        Box::new(checked.points),
                        Box::new(checked.refunded),
                        Box::new(checked.progress.map(i64::from)),
                        Box::new(checked.note),
                    ],
                )
                .await?;
            Ok(first_finished(&rows)?.filter(|_| checked.done))
        })
    }

    fn cancelled(&self, task_id: String) -> StoreFuture<'_, Option<(WatchedTask, Finished)>> {
        Box::pin(async move {
            // Both column lists from the one updated row: the finished part first.
            let rows = self
                .task_statement(
                    concat!(
                        "WITH c AS (
                 UPDATE runway_proxy_tasks t
                 SET status = 'CANCELLED', state = 'done', finished_at = runway_proxy_now_ms(),
                     lease_owner = NULL, lease_until = NULL, updated_at = runway_proxy_now_ms()
                 WHERE task_id = $1 AND state <> 'done'
                 RETURNING ",
                        finished!(),
                        ") SELECT c.*, runway_proxy_journal($1, 'cancelled', 'CANCELLED', NULL, NULL) FROM c"
                    ),
                    vec![Box::new(task_id.clone())],
                )
                .await?;
            let Some(finished) = first_finished(&rows)? else {
                return Ok(None);
            };
            Ok(self.task(task_id).await?.map(|task| (task, finished)))
        })
    }

    fn count_tasks(&self) -> StoreFuture<'_, TaskCounts> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    "SELECT COUNT(*) FILTER (WHERE state = 'watching'), COUNT(*) FILTER (WHERE state = 'done'),
                            COUNT(*) FILTER (WHERE state = 'unknown'), COUNT(*) FILTER (WHERE state = 'pending')
                     FROM runway_proxy_tasks",
                    Vec::new(),
                )
                .await?;
            let get = |i: usize| -> Result<u64, Error> {
                rows.first()
                    .map(|row| row.try_get::<_, i64>(i))
                    .transpose()
                    .map(|n| u64::try_from(n.unwrap_or(0)).unwrap_or(0))
                    .map_err(db_error)
            };
            Ok(TaskCounts {
                pending: get(3)?,
                watching: get(0)?,
                done: get(1)?,
                unknown: get(2)?,
            })
        })
    }

    fn trace_of(&self, task_id: String) -> StoreFuture<'_, Option<String>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    "SELECT trace FROM runway_proxy_tasks WHERE task_id = $1",
                    vec![Box::new(task_id)],
                )
                .await?;
            match rows.first() {
                Some(row) => row.try_get::<_, Option<String>>(0).map_err(db_error),
                None => Ok(None),
            }
        })
    }

    fn task(&self, task_id: String) -> StoreFuture<'_, Option<WatchedTask>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    concat!(
                        "SELECT ",
                        columns!(),
                        " FROM runway_proxy_tasks t WHERE t.task_id = $1"
                    ),
                    vec![Box::new(task_id)],
                )
                .await?;
            Ok(rows_to_tasks(rows)?.into_iter().next())
        })
    }

    fn list_tasks(&self, filter: TaskFilter, after: i64, limit: usize) -> StoreFuture<'_, Vec<WatchedTask>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    concat!(
                        "SELECT ",
                        columns!(),
                        " FROM runway_proxy_tasks t
                         WHERE ($1::text IS NULL OR t.state = $1)
                           AND ($4::text IS NULL OR t.key_label = $4 OR t.key_hash = $4)
                           AND t.id > $2 ORDER BY t.id LIMIT $3"
                    ),
                    vec![
                        Box::new(filter.state.map(|s| s.as_str().to_owned())),
                        Box::new(after),
                        Box::new(limit as i64),
                        Box::new(filter.key),
                    ],
                )
                .await?;
            rows_to_tasks(rows)
        })
    }

    fn journal(&self, task_id: String) -> StoreFuture<'_, Vec<JournalEntry>> {
        Box::pin(self.read_journal(task_id))
    }

    fn reserve(&self, reservation: Reservation, limits: TaskLimits) -> StoreFuture<'_, Reserved> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    "SELECT refused, used FROM runway_proxy_reserve_task(
                         $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                    vec![
                        Box::new(reservation.id),
                        Box::new(reservation.format.as_str()),
                        Box::new(reservation.route),
                        Box::new(reservation.key_hash),
                        Box::new(reservation.key),
                        Box::new(reservation.model),
                        Box::new(millis(limits.window)),
                        Box::new(millis(limits.unknown_for)),
                        Box::new(limit_param(limits.tasks_per_key)),
                        Box::new(limit_param(limits.points_per_key)),
                        Box::new(limit_param(limits.tasks)),
                        Box::new(limit_param(limits.points)),
                        Box::new(limits.in_flight_per_key.map(i64::from)),
                        Box::new(limits.in_flight.map(i64::from)),
                        Box::new(reservation.points.and_then(|p| i64::try_from(p).ok())),
                    ],
                )
                .await?;
            let row = rows
                .first()
                .ok_or_else(|| Error::corrupt("the reservation returned nothing"))?;
            let refused: Option<&str> = row.try_get(0).map_err(db_error)?;
            let used: Option<i64> = row.try_get(1).map_err(db_error)?;
            match refused {
                None => Ok(Reserved::Granted),
                Some(name) => Limit::parse(name)
                    .map(|limit| Reserved::Refused {
                        limit,
                        used: used.unwrap_or(0),
                    })
                    .ok_or_else(|| {
                        Error::corrupt(format!("the reservation named an unknown limit {name:?}"))
                    }),
            }
        })
    }

    fn cancel_reservation(&self, reservation: String) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.task_statement(
                "DELETE FROM runway_proxy_tasks WHERE task_id = $1 AND state = 'pending'",
                vec![Box::new(reservation)],
            )
            .await
            .map(drop)
        })
    }

    fn spend(&self, key: Option<String>, since: i64) -> StoreFuture<'_, Vec<Spend>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    "SELECT submitted_at, COALESCE(points, 0) - COALESCE(refunded, 0) FROM runway_proxy_tasks
                     WHERE ($1::text IS NULL OR key_label = $1) AND submitted_at > $2 ORDER BY submitted_at, id",
                    vec![Box::new(key), Box::new(since)],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(Spend {
                        submitted_at: row.try_get(0)?,
                        net_points: row.try_get(1)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(db_error)
        })
    }

    fn usage(&self, key: Option<String>, from: i64, to: i64) -> StoreFuture<'_, Vec<UsageRow>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    "SELECT key_label, model, state, status, COUNT(*), COALESCE(SUM(points), 0)::bigint,
                            COALESCE(SUM(refunded), 0)::bigint
                     FROM runway_proxy_tasks
                     WHERE ($1::text IS NULL OR key_label = $1 OR key_hash = $1)
                       AND submitted_at >= $2 AND submitted_at < $3 AND state <> 'pending'
                     GROUP BY key_label, model, state, status",
                    vec![Box::new(key), Box::new(from), Box::new(to)],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    let state: &str = row.try_get(2)?;
                    let status: Option<&str> = row.try_get(3)?;
                    let tasks: i64 = row.try_get(4)?;
                    Ok(UsageRow {
                        key: row.try_get(0)?,
                        model: row.try_get(1)?,
                        status: StatusClass::of(
                            WatchState::parse(state).unwrap_or(WatchState::Unknown),
                            status,
                        ),
                        tasks: u64::try_from(tasks).unwrap_or(0),
                        points: row.try_get(5)?,
                        refunded: row.try_get(6)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(db_error)
        })
    }

    fn prune(&self, before: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.prune_journal(before).await?;
            let rows = self
                .task_statement(
                    "WITH gone AS (
                         DELETE FROM runway_proxy_tasks
                         WHERE state IN ('done', 'unknown', 'pending') AND submitted_at < $1 RETURNING 1)
                     SELECT COUNT(*) FROM gone",
                    vec![Box::new(before)],
                )
                .await?;
            let n: i64 = rows
                .first()
                .map(|row| row.try_get(0))
                .transpose()
                .map_err(db_error)?
                .unwrap_or(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}
