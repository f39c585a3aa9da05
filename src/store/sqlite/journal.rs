//! Tasks' journals in the embedded store: written in the transaction of what they record.

use rusqlite::{Connection, params};

use super::statements::ExecuteCached;
use crate::duration::millis;
use crate::store::{JOURNAL_PAGE, JOURNAL_RETENTION, JournalEntry, JournalKind};

pub(super) const TABLE: &str = "
-- Each task's journal: callbacks, checks, delivery attempts. See `store::journal`.
CREATE TABLE IF NOT EXISTS task_journal (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id  TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    repeats  INTEGER NOT NULL DEFAULT 1,
    kind     TEXT    NOT NULL,
    status   TEXT,
    progress INTEGER,
    detail   TEXT
);
CREATE INDEX IF NOT EXISTS task_journal_task ON task_journal (task_id, id);
CREATE INDEX IF NOT EXISTS task_journal_at ON task_journal (at);
";

/// One entry of what happened to `task_id`, or one more repeat of its last entry when
/// that was a check that found the same.
pub(super) fn write(
    tx: &Connection,
    task_id: &str,
    now: i64,
    kind: JournalKind,
    status: Option<&str>,
    progress: Option<u8>,
    detail: Option<&str>,
) -> rusqlite::Result<()> {
    if kind == JournalKind::Check {
        let bumped = tx.execute_cached(
            "UPDATE task_journal SET repeats = repeats + 1, last_at = ?2
             WHERE id = (SELECT MAX(id) FROM task_journal WHERE task_id = ?1)
               AND kind = 'check' AND status IS ?3 AND progress IS ?4 AND detail IS ?5",
            params![task_id, now, status, progress, detail],
        )?;
        if bumped > 0 {
            return Ok(());
        }
    }
    tx.execute_cached(
        "INSERT INTO task_journal (task_id, at, last_at, kind, status, progress, detail)
         VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6)",
        params![task_id, now, kind.as_str(), status, progress, detail],
    )?;
    Ok(())
}

/// `task_id`'s newest [`JOURNAL_PAGE`] entries, oldest first.
pub(super) fn read(tx: &Connection, task_id: &str) -> rusqlite::Result<Vec<JournalEntry>> {
    let mut select = tx.prepare_cached(
        "SELECT at, last_at, repeats, kind, status, progress, detail FROM task_journal
         WHERE task_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let mut entries = select
        .query_map(params![task_id, JOURNAL_PAGE as i64], |row| {
            JournalEntry::from_columns(row)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    entries.reverse();
    Ok(entries)
}

/// Forget entries older than [`JOURNAL_RETENTION`], and those of tasks pruned (older
/// than `before`).
pub(super) fn prune(tx: &Connection, now: i64, before: i64) -> rusqlite::Result<usize> {
    tx.execute_cached(
        "DELETE FROM task_journal WHERE at < ?1",
        params![before.max(now - millis(JOURNAL_RETENTION))],
    )
}
