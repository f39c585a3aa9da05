//! The embedded outbox: SQLite in WAL mode, written by one thread with group commit.
//!
//! Every operation is a command sent to a dedicated thread that owns the connection. The
//! thread takes all the commands waiting (up to a batch), runs them in one transaction,
//! commits once, and only then answers each: a burst of webhooks pays one fsync for the
//! whole batch instead of one each, and nothing is acknowledged before it is on disk
//! (`synchronous = FULL`).

mod archive;
mod idempotency;
mod journal;
mod schema;
mod statements;
mod subscribers;
mod tasks;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    Completion, Delivery, DeliveryState, Depth, Enqueued, Error, ErrorKind, Fairness, Health, NewDelivery,
    Outbox, ReplayFilter, StoreFuture, SubscriberReport, Transition,
};
use statements::{ExecuteCached, STATEMENT_CACHE};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;

/// Commands that may wait for the writer before senders wait too.
const QUEUE: usize = 8192;

/// How a batch's commit went, handed to every command of the batch.
type Committed = Result<(), Arc<rusqlite::Error>>;
type Finish = Box<dyn FnOnce(Committed) + Send>;
type Command = Box<dyn FnOnce(&Connection) -> Finish + Send>;

/// The SQLite [`Outbox`]. Cheap to clone; clones share the writer thread.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    commands: mpsc::Sender<Command>,
    path: Arc<PathBuf>,
}

impl SqliteOutbox {
    /// Open (or create) the outbox at `path` and start its writer thread.
    ///
    /// The file belongs to this process: deliveries left in flight by a previous run
    /// (killed mid-send) are returned to pending at once rather than after their lease.
    ///
    /// "Belongs" is enforced: the outbox takes an exclusive lock (`flock`) on
    /// `{path}.lock` for as long as it is open, and refuses to open a file another process
    /// holds, naming that process. (Two processes on one outbox would each take the
    /// other's deliveries in flight for a crash and send them again.) The kernel releases
    /// the lock when the process dies, however it dies.
    pub fn open(path: &Path) -> Result<SqliteOutbox, Error> {
        let lock = lock_exclusively(path)?;
        let connection = Connection::open(path)
            .map_err(|e| Error::from(e).context(format_args!("cannot open {}", path.display())))?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| connection.pragma_update(None, "busy_timeout", 5000))
            .map(|()| connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE))
            .and_then(|()| connection.execute_batch(schema::SCHEMA))
            .and_then(|()| connection.execute_batch(journal::TABLE))
            .and_then(|()| schema::add_ledger_columns(&connection))
            .map_err(|e| Error::from(e).context(format_args!("cannot set up {}", path.display())))?;
        let now = now_ms();
        let resumed = connection.execute(
            "UPDATE deliveries SET state = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = ?1
                 WHERE state = 'in_flight'",
            params![now],
        )?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "returned deliveries left in flight by the last run to pending"
            );
        }
        // Likewise archive jobs a killed run was copying: copied again, to the same keys.
        let resumed = archive::resume(&connection)?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "archive jobs left mid-copy by the last run are due again"
            );
        }
        let (commands, receiver) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("runway-proxy-outbox".into())
            .spawn(move || {
                // Held for as long as the connection is open.
                let _lock = lock;
                writer(connection, receiver)
            })
            .map_err(|e| Error::unavailable(format!("cannot start the outbox thread: {e}")).with_source(e))?;
        Ok(SqliteOutbox {
            commands,
            path: Arc::new(path.to_owned()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `apply` in the writer's next transaction (it gets the writer's connection, in
    /// the batch's transaction) and wait for its commit.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        apply: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let command: Command = Box::new(move |tx| {
            let result = apply(tx);
            Box::new(move |committed: Committed| {
                let outcome = match (committed, result) {
                    (Ok(()), Ok(value)) => Ok(value),
                    (Err(commit), _) => Err(shared_error(commit).context("commit failed")),
                    (Ok(()), Err(e)) => Err(Error::from(e)),
                };
                let _ = reply.send(outcome);
            })
        });
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::unavailable("the writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| Error::unavailable("the writer thread has stopped"))?
    }
}

/// Take the lock that makes `db` this process's alone, and write this process's id into
/// the lock file for whoever is refused next.
fn lock_exclusively(db: &Path) -> Result<std::fs::File, Error> {
    use std::io::{Seek, Write};
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let cannot =
        |e: std::io::Error| Error::setup(format!("cannot lock {}: {e}", lock_path.display())).with_source(e);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(cannot)?;
    // This process's own earlier outbox on the same file may still be closing (its writer
    // thread lets go when it sees the last handle dropped): give it a moment.
    let mut waited = Duration::ZERO;
    let mut locked = file.try_lock();
    while matches!(locked, Err(std::fs::TryLockError::WouldBlock))
        && waited < Duration::from_secs(2)
        && holder_pid(&mut file) == Some(std::process::id())
    {
        std::thread::sleep(Duration::from_millis(5));
        waited += Duration::from_millis(5);
        locked = file.try_lock();
    }
    match locked {
        Ok(()) => {
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| write!(file, "{}", std::process::id()))
                .map_err(cannot)?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = match holder_pid(&mut file) {
                Some(pid) => format!("the process with PID {pid}"),
                None => "another process".to_owned(),
            };
            let dir = db.parent().unwrap_or(db);
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "the data directory {} is in use by {holder} (it holds {}); two proxies on one \
                 data directory would send each other's webhooks twice: give each its own --data-dir",
                    dir.display(),
                    lock_path.display()
                ),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(cannot(e)),
    }
}

/// The PID the lock's holder wrote into the lock file.
fn holder_pid(file: &mut std::fs::File) -> Option<u32> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The writer thread: batches of commands, one transaction and one commit per batch.
fn writer(connection: Connection, mut commands: mpsc::Receiver<Command>) {
    while let Some(first) = commands.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        if let Err(error) = statements::begin(&connection) {
            tracing::error!(%error, "outbox cannot start a transaction");
            // Answer every command in the batch with the failure, none applied.
            drop(batch);
            continue;
        }
        let finishers: Vec<Finish> = batch.into_iter().map(|command| command(&connection)).collect();
        let committed = statements::commit(&connection).map_err(Arc::new);
        if let Err(error) = &committed {
            tracing::error!(%error, "outbox commit failed");
        }
        for finish in finishers {
            finish(committed.clone());
        }
    }
}

pub(super) use crate::duration::unix_millis as now_ms;

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Error {
        Error::new(sqlite_kind(&err), format!("SQLite: {err}")).with_source(err)
    }
}

/// A failure every command of a batch shares (its commit's).
fn shared_error(err: Arc<rusqlite::Error>) -> Error {
    Error::new(sqlite_kind(&err), format!("SQLite: {err}")).with_shared_source(err)
}

/// What kind of failure SQLite's result code names.
fn sqlite_kind(err: &rusqlite::Error) -> ErrorKind {
    use rusqlite::ErrorCode;
    match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => ErrorKind::Full,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Conflict,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => ErrorKind::Corrupt,
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::PermissionDenied,
        ) => ErrorKind::Unavailable,
        Some(_) => ErrorKind::Other,
        None => match err {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => ErrorKind::Corrupt,
            _ => ErrorKind::Other,
        },
    }
}

/// The columns [`row_to_delivery`] reads, in its order (a macro, so the statements that
/// read them stay literals).
macro_rules! columns {
    () => {
        "id, webhook_id, task_key, status, target_url, body, state, attempts, next_attempt_at, last_error, \
         created_at, delivered_at, trace, subscriber"
    };
}
const COLUMNS: &str = columns!();

/// A delivery from a row of [`COLUMNS`].
fn row_to_delivery(row: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Delivery::from_columns(row)
}

/// Whether a webhook through `token` naming `task_id` may be stored: its token is bound to
/// the first task id recorded for it (this one, if none was), and a webhook naming another
/// task, or none once the token is bound, is refused.
fn token_allows(tx: &Connection, token: i64, task_id: Option<&str>, now: i64) -> rusqlite::Result<bool> {
    // Bound at submission: written on the task's row.
    let submitted: Option<String> = tx
        .prepare_cached("SELECT task_id FROM tasks WHERE callback_token = ?1")?
        .query_row(params![token], |r| r.get(0))
        .optional()?;
    if let Some(bound) = submitted {
        return Ok(task_id == Some(bound.as_str()));
    }
    if let Some(task_id) = task_id {
        tx.execute_cached(
            "INSERT OR IGNORE INTO token_bindings (token, task_id, bound_at) VALUES (?1, ?2, ?3)",
            params![token, task_id, now],
        )?;
    }
    let bound: Option<String> = tx
        .prepare_cached("SELECT task_id FROM token_bindings WHERE token = ?1")?
        .query_row(params![token], |r| r.get(0))
        .optional()?;
    Ok(match (bound, task_id) {
        (Some(bound), Some(task_id)) => bound == task_id,
        (Some(_), None) => false,
        (None, _) => true,
    })
}

fn enqueue(tx: &Connection, d: &NewDelivery) -> rusqlite::Result<Enqueued> {
    if let Some(token) = d.token
        && !token_allows(tx, token, d.task_id.as_deref(), now_ms())?
    {
        return Ok(Enqueued::Refused);
    }
    if let Some(id) = tx
        .prepare_cached("SELECT id FROM deliveries WHERE dedup_key = ?1")?
        .query_row(params![d.dedup_key], |r| r.get(0))
        .optional()?
    {
        return Ok(Enqueued::Duplicate(id));
    }
    // A task's older status is never delivered after its terminal one, nor a second
    // terminal one (a late callback after the result was recovered from the feed).
    let terminal_seen = tx
        .prepare_cached(
            "SELECT 1 FROM deliveries WHERE task_key = ?1 AND terminal = 1 AND state <> 'superseded' LIMIT 1",
        )?
        .query_row(params![d.task_key], |_| Ok(()))
        .optional()?
        .is_some();
    let state = if terminal_seen {
        DeliveryState::Superseded
    } else if d.hold_until.is_some() {
        DeliveryState::Archiving
    } else {
        DeliveryState::Pending
    };
    let now = now_ms();
    let subscriber = subscribers::known(tx, &d.target_url, now)?;
    tx.execute_cached(
        "INSERT INTO deliveries (webhook_id, dedup_key, task_key, status, terminal, target_url, body, state,
                                 next_attempt_at, created_at, updated_at, trace, subscriber)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9, ?10, ?11)",
        params![
            d.webhook_id,
            d.dedup_key,
            d.task_key,
            d.status,
            d.terminal,
            d.target_url,
            &d.body[..],
            state.as_str(),
            now,
            d.trace,
            subscriber
        ],
    )?;
    let id = tx.last_insert_rowid();
    if terminal_seen {
        return Ok(Enqueued::Superseded(id));
    }
    if let Some(deadline) = d.hold_until {
        archive::add_job(tx, id, d, deadline, now)?;
    }
    if d.terminal {
        // Older statuses still waiting would arrive after the terminal one: drop them.
        tx.execute_cached(
            "UPDATE deliveries SET state = 'superseded', updated_at = ?3
             WHERE task_key = ?1 AND id < ?2 AND terminal = 0 AND state = 'pending'",
            params![d.task_key, id, now],
        )?;
    }
    Ok(Enqueued::Stored(id))
}

impl Outbox for SqliteOutbox {
    fn enqueue(&self, delivery: NewDelivery) -> StoreFuture<'_, Enqueued> {
        Box::pin(self.run(move |tx| enqueue(tx, &delivery)))
    }

    fn claim_within(
        &self,
        owner: String,
        max: usize,
        lease: Duration,
        fairness: Fairness,
    ) -> StoreFuture<'_, Vec<Delivery>> {
        Box::pin(self.run(move |tx| subscribers::claim(tx, &owner, max, lease, fairness)))
    }

    fn finish_attempt(
        &self,
        id: i64,
        owner: String,
        subscriber: Option<String>,
        completion: Completion,
        health: Health,
    ) -> StoreFuture<'_, Transition> {
        // The writer reads the delivery's subscriber with its lease check anyway.
        let _ = subscriber;
        Box::pin(self.run(move |tx| subscribers::finish(tx, id, &owner, completion, health)))
    }

    fn release(&self, id: i64, owner: String) -> StoreFuture<'_, ()> {
        Box::pin(self.run(move |tx| {
            tx.execute_cached(
                "UPDATE deliveries SET state = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = ?3
                 WHERE id = ?1 AND lease_owner = ?2 AND state = 'in_flight'",
                params![id, owner, now_ms()],
            )?;
            Ok(())
        }))
    }

    fn list(&self, state: DeliveryState, after: i64, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        Box::pin(self.run(move |tx| {
            let mut select = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE state = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))?;
            select
                .query_map(params![state.as_str(), after, limit as i64], row_to_delivery)?
                .collect()
        }))
    }

    fn deliveries_of_task(&self, task_key: String, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        Box::pin(self.run(move |tx| {
            let mut select = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE task_key = ?1 ORDER BY id LIMIT ?2"
            ))?;
            select
                .query_map(params![task_key, limit as i64], row_to_delivery)?
                .collect()
        }))
    }

    fn replay(&self, id: i64) -> StoreFuture<'_, bool> {
        Box::pin(self.run(move |tx| {
            let changed = tx.execute_cached(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?2, last_error = NULL,
                        updated_at = ?2, queued_at = ?2
                 WHERE id = ?1 AND state NOT IN ('in_flight', 'archiving')",
                params![id, now_ms()],
            )?;
            Ok(changed > 0)
        }))
    }

    fn next_due(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(self.run(|tx| {
            tx.prepare_cached(
                "SELECT MIN(t) FROM (SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE state = 'pending'
                                     UNION ALL SELECT MIN(lease_until) FROM deliveries WHERE state = 'in_flight')",
            )?
            .query_row([], |r| r.get(0))
        }))
    }

    fn depth(&self) -> StoreFuture<'_, Depth> {
        Box::pin(self.run(|tx| {
            // One index range count per state (the delivered rows are never walked), each
            // its own statement, so that none is re-planned for a new bound value.
            let of = |sql: &str| tx.prepare_cached(sql)?.query_row([], |r| r.get::<_, u64>(0));
            Ok(Depth {
                pending: of("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")?,
                in_flight: of("SELECT COUNT(*) FROM deliveries WHERE state = 'in_flight'")?,
                dead: of("SELECT COUNT(*) FROM deliveries WHERE state = 'dead'")?,
            })
        }))
    }

    fn subscribers(&self, after: String, limit: usize) -> StoreFuture<'_, Vec<SubscriberReport>> {
        Box::pin(self.run(move |tx| subscribers::list(tx, &after, limit)))
    }

    fn pause_subscriber(&self, id: String) -> StoreFuture<'_, bool> {
        Box::pin(self.run(move |tx| subscribers::pause(tx, &id)))
    }

    fn resume_subscriber(&self, id: String) -> StoreFuture<'_, bool> {
        Box::pin(self.run(move |tx| subscribers::resume(tx, &id)))
    }

    fn replay_dead(&self, filter: ReplayFilter) -> StoreFuture<'_, u64> {
        Box::pin(self.run(move |tx| subscribers::replay_dead(tx, &filter)))
    }

    fn expire(&self, max_age: Duration) -> StoreFuture<'_, u64> {
        Box::pin(self.run(move |tx| subscribers::expire(tx, max_age)))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        // Through the writer thread: a writer that stopped or stalls fails it.
        Box::pin(self.run(|_| Ok(())))
    }
}
