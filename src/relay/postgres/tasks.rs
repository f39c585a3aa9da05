//! The watch list in the outbox's PostgreSQL database: one list for every replica, each
//! task claimed by one watcher at a time (`FOR UPDATE SKIP LOCKED`, a lease on the
//! database's clock).

use std::time::Duration;

use tokio_postgres::Row;

use super::{PostgresOutbox, db_error, pool_error};
use crate::store::{BoxFuture, StoreError};
use crate::tasks::{Checked, NewTask, TaskCounts, TaskFormat, TaskStore, WatchState, WatchedTask};

/// The columns `row_to_task` reads, in its order (a macro, so statements stay literals).
macro_rules! columns {
    () => {
        "t.id, t.task_id, t.format, t.route, t.key_hash, t.sealed_key, t.subscriber, t.state, \
         t.status, t.submitted_at, t.last_callback_at, t.next_check_at, t.checks, t.recovered"
    };
}

use crate::duration::millis;

fn row_to_task(row: &Row) -> Result<WatchedTask, tokio_postgres::Error> {
    let format: &str = row.try_get(2)?;
    let state: &str = row.try_get(7)?;
    let checks: i32 = row.try_get(12)?;
    Ok(WatchedTask {
        id: row.try_get(0)?,
        task_id: row.try_get(1)?,
        format: TaskFormat::parse(format).unwrap_or(TaskFormat::Reverse),
        route: row.try_get(3)?,
        key_hash: row.try_get(4)?,
        sealed_key: row.try_get(5)?,
        subscriber: row.try_get(6)?,
        state: WatchState::parse(state).unwrap_or(WatchState::Unknown),
        status: row.try_get(8)?,
        submitted_at: row.try_get(9)?,
        last_callback_at: row.try_get(10)?,
        next_check_at: row.try_get(11)?,
        checks: u32::try_from(checks).unwrap_or(0),
        recovered: row.try_get(13)?,
    })
}

fn rows_to_tasks(rows: Vec<Row>) -> Result<Vec<WatchedTask>, StoreError> {
    rows.iter()
        .map(row_to_task)
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError(db_error(e).0))
}

impl PostgresOutbox {
    /// Run one statement with `params` on the outbox's runtime; the rows it returns.
    async fn task_statement(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
    ) -> Result<Vec<Row>, StoreError> {
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
        .map_err(|e| StoreError(e.0))
    }
}

impl TaskStore for PostgresOutbox {
    fn record(&self, task: NewTask, check_after: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let state = if task.outcome_unknown {
            WatchState::Unknown
        } else {
            WatchState::Watching
        };
        Box::pin(async move {
            self.task_statement(
                "INSERT INTO runway_proxy_tasks (task_id, format, route, key_hash, sealed_key, subscriber, state,
                                                 submitted_at, next_check_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, runway_proxy_now_ms(), runway_proxy_now_ms() + $8,
                         runway_proxy_now_ms())
                 ON CONFLICT (task_id) DO NOTHING",
                vec![
                    Box::new(task.task_id),
                    Box::new(task.format.as_str()),
                    Box::new(task.route),
                    Box::new(task.key_hash),
                    Box::new(task.sealed_key),
                    Box::new(task.subscriber),
                    Box::new(state.as_str()),
                    Box::new(millis(check_after)),
                ],
            )
            .await
            .map(drop)
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
            // One statement: update it if still watched, and say whether it is listed at all.
            let rows = self
                .task_statement(
                    "WITH seen AS (
                         UPDATE runway_proxy_tasks
                         SET status = COALESCE($2, status), last_callback_at = runway_proxy_now_ms(),
                             next_check_at = runway_proxy_now_ms() + $3,
                             state = CASE WHEN $4 THEN 'done' ELSE state END, updated_at = runway_proxy_now_ms()
                         WHERE task_id = $1 AND state = 'watching'
                         RETURNING 1)
                     SELECT EXISTS (SELECT 1 FROM seen) OR EXISTS (SELECT 1 FROM runway_proxy_tasks WHERE task_id = $1)",
                    vec![
                        Box::new(task_id),
                        Box::new(status),
                        Box::new(millis(check_after)),
                        Box::new(terminal),
                    ],
                )
                .await?;
            rows.first()
                .map(|row| row.try_get::<_, bool>(0))
                .transpose()
                .map(|listed| listed.unwrap_or(false))
                .map_err(|e| StoreError(db_error(e).0))
        })
    }

    fn claim_due(
        &self,
        owner: String,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<WatchedTask>, StoreError>> {
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

    fn checked(
        &self,
        task_id: String,
        owner: String,
        checked: Checked,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.task_statement(
                "UPDATE runway_proxy_tasks
                 SET status = COALESCE($3, status), checks = checks + 1,
                     state = CASE WHEN $4 THEN 'done' ELSE state END, recovered = recovered OR $5,
                     next_check_at = runway_proxy_now_ms() + $6, lease_owner = NULL, lease_until = NULL,
                     updated_at = runway_proxy_now_ms()
                 WHERE task_id = $1 AND lease_owner = $2 AND state = 'watching'",
                vec![
                    Box::new(task_id),
                    Box::new(owner),
                    Box::new(checked.status),
                    Box::new(checked.done),
                    Box::new(checked.recovered),
                    Box::new(millis(checked.again_after)),
                ],
            )
            .await
            .map(drop)
        })
    }

    fn count_tasks(&self) -> BoxFuture<'_, Result<TaskCounts, StoreError>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    "SELECT COUNT(*) FILTER (WHERE state = 'watching'), COUNT(*) FILTER (WHERE state = 'done'),
                            COUNT(*) FILTER (WHERE state = 'unknown')
                     FROM runway_proxy_tasks",
                    Vec::new(),
                )
                .await?;
            let get = |i: usize| -> Result<u64, StoreError> {
                rows.first()
                    .map(|row| row.try_get::<_, i64>(i))
                    .transpose()
                    .map(|n| u64::try_from(n.unwrap_or(0)).unwrap_or(0))
                    .map_err(|e| StoreError(db_error(e).0))
            };
            Ok(TaskCounts {
                watching: get(0)?,
                done: get(1)?,
                unknown: get(2)?,
            })
        })
    }

    fn task(&self, task_id: String) -> BoxFuture<'_, Result<Option<WatchedTask>, StoreError>> {
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

    fn list_tasks(
        &self,
        state: Option<WatchState>,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<WatchedTask>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .task_statement(
                    concat!(
                        "SELECT ",
                        columns!(),
                        " FROM runway_proxy_tasks t
                         WHERE ($1::text IS NULL OR t.state = $1) AND t.id > $2 ORDER BY t.id LIMIT $3"
                    ),
                    vec![
                        Box::new(state.map(|s| s.as_str().to_owned())),
                        Box::new(after),
                        Box::new(limit as i64),
                    ],
                )
                .await?;
            rows_to_tasks(rows)
        })
    }
}
