//! Tasks' journals in PostgreSQL: migration 9, and the reads. The writes are folded into
//! the statements that record what they journal (`runway_proxy_journal`, or an insert of
//! their own), so they cost no round trip.

use super::{PostgresOutbox, db_error};
use crate::store::{Error, JOURNAL_PAGE, JOURNAL_RETENTION, JournalEntry};

/// Migration 9: the journal, and each task's last progress.
pub(super) const V9: &str = "
ALTER TABLE runway_proxy_tasks ADD COLUMN IF NOT EXISTS progress bigint;
CREATE TABLE runway_proxy_task_journal (
    id       bigserial PRIMARY KEY,
    task_id  text    NOT NULL,
    at       bigint  NOT NULL,
    last_at  bigint  NOT NULL,
    repeats  integer NOT NULL DEFAULT 1,
    kind     text    NOT NULL,
    status   text,
    progress bigint,
    detail   text
);
CREATE INDEX runway_proxy_task_journal_task ON runway_proxy_task_journal (task_id, id);
CREATE INDEX runway_proxy_task_journal_at ON runway_proxy_task_journal (at);
-- One entry, or one more repeat of the task's last when that was a check that found the same.
CREATE FUNCTION runway_proxy_journal(p_task_id text, p_kind text, p_status text, p_progress bigint,
                                     p_detail text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    at_ms bigint := runway_proxy_now_ms();
BEGIN
    IF p_kind = 'check' THEN
        UPDATE runway_proxy_task_journal j SET repeats = j.repeats + 1, last_at = at_ms
        WHERE j.id = (SELECT max(l.id) FROM runway_proxy_task_journal l WHERE l.task_id = p_task_id)
          AND j.kind = 'check' AND j.status IS NOT DISTINCT FROM p_status
          AND j.progress IS NOT DISTINCT FROM p_progress AND j.detail IS NOT DISTINCT FROM p_detail;
        IF FOUND THEN
            RETURN 0;
        END IF;
    END IF;
    INSERT INTO runway_proxy_task_journal (task_id, at, last_at, kind, status, progress, detail)
    VALUES (p_task_id, at_ms, at_ms, p_kind, p_status, p_progress, p_detail);
    RETURN 1;
END $$;
";

/// A failed delivery attempt's entry (a delivered one is on the delivery itself), a
/// data-modifying step of the completion's statement
/// (which returns the delivery's `task_key`, `status` and whether it was a `probe`):
/// `$14` says how the attempt ended, `$15` the same for a failed probe.
pub(super) const DELIVERY_ENTRY: &str = "
    journaled AS (
        INSERT INTO runway_proxy_task_journal (task_id, at, last_at, kind, status, detail)
        SELECT substr(done.task_key, strpos(done.task_key, '/task:') + 6), runway_proxy_now_ms(),
               runway_proxy_now_ms(), 'delivery', done.status,
               CASE WHEN done.probe AND $12 = 'pending' THEN CAST($15 AS TEXT) ELSE CAST($14 AS TEXT) END
        FROM done WHERE $12 <> 'delivered' AND strpos(done.task_key, '/task:') > 0
          AND length(done.task_key) > strpos(done.task_key, '/task:') + 5)";

impl PostgresOutbox {
    /// `task_id`'s newest [`JOURNAL_PAGE`] entries, oldest first.
    pub(super) async fn read_journal(&self, task_id: String) -> Result<Vec<JournalEntry>, Error> {
        let rows = self
            .task_statement(
                "SELECT at, last_at, repeats, kind, status, progress, detail FROM runway_proxy_task_journal
                 WHERE task_id = $1 ORDER BY id DESC LIMIT $2",
                vec![Box::new(task_id), Box::new(JOURNAL_PAGE as i64)],
            )
            .await?;
        let mut entries = rows
            .iter()
            .map(JournalEntry::from_columns)
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_error)?;
        entries.reverse();
        Ok(entries)
    }

    /// Forget entries older than [`JOURNAL_RETENTION`], and those before `before`.
    pub(super) async fn prune_journal(&self, before: i64) -> Result<(), Error> {
        self.task_statement(
            "DELETE FROM runway_proxy_task_journal
             WHERE at < GREATEST($1, runway_proxy_now_ms() - $2)",
            vec![
                Box::new(before),
                Box::new(crate::duration::millis(JOURNAL_RETENTION)),
            ],
        )
        .await?;
        Ok(())
    }
}
