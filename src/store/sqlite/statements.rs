//! Running statements on the writer's connection: each parsed once and kept
//! (`execute_cached`), and result rows read by column the way every backend reads them.

use rusqlite::Connection;

use crate::store::columns::Columns;

/// Statements the writer keeps parsed: more than it runs (about 50), so that none is
/// parsed again per call (rusqlite keeps 16 by default).
pub(super) const STATEMENT_CACHE: usize = 96;

/// `execute` through the connection's statement cache: each statement is parsed once per
/// connection, not once per call.
pub(super) trait ExecuteCached {
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
}

impl ExecuteCached for Connection {
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// Open the writer's batch transaction (`BEGIN IMMEDIATE`: the write lock now, so no
/// statement of the batch waits for it), with a cached statement: rusqlite's
/// `Transaction` parses `BEGIN` and `COMMIT` again at every batch.
pub(super) fn begin(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_cached("BEGIN IMMEDIATE", []).map(drop)
}

/// Commit the batch transaction; when the commit fails, roll it back, so the next batch
/// starts on a clean connection.
pub(super) fn commit(connection: &Connection) -> rusqlite::Result<()> {
    let committed = connection.execute_cached("COMMIT", []).map(drop);
    if committed.is_err() && !connection.is_autocommit() {
        let _ = connection.execute_cached("ROLLBACK", []);
    }
    committed
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;

    fn text(&self, at: usize) -> rusqlite::Result<String> {
        self.get(at)
    }

    fn optional_text(&self, at: usize) -> rusqlite::Result<Option<String>> {
        self.get(at)
    }

    fn int(&self, at: usize) -> rusqlite::Result<i64> {
        self.get(at)
    }

    fn optional_int(&self, at: usize) -> rusqlite::Result<Option<i64>> {
        self.get(at)
    }

    fn count(&self, at: usize) -> rusqlite::Result<u32> {
        Ok(u32::try_from(self.get::<_, i64>(at)?).unwrap_or(0))
    }

    fn flag(&self, at: usize) -> rusqlite::Result<bool> {
        self.get(at)
    }

    fn bytes(&self, at: usize) -> rusqlite::Result<Vec<u8>> {
        self.get(at)
    }
}

#[cfg(test)]
mod tests {
    use super::super::SqliteOutbox;

    /// The unfinished tasks' partial index has a condition SQLite checks without a
    /// temporary b-tree per insert, a file made before keeps no old one, and the
    /// in-flight count reads it.
    #[test]
    fn the_open_tasks_index_is_the_one_the_in_flight_count_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite3");
        drop(SqliteOutbox::open(&path).unwrap());
        let connection = rusqlite::Connection::open(&path).unwrap();
        let indexes: Vec<String> = connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(indexes.iter().any(|name| name == "tasks_open"), "{indexes:?}");
        assert!(
            !indexes.iter().any(|name| name == "tasks_unfinished"),
            "{indexes:?}"
        );
        let plan: Vec<String> = connection
            .prepare(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM tasks WHERE state <> 'done' AND key_label = ?2 AND
                   (state = 'watching' OR submitted_at > ?1)",
            )
            .unwrap()
            .query_map([0, 0], |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("tasks_open")), "{plan:?}");
    }

    /// The statements the writer runs periodically or per request keep their plan: none
    /// is planned again at a call (a bound `LIMIT`, or a bound value a partial index's
    /// condition depends on, made SQLite re-plan at every call: about 250k instructions).
    #[test]
    fn periodic_and_per_request_statements_are_planned_once() {
        use std::time::Duration;

        use rusqlite::StatementStatus;

        use super::super::subscribers::{DUE, EXPIRED, SERVE_ORDER, claim};
        use super::super::{enqueue, idempotency, tasks};
        use crate::store::{Claim, Fairness, NewDelivery};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite3");
        drop(SqliteOutbox::open(&path).unwrap());
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection.set_prepared_statement_cache_capacity(super::STATEMENT_CACHE);
        for n in 0..4 {
            let delivery = NewDelivery {
                webhook_id: format!("msg_{n}"),
                dedup_key: format!("t{n}:3"),
                task_key: format!("t{n}"),
                status: Some("3".into()),
                terminal: true,
                target_url: "http://127.0.0.1:9/hook".into(),
                body: bytes::Bytes::from_static(b"{}"),
                trace: None,
                hold_until: None,
                token: None,
                task_id: None,
            };
            enqueue(&connection, &delivery).unwrap();
            let fairness = Fairness {
                max_in_flight: 8,
                rate: None,
            };
            assert_eq!(
                claim(&connection, "w", 1, Duration::ZERO, fairness)
                    .unwrap()
                    .len(),
                1
            );
            tasks::claim_due(&connection, "w", 3, Duration::from_secs(30)).unwrap();
            let key = Claim::new(format!("k{n}"), "f", Duration::from_secs(1), Duration::ZERO);
            idempotency::begin(&connection, &key).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        for sql in [
            SERVE_ORDER,
            EXPIRED,
            DUE,
            tasks::CLAIM_DUE,
            idempotency::PURGE_EXPIRED,
        ] {
            let statement = connection.prepare_cached(sql).unwrap();
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0, "{sql}");
            assert!(
                statement.get_status(StatementStatus::VmStep) > 0,
                "never ran: {sql}"
            );
        }
    }
}
