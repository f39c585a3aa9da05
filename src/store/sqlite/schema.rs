//! The embedded store's schema: its tables, and what a file made by an earlier version
//! gets when it is opened.

use rusqlite::Connection;

/// Every table and index, created when missing.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id      TEXT    NOT NULL,
    dedup_key       TEXT    NOT NULL UNIQUE,
    task_key        TEXT    NOT NULL,
    status          TEXT,
    terminal        INTEGER NOT NULL,
    target_url      TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_task ON deliveries (task_key, state);
CREATE TABLE IF NOT EXISTS idempotency (
    key          TEXT    PRIMARY KEY,
    fingerprint  TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         BLOB,
    lease_until  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
CREATE TABLE IF NOT EXISTS tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id          TEXT    NOT NULL UNIQUE,
    format           TEXT    NOT NULL,
    route            TEXT    NOT NULL,
    key_hash         TEXT    NOT NULL,
    sealed_key       TEXT,
    subscriber       TEXT,
    state            TEXT    NOT NULL,
    status           TEXT,
    submitted_at     INTEGER NOT NULL,
    last_callback_at INTEGER,
    next_check_at    INTEGER NOT NULL,
    checks           INTEGER NOT NULL DEFAULT 0,
    recovered        INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (state, next_check_at);
CREATE TABLE IF NOT EXISTS archive_jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id     INTEGER NOT NULL UNIQUE,
    task_key        TEXT    NOT NULL,
    nonce           TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    deadline_at     INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    result          TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    trace           TEXT
);
CREATE INDEX IF NOT EXISTS archive_jobs_due ON archive_jobs (next_attempt_at) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS archive_jobs_task ON archive_jobs (task_key, id);
-- Which task each callback route token belongs to: the first task id recorded for it.
-- The token's id is the row id: one integer-keyed insert per submission.
CREATE TABLE IF NOT EXISTS token_bindings (
    token    INTEGER PRIMARY KEY,
    task_id  TEXT    NOT NULL,
    bound_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, id);
-- One row per subscriber (target URL): its breaker, its place in the round-robin, its
-- rate allowance and its last two hours of attempts. See `store::subscribers`.
CREATE TABLE IF NOT EXISTS subscribers (
    id              TEXT    PRIMARY KEY,
    url             TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'active',
    reason          TEXT,
    transition      TEXT,
    paused_at       INTEGER,
    next_probe_at   INTEGER,
    probe_id        INTEGER,
    probe_until     INTEGER,
    failures        INTEGER NOT NULL DEFAULT 0,
    gone            INTEGER NOT NULL DEFAULT 0,
    served_at       INTEGER NOT NULL DEFAULT 0,
    rate_tat        INTEGER NOT NULL DEFAULT 0,
    last_success_at INTEGER,
    last_error      TEXT,
    last_error_at   INTEGER,
    window_start    INTEGER NOT NULL DEFAULT 0,
    window_attempts INTEGER NOT NULL DEFAULT 0,
    window_failures INTEGER NOT NULL DEFAULT 0,
    prev_attempts   INTEGER NOT NULL DEFAULT 0,
    prev_failures   INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL
);
";

/// Columns the ledger added to `tasks` (a file made by an earlier version gets them on
/// open), then their indexes.
const LEDGER_COLUMNS: &[(&str, &str)] = &[
    ("key_label", "TEXT NOT NULL DEFAULT ''"),
    ("model", "TEXT"),
    ("points", "INTEGER"),
    ("refunded", "INTEGER"),
    ("finished_at", "INTEGER"),
    // The submission's trace context (traces exported).
    ("trace", "TEXT"),
    // The id of the callback route token the submission was given: the task it belongs to.
    ("callback_token", "INTEGER"),
    // The last progress reported, in percent.
    ("progress", "INTEGER"),
];
/// Columns added to `deliveries` since its first version.
const DELIVERY_COLUMNS: &[(&str, &str)] = &[
    ("trace", "TEXT"),
    // Whose: see `store::subscribers`.
    ("subscriber", "TEXT"),
    // When a replay queued it again (`delivery.max_age` counts from then; NULL: from
    // `created_at`).
    ("queued_at", "INTEGER"),
];
const LEDGER_INDEXES: &str = "
UPDATE tasks SET key_label = key_hash WHERE key_label = '';
-- The budgets read a window of one key's (or every key's) tasks: covering indexes, so a
-- reservation reads index entries, not rows. The tasks in flight are few: a partial one.
CREATE INDEX IF NOT EXISTS tasks_spend ON tasks (key_label, submitted_at, points, refunded);
CREATE INDEX IF NOT EXISTS tasks_spend_all ON tasks (submitted_at, points, refunded);
-- Not `state IN (...)`: SQLite evaluates a partial index's condition on every insert,
-- and an IN list there builds a temporary b-tree each time (about a third of a
-- submission's insert). Every state but 'done' is unfinished.
DROP INDEX IF EXISTS tasks_unfinished;
-- Which task a callback token belongs to (the webhook receiver asks).
CREATE INDEX IF NOT EXISTS tasks_token ON tasks (callback_token) WHERE callback_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (key_label, state, submitted_at)
    WHERE state <> 'done';
-- Claims read one subscriber's due deliveries, and count its claims in flight.
CREATE INDEX IF NOT EXISTS deliveries_subscriber ON deliveries (subscriber, state, next_attempt_at);
";

/// Give an earlier version's tables the columns added since (the ledger's, the trace
/// context's).
pub(super) fn add_ledger_columns(connection: &Connection) -> rusqlite::Result<()> {
    add_columns(connection, "tasks", LEDGER_COLUMNS)?;
    add_columns(connection, "deliveries", DELIVERY_COLUMNS)?;
    connection.execute_batch(LEDGER_INDEXES)?;
    name_subscribers(connection)
}

/// Give deliveries stored by a version before subscribers their subscriber, and each
/// subscriber its row. (Read through the subscriber index: nothing to do is one seek.)
fn name_subscribers(connection: &Connection) -> rusqlite::Result<()> {
    let urls: Vec<String> = connection
        .prepare("SELECT DISTINCT target_url FROM deliveries WHERE subscriber IS NULL")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let now = crate::duration::unix_millis();
    for url in urls {
        let id = crate::store::subscriber_id(&url);
        connection.execute(
            "UPDATE deliveries SET subscriber = ?1 WHERE subscriber IS NULL AND target_url = ?2",
            rusqlite::params![id, url],
        )?;
        connection.execute(
            "INSERT OR IGNORE INTO subscribers (id, url, created_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![id, url, now],
        )?;
    }
    Ok(())
}

fn add_columns(connection: &Connection, table: &str, wanted: &[(&str, &str)]) -> rusqlite::Result<()> {
    let mut columns = Vec::new();
    {
        let mut info = connection.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = info.query_map([], |row| row.get::<_, String>(1))?;
        for name in names {
            columns.push(name?);
        }
    }
    for (name, kind) in wanted {
        if !columns.iter().any(|c| c == name) {
            connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}
