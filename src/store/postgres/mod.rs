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
//! - **Writes** (stored webhooks, recorded attempts) are group-committed: the writes
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

mod idempotency;
mod schema;
mod tasks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::{NoTls, Row};

use super::{
    BoxFuture, Completion, DatabaseSettings, Delivery, DeliveryState, Depth, Enqueued, Error, ErrorKind,
    NewDelivery, Outbox,
};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Writes that may wait for a transaction before their senders wait too.
const QUEUE: usize = 8192;

/// The PostgreSQL [`Outbox`]: see the module docs. Cheap to clone; clones share the pool.
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
    },
    Release {
        id: i64,
        owner: String,
    },
}

enum Applied {
    Enqueued(Enqueued),
    Done,
}

impl WriteOp {
    /// The order writes run in within a transaction: stores by their task's lock, so two
    /// transactions take task locks in the same order, and row updates after them.
    fn order(&self) -> (u8, i64) {
        match self {
            WriteOp::Enqueue { lock, .. } => (0, *lock),
            WriteOp::Complete { id, .. } | WriteOp::Release { id, .. } => (1, *id),
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
        tokio::spawn(write_batches(pool.clone(), queue, writers));
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

/// The advisory lock of a task: 64 bits of a hash of its key.
fn task_lock(task_key: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, task_key.as_bytes());
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(bytes)
}

/// The group-commit writer: takes the writes waiting, up to `writers` transactions at a
/// time, each answered after its commit.
async fn write_batches(pool: Pool, mut queue: mpsc::Receiver<Write>, writers: usize) {
    let permits = Arc::new(Semaphore::new(writers));
    let mut written: u64 = 0;
    let mut next_analyze = FIRST_ANALYZE;
    while let Some(first) = queue.recv().await {
        // Waiting for a free writer is what lets a burst gather into one transaction.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        written += batch.len() as u64;
        if written >= next_analyze {
            next_analyze = next_analyze.saturating_mul(10);
            tokio::spawn(analyze(pool.clone()));
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            commit(&pool, batch).await;
            drop(permit);
        });
    }
}

/// Writes after which the writer first refreshes the planner's statistics, then every
/// tenfold more (1k, 10k, 100k, ...).
const FIRST_ANALYZE: u64 = 1000;

/// Refresh the statistics of the outbox's tables. A new table has none until autovacuum
/// gets to it (up to a minute, longer on a busy server), and the plans each connection
/// caches meanwhile were made for an empty table: the lookup that supersedes a task's
/// older statuses, say, walking every pending row. An `ANALYZE` gives the planner the
/// table as it is and makes every connection plan again. Autovacuum keeps them fresh
/// after that; this covers a replica's first burst.
async fn analyze(pool: Pool) {
    let analyzed = async {
        let client = pool.get().await.map_err(pool_error)?;
        client
            .batch_execute("ANALYZE runway_proxy_deliveries, runway_proxy_idempotency")
            .await
            .map_err(db_error)
    };
    if let Err(err) = analyzed.await {
        tracing::debug!(error = %err, "cannot refresh the outbox's statistics");
    }
}

/// Apply `batch` in one transaction; when it fails, apply each write alone, so one bad
/// write does not fail the others.
async fn commit(pool: &Pool, mut batch: Vec<Write>) {
    batch.sort_by_key(|write| write.op.order());
    let ops: Vec<&WriteOp> = batch.iter().map(|write| &write.op).collect();
    match apply(pool, &ops).await {
        Ok(applied) => {
            for (write, applied) in batch.into_iter().zip(applied) {
                let _ = write.reply.send(Ok(applied));
            }
        }
        Err(err) if batch.len() > 1 => {
            tracing::warn!(error = %err, writes = batch.len(), "outbox batch failed; applying its writes one by one");
            for write in batch {
                let result = apply(pool, &[&write.op])
                    .await
                    .map(|mut applied| applied.pop().unwrap_or(Applied::Done));
                let _ = write.reply.send(result);
            }
        }
        Err(err) => {
            for write in batch {
                let _ = write.reply.send(Err(err.clone()));
            }
        }
    }
}

const ENQUEUE: &str = "SELECT o_id, o_outcome FROM runway_proxy_enqueue($1, $2, $3, $4, $5, $6, $7, $8)";
const SET_TRACE: &str = "UPDATE runway_proxy_deliveries SET trace = $2 WHERE id = $1";
const COMPLETE: &str = "
    UPDATE runway_proxy_deliveries
    SET state = $3, attempts = attempts + 1, next_attempt_at = runway_proxy_now_ms() + $4,
        last_error = $5, delivered_at = CASE WHEN $3 = 'delivered' THEN runway_proxy_now_ms() END,
        lease_owner = NULL, lease_until = NULL, updated_at = runway_proxy_now_ms()
    WHERE id = $1 AND lease_owner = $2 AND state = 'in_flight'";
const RELEASE: &str = "
    UPDATE runway_proxy_deliveries
    SET state = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = runway_proxy_now_ms()
    WHERE id = $1 AND lease_owner = $2 AND state = 'in_flight'";

async fn apply(pool: &Pool, ops: &[&WriteOp]) -> Result<Vec<Applied>, Error> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(db_error)?;
    let enqueue = tx.prepare_cached(ENQUEUE).await.map_err(db_error)?;
    let complete = tx.prepare_cached(COMPLETE).await.map_err(db_error)?;
    let release = tx.prepare_cached(RELEASE).await.map_err(db_error)?;
    // Issued together, the statements are pipelined: the batch costs about one round
    // trip and one commit, not one of each per write.
    let applied = futures_util::future::join_all(ops.iter().map(|op| async {
        match op {
            WriteOp::Enqueue { lock, delivery: d } => {
                let row = tx
                    .query_one(
                        &enqueue,
                        &[
                            lock,
                            &d.webhook_id,
                            &d.dedup_key,
                            &d.task_key,
                            &d.status,
                            &d.terminal,
                            &d.target_url,
                            &&d.body[..],
                        ],
                    )
                    .await?;
                let id: i64 = row.try_get(0)?;
                let outcome: &str = row.try_get(1)?;
                if let (Some(trace), "stored" | "superseded") = (&d.trace, outcome) {
                    // Written apart from the enqueue function, whose signature stays as
                    // it was: only when traces are exported.
                    tx.execute(SET_TRACE, &[&id, trace]).await?;
                }
                Ok(Applied::Enqueued(match outcome {
                    "duplicate" => Enqueued::Duplicate(id),
                    "superseded" => Enqueued::Superseded(id),
                    _ => Enqueued::Stored(id),
                }))
            }
            WriteOp::Complete {
                id,
                owner,
                completion,
            } => {
                let (state, delay, error) = match completion {
                    Completion::Delivered => ("delivered", 0_i64, None),
                    // The worker's clock scheduled it; the database's clock keeps it.
                    Completion::RetryAt { at, error } => ("pending", (at - now_ms()).max(0), Some(error)),
                    Completion::Dead { error } => ("dead", 0, Some(error)),
                };
                tx.execute(&complete, &[id, owner, &state, &delay, &error])
                    .await
                    .map(|_| Applied::Done)
            }
            WriteOp::Release { id, owner } => tx.execute(&release, &[id, owner]).await.map(|_| Applied::Done),
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(applied)
}

const COLUMNS: &str = "d.id, d.webhook_id, d.task_key, d.status, d.target_url, d.body, d.state, d.attempts, \
                       d.next_attempt_at, d.last_error, d.created_at, d.delivered_at, d.trace";

fn row_to_delivery(row: &Row) -> Result<Delivery, tokio_postgres::Error> {
    let state: &str = row.try_get(6)?;
    let attempts: i32 = row.try_get(7)?;
    Ok(Delivery {
        id: row.try_get(0)?,
        webhook_id: row.try_get(1)?,
        task_key: row.try_get(2)?,
        status: row.try_get(3)?,
        target_url: row.try_get(4)?,
        body: Bytes::from(row.try_get::<_, Vec<u8>>(5)?),
        state: DeliveryState::parse(state).unwrap_or(DeliveryState::Dead),
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: row.try_get(8)?,
        last_error: row.try_get(9)?,
        created_at: row.try_get(10)?,
        delivered_at: row.try_get(11)?,
        trace: row.try_get(12)?,
    })
}

fn rows_to_deliveries(rows: Vec<Row>) -> Result<Vec<Delivery>, Error> {
    rows.iter()
        .map(row_to_delivery)
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

/// A row may be claimed when no other delivery of its task is in flight, and no older one
/// still waits: one at a time per task, in order. (Both are index range scans of the
/// task's open deliveries.)
const TASK_IS_FREE: &str = "
    AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key AND o.id <> d.id
                    AND o.state = 'in_flight' AND o.lease_until > now.t)
    AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key AND o.id < d.id
                    AND o.state IN ('pending', 'in_flight'))";

/// The claim statement, made once.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(claim_sql);

fn claim_sql() -> String {
    // The time is read once, and compared as `(SELECT t FROM now)`: a value the planner
    // can put into an index condition. (Joined as a table, it is a filter applied after
    // the scan, and the scan of leases walks every lease, live or dead, on each claim.)
    format!(
        "WITH now AS (SELECT runway_proxy_now_ms() AS t),
         expired AS (
             SELECT d.id, d.task_key FROM runway_proxy_deliveries d, now
             WHERE d.state = 'in_flight' AND d.lease_until <= (SELECT t FROM now) {TASK_IS_FREE}
             ORDER BY d.lease_until LIMIT $1 FOR UPDATE OF d SKIP LOCKED),
         due AS (
             SELECT d.id, d.task_key FROM runway_proxy_deliveries d, now
             WHERE d.state = 'pending' AND d.next_attempt_at <= (SELECT t FROM now) {TASK_IS_FREE}
             ORDER BY d.next_attempt_at, d.id LIMIT $1 FOR UPDATE OF d SKIP LOCKED),
         picked AS (
             SELECT DISTINCT ON (c.task_key) c.id
             FROM (SELECT * FROM expired UNION ALL SELECT * FROM due) c
             ORDER BY c.task_key, c.id LIMIT $1)
         UPDATE runway_proxy_deliveries d
         SET state = 'in_flight', lease_owner = $2, lease_until = now.t + $3, updated_at = now.t
         FROM picked, now WHERE d.id = picked.id
         RETURNING {COLUMNS}"
    )
}

impl Outbox for PostgresOutbox {
    fn enqueue(&self, delivery: NewDelivery) -> BoxFuture<'_, Result<Enqueued, Error>> {
        Box::pin(async move {
            let lock = task_lock(&delivery.task_key);
            match self.write(WriteOp::Enqueue { lock, delivery }).await? {
                Applied::Enqueued(enqueued) => Ok(enqueued),
                Applied::Done => Err(Error::corrupt("the store gave no id")),
            }
        })
    }

    fn claim(
        &self,
        owner: String,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, Error>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let claim = client.prepare_cached(&CLAIM).await.map_err(db_error)?;
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let rows = client
                .query(&claim, &[&(max as i64), &owner, &lease_ms])
                .await
                .map_err(db_error)?;
            let mut claimed = rows_to_deliveries(rows)?;
            claimed.sort_by_key(|d| d.id);
            Ok(claimed)
        }))
    }

    fn complete(&self, id: i64, owner: String, completion: Completion) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.write(WriteOp::Complete {
                id,
                owner,
                completion,
            })
            .await?;
            Ok(())
        })
    }

    fn release(&self, id: i64, owner: String) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.write(WriteOp::Release { id, owner }).await?;
            Ok(())
        })
    }

    fn list(
        &self,
        state: DeliveryState,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, Error>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let list = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM runway_proxy_deliveries d WHERE d.state = $1 AND d.id > $2
                     ORDER BY d.id LIMIT $3"
                ))
                .await
                .map_err(db_error)?;
            let rows = client
                .query(&list, &[&state.as_str(), &after, &(limit as i64)])
                .await
                .map_err(db_error)?;
            rows_to_deliveries(rows)
        }))
    }

    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool, Error>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let changed = client
                .execute(
                    "UPDATE runway_proxy_deliveries
                     SET state = 'pending', attempts = 0, next_attempt_at = runway_proxy_now_ms(),
                         last_error = NULL, updated_at = runway_proxy_now_ms()
                     WHERE id = $1 AND state <> 'in_flight'",
                    &[&id],
                )
                .await
                .map_err(db_error)?;
            Ok(changed > 0)
        }))
    }

    fn next_due(&self) -> BoxFuture<'_, Result<Option<i64>, Error>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let next = client
                .prepare_cached(
                    "SELECT LEAST(
                         (SELECT MIN(next_attempt_at) FROM runway_proxy_deliveries WHERE state = 'pending'),
                         (SELECT MIN(lease_until) FROM runway_proxy_deliveries WHERE state = 'in_flight')
                     ) - runway_proxy_now_ms()",
                )
                .await
                .map_err(db_error)?;
            let row = client.query_one(&next, &[]).await.map_err(db_error)?;
            // How long from now, by the database's clock, as a time on this one's.
            let wait: Option<i64> = row.try_get(0).map_err(db_error)?;
            Ok(wait.map(|wait| now_ms() + wait))
        }))
    }

    fn depth(&self) -> BoxFuture<'_, Result<Depth, Error>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let count = client
                .prepare_cached(
                    "SELECT COUNT(*) FILTER (WHERE state = 'pending'),
                            COUNT(*) FILTER (WHERE state = 'in_flight'),
                            COUNT(*) FILTER (WHERE state = 'dead')
                     FROM runway_proxy_deliveries WHERE state IN ('pending', 'in_flight', 'dead')",
                )
                .await
                .map_err(db_error)?;
            let row = client.query_one(&count, &[]).await.map_err(db_error)?;
            let get = |i: usize| {
                row.try_get::<_, i64>(i)
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(db_error)
            };
            Ok(Depth {
                pending: get(0)?,
                in_flight: get(1)?,
                dead: get(2)?,
            })
        }))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(db_error)?;
            Ok(())
        }))
    }
}
