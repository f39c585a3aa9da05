//! The shared outbox: PostgreSQL, so several replicas relay from one store.
//!
//! [`PostgresOutbox`] keeps the promises of the embedded [`SqliteOutbox`](super::SqliteOutbox)
//! (stored before the 2xx, the same webhook stored once, a task's terminal status
//! superseding older ones, one delivery per task in flight and a task's deliveries in
//! order) with any number of replicas writing and claiming at once:
//!
//! - **Claims** lock the rows they take with `FOR UPDATE SKIP LOCKED`, so two replicas'
//!   workers never wait on each other nor take the same delivery; a claim is a lease, and
//!   a delivery whose replica died mid-send is claimed again once its lease runs out.
//!   Leases and due times are read off the database's clock, never a replica's.
//! - **Writes** (stored webhooks, recorded attempts, submissions' task records) are group-committed: the writes
//!   waiting when a transaction starts go into it, pipelined on one connection, and are
//!   answered after its one commit. Stores of one task take an advisory lock on it, in a
//!   fixed order, so the terminal-status rule holds across replicas without deadlocks.
//! - **The schema** is created and migrated when a replica connects (numbered
//!   migrations, applied once under an advisory lock). The idempotency-key records live
//!   in the same database ([`IdempotencyStore`](crate::idempotency::IdempotencyStore)).
//! - **Bounded**: a pool of at most [`DatabaseSettings::pool_size`] connections, and every
//!   operation, from waiting for a connection to the statement itself, fails after
//!   [`DatabaseSettings::timeout`]. A webhook that could not be stored is answered 503.
//!
//! All of its I/O runs on the Tokio runtime that called [`connect`](PostgresOutbox::connect),
//! whichever runtime a call comes from: a caller on another runtime (the sidecar's
//! serving threads each have one) waits for an answer, never for a connection that only
//! its own runtime would drive.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use runway_proxy::store::{DatabaseSettings, Outbox, PostgresOutbox};
//!
//! # async fn run() -> Result<(), runway_proxy::store::Error> {
//! let settings = DatabaseSettings::new("postgres://runway@db.internal:5432/runway");
//! let outbox: Arc<dyn Outbox> = Arc::new(PostgresOutbox::connect(&settings).await?);
//! // Relay::builder(&callbacks, outbox, signer) as with SQLite.
//! # let _ = outbox;
//! # Ok(())
//! # }
//! ```

mod archive;
mod idempotency;
mod journal;
mod outbox;
mod schema;
mod subscribers;
mod tasks;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Row};

use super::columns::Columns;
use super::{
    Completion, DatabaseSettings, Enqueued, Error, ErrorKind, Health, NewDelivery, NewTask, Transition,
};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Writes that may wait for a transaction before their senders wait too.
const QUEUE: usize = 8192;

/// The PostgreSQL [`Outbox`](crate::store::Outbox): see the module docs. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresOutbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    writes: mpsc::Sender<Write>,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    target: String,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// A write waiting for the next group commit, and whom to tell how it went.
struct Write {
    op: WriteOp,
    reply: oneshot::Sender<Result<Applied, Error>>,
}

enum WriteOp {
    Enqueue {
        lock: i64,
        delivery: NewDelivery,
    },
    Complete {
        id: i64,
        owner: String,
        completion: Completion,
        /// The delivery's subscriber, and what the attempt said of it.
        subscriber: String,
        health: Health,
    },
    Release {
        id: i64,
        owner: String,
    },
    /// A submission's task (`check_after` in milliseconds).
    Record {
        task: NewTask,
        check_after: i64,
    },
}

enum Applied {
    Enqueued(Enqueued),
    Finished(Transition),
    Done,
}

impl WriteOp {
    /// The order writes run in within a transaction: stores by their task's lock, so two
    /// transactions take task locks in the same order, and row updates after them.
    fn order(&self) -> (u8, i64) {
        match self {
            WriteOp::Enqueue { lock, .. } => (0, *lock),
            // Completions by subscriber: two transactions update subscribers' records in
            // the same order.
            WriteOp::Complete { subscriber, .. } => (1, writer::task_lock(subscriber)),
            WriteOp::Release { id, .. } => (2, *id),
            // Task rows after every delivery: a record takes no advisory lock, and its
            // rows (a new task id, its own reservation) are no other write's.
            WriteOp::Record { .. } => (3, 0),
        }
    }
}

impl PostgresOutbox {
    /// Connect to the database of `settings`, create or migrate its schema, and start the
    /// group-commit writer on the current Tokio runtime.
    ///
    /// Fails when the database can't be reached within the timeout, or holds a schema
    /// newer than this build knows.
    pub async fn connect(settings: &DatabaseSettings) -> Result<PostgresOutbox, Error> {
        settings
            .validate()
            .map_err(|e| Error::setup(e.to_string()).with_source(e))?;
        let url = settings
            .url
            .as_ref()
            .ok_or_else(|| Error::setup("database.url: no PostgreSQL URL given"))?;
        let target = url.redacted();
        let mut config: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|_| Error::setup(format!("{target} is not a PostgreSQL URL")))?;
        let timeout = settings.timeout;
        let ms = timeout.as_millis();
        // The server gives up on a statement (and on a transaction left open by a
        // replica that vanished mid-way) about when this side stops waiting for it.
        let options = format!(
            "{} -c statement_timeout={ms} -c idle_in_transaction_session_timeout={}",
            config.get_options().unwrap_or_default(),
            ms * 2
        );
        config
            .application_name("runway-proxy")
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .options(options.trim_start());
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| Error::setup(format!("cannot set up the PostgreSQL pool: {e}")).with_source(e))?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| pool_error(e).context(format_args!("cannot connect to {target}")))?;
        let version = schema::migrate(&mut client).await?;
        drop(client);
        let (writes, queue) = mpsc::channel(QUEUE);
        // Half the pool commits writes; the rest answers claims, lookups and the admin.
        let writers = (settings.pool_size / 2).max(1);
        tokio::spawn(writer::write_batches(pool.clone(), queue, writers));
        tracing::info!(database = %target, schema = version, "PostgreSQL outbox ready");
        Ok(PostgresOutbox {
            inner: Arc::new(Inner {
                pool,
                writes,
                timeout,
                runtime: tokio::runtime::Handle::current(),
                target,
            }),
        })
    }

    /// The database, without credentials (for logs).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Run `op` on the outbox's runtime, bounded by the timeout.
    async fn call<T: Send + 'static>(
        &self,
        op: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let mut task = self.inner.runtime.spawn(op);
        match tokio::time::timeout(self.inner.timeout, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Error::new(
                ErrorKind::Other,
                format!("PostgreSQL operation failed: {join}"),
            )
            .with_source(join)),
            Err(_) => {
                task.abort();
                Err(self.timed_out())
            }
        }
    }

    fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!("PostgreSQL did not answer within {:?}", self.inner.timeout),
        )
    }

    /// Queue `op` for the next group commit and wait for it.
    async fn write(&self, op: WriteOp) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::unavailable("the PostgreSQL writer has stopped");
        let wait = async {
            self.inner
                .writes
                .send(Write { op, reply })
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        };
        tokio::time::timeout(self.inner.timeout, wait)
            .await
            .map_err(|_| self.timed_out())?
    }

    fn pool(&self) -> Pool {
        self.inner.pool.clone()
    }
}

fn db_error(err: tokio_postgres::Error) -> Error {
    // The server's own message says what went wrong; the Display of the error alone is
    // often just "db error".
    let (kind, message) = match err.as_db_error() {
        Some(db) => (
            sqlstate_kind(db.code().code()),
            format!("PostgreSQL: {}: {}", db.code().code(), db.message()),
        ),
        None if err.is_closed() => (ErrorKind::Unavailable, format!("PostgreSQL: {err}")),
        None => (ErrorKind::Other, format!("PostgreSQL: {err}")),
    };
    Error::new(kind, message).with_source(err)
}

/// What kind of failure a SQLSTATE names (its class, the first two characters).
fn sqlstate_kind(code: &str) -> ErrorKind {
    match code {
        // query_canceled: statement_timeout fired.
        "57014" => ErrorKind::Timeout,
        // serialization_failure, deadlock_detected, lock_not_available, unique_violation.
        "40001" | "40P01" | "55P03" | "23505" => ErrorKind::Conflict,
        // data_corrupted, index_corrupted.
        "XX001" | "XX002" => ErrorKind::Corrupt,
        _ => match code.get(..2) {
            // insufficient resources: disk full, out of memory, too many connections.
            Some("53") => ErrorKind::Full,
            // connection exceptions; the server shutting down.
            Some("08" | "57") => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        },
    }
}

fn pool_error(err: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    match err {
        PoolError::Backend(err) => db_error(err),
        PoolError::Timeout(_) => {
            Error::new(ErrorKind::Timeout, format!("PostgreSQL pool: {err}")).with_source(err)
        }
        other => Error::unavailable(format!("PostgreSQL pool: {other}")).with_source(other),
    }
}

use crate::duration::unix_millis as now_ms;

impl Columns for Row {
    type Error = tokio_postgres::Error;

    fn text(&self, at: usize) -> Result<String, Self::Error> {
        self.try_get(at)
    }

    fn optional_text(&self, at: usize) -> Result<Option<String>, Self::Error> {
        self.try_get(at)
    }

    fn int(&self, at: usize) -> Result<i64, Self::Error> {
        self.try_get(at)
    }

    fn optional_int(&self, at: usize) -> Result<Option<i64>, Self::Error> {
        self.try_get(at)
    }

    fn count(&self, at: usize) -> Result<u32, Self::Error> {
        Ok(u32::try_from(self.try_get::<_, i32>(at)?).unwrap_or(0))
    }

    fn flag(&self, at: usize) -> Result<bool, Self::Error> {
        self.try_get(at)
    }

    fn bytes(&self, at: usize) -> Result<Vec<u8>, Self::Error> {
        self.try_get(at)
    }
}
