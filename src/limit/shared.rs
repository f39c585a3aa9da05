//! Quotas and concurrency caps kept in Redis, so that several replicas of the proxy share
//! one budget against one CometAPI account.
//!
//! Each decision is one round trip: a Lua script (sent by `EVALSHA`, loaded on first
//! use) runs atomically on the server, so no two replicas can both take the last slot.
//!
//! - **Rates** are GCRA, the algorithm governor runs in memory: per quota a key holds the
//!   theoretical arrival time (TAT) in microseconds of the server's clock (`TIME`, so the
//!   replicas' clocks never matter). A request is admitted when every quota it falls under
//!   admits it; then, and only then, each TAT advances by one emission interval. A key
//!   expires once its TAT has passed, when it would read as new anyway, so idle keys cost
//!   no memory.
//! - **Concurrency caps** are leases: a sorted set per cap, one member per request in
//!   flight, scored by the lease's expiry. A replica killed mid-request never releases
//!   its lease; it lapses after the lease time and the slot is free again.
//!
//! This module decides; [`RateLimit`](super::RateLimit) waits, when
//! [`LimitSettings::redis_url`](super::LimitSettings::redis_url) is set: for the rate
//! quotas, and for `max_concurrency` and `max_concurrency_per_key`, whose leases last
//! 10 s and are renewed every 3 s while the request is in flight.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), runway_proxy::limit::SharedLimitError> {
//! use runway_proxy::limit::{QuotaSpec, SharedLimits, SharedDecision};
//!
//! let limits = SharedLimits::connect("redis://127.0.0.1:6379/", "runway-proxy").await?;
//! let submit = QuotaSpec::parse("5/s").expect("a quota");
//! match limits.check(&[("global", submit)]).await? {
//!     SharedDecision::Allowed => { /* send it */ }
//!     SharedDecision::Wait(wait) => { /* come back after `wait` */ }
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::QuotaSpec;

/// Redis could not be reached or answered something this module does not expect.
#[derive(Debug, thiserror::Error)]
pub enum SharedLimitError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// Redis did not answer, or answered with an error.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The last connect failed less than a second ago; not tried again yet.
    #[error("Redis is unreachable (the last connect failed moments ago)")]
    Unavailable,
}

/// What the quotas say about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedDecision {
    /// Every quota admitted it, and each has counted it.
    Allowed,
    /// At least one quota is spent; none has counted it. The earliest it could be
    /// admitted is after this long.
    Wait(Duration),
}

/// One atomic GCRA decision over N quotas. KEYS: the quota keys. ARGV: per key, its
/// emission interval and its burst tolerance, in microseconds.
/// Returns 0 (admitted) or the wait in microseconds.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local allow_at = tat - tolerance
  if allow_at > now and allow_at - now > wait then wait = allow_at - now end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local next_tat = tats[i] + tonumber(ARGV[2 * i - 1])
  redis.call('SET', key, string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
end
return 0
";

/// Take a lease on a concurrency cap. KEYS[1]: the cap's sorted set. ARGV: the cap, the
/// lease id, the lease time in milliseconds. Returns 1 (taken) or 0 (full).
const ACQUIRE: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
return 1
";

/// Extend a lease still held. KEYS[1]: the cap's sorted set. ARGV: the lease id, the
/// lease time in milliseconds. Returns 1 (extended) or 0 (it had lapsed).
const RENEW: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if expires <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
return 1
";

/// Rate quotas and concurrency caps in one Redis, shared by every replica that names the
/// same server and prefix. Cheap to clone: clones share one multiplexed connection.
#[derive(Clone)]
pub struct SharedLimits {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// Made on first use, so a proxy can start while Redis is away.
    connection: OnceCell<ConnectionManager>,
    /// Milliseconds after `epoch` of the last failed connect: while Redis is away, one
    /// connect a second at most, not one per request.
    failed_at_ms: AtomicU64,
    epoch: Instant,
    prefix: String,
    gcra: redis::Script,
    acquire: redis::Script,
    renew: redis::Script,
}

impl Inner {
    /// An error while the last failed connect is less than [`RECONNECT_EVERY`] old.
    fn connection_backed_off(&self) -> Result<(), SharedLimitError> {
        // Stored one above the elapsed milliseconds, so 0 means "never failed".
        let failed = self.failed_at_ms.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        if failed != 0 && now.saturating_sub(failed) < RECONNECT_EVERY.as_millis() as u64 {
            return Err(SharedLimitError::Unavailable);
        }
        Ok(())
    }
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: it is not kept, and never printed.
        f.debug_struct("SharedLimits")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// How long one decision may take before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// While Redis is away, how often a connect is tried again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

impl SharedLimits {
    /// Limits in the Redis at `url` (`redis://[user:password@]host:port/db`), connected on
    /// first use. Keys are named `{prefix}:…`: replicas that share a budget use the same
    /// prefix.
    pub fn new(url: &str, prefix: &str) -> Result<Self, SharedLimitError> {
        let client = redis::Client::open(url).map_err(SharedLimitError::Url)?;
        Ok(SharedLimits {
            inner: Arc::new(Inner {
                client,
                connection: OnceCell::new(),
                failed_at_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                prefix: prefix.to_owned(),
                gcra: redis::Script::new(GCRA),
                acquire: redis::Script::new(ACQUIRE),
                renew: redis::Script::new(RENEW),
            }),
        })
    }

    /// [`new`](Self::new), connected now: an error if Redis does not answer.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, SharedLimitError> {
        let limits = Self::new(url, prefix)?;
        limits.connection().await?;
        Ok(limits)
    }

    /// The multiplexed connection: a decision is one round trip on it, never a connect.
    /// Once made it reconnects by itself when Redis comes back.
    async fn connection(&self) -> Result<ConnectionManager, SharedLimitError> {
        let inner = &self.inner;
        if let Some(connection) = inner.connection.get() {
            return Ok(connection.clone());
        }
        inner.connection_backed_off()?;
        // Requests that queued behind a failed connect find the fresh failure here and
        // return at once, rather than each trying (and timing out) in turn.
        let made = inner
            .connection
            .get_or_try_init(|| async {
                inner.connection_backed_off()?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1);
                match inner.client.get_connection_manager_with_config(config).await {
                    Ok(connection) => Ok(connection),
                    Err(err) => {
                        let now = inner.epoch.elapsed().as_millis() as u64 + 1;
                        inner.failed_at_ms.store(now, Ordering::Relaxed);
                        Err(SharedLimitError::from(err))
                    }
                }
            })
            .await?;
        Ok(made.clone())
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.inner.prefix)
    }

    /// Whether a request that falls under each of `quotas` (a name, unique per quota and
    /// per key of a keyed quota, and its rate) may go now. Admitted by all, it is counted
    /// by all; refused by one, it is counted by none.
    pub async fn check<N: AsRef<str>>(
        &self,
        quotas: &[(N, QuotaSpec)],
    ) -> Result<SharedDecision, SharedLimitError> {
        if quotas.is_empty() {
            return Ok(SharedDecision::Allowed);
        }
        let mut invocation = self.inner.gcra.prepare_invoke();
        for (name, spec) in quotas {
            let interval = micros(spec.replenish_interval());
            let tolerance = interval.saturating_mul(u64::from(spec.burst_size().get() - 1));
            invocation
                .key(self.key("rate", name.as_ref()))
                .arg(interval)
                .arg(tolerance);
        }
        let wait: u64 = invocation.invoke_async(&mut self.connection().await?).await?;
        Ok(match wait {
            0 => SharedDecision::Allowed,
            micros => SharedDecision::Wait(Duration::from_micros(micros)),
        })
    }

    /// Take one of `cap` slots of the concurrency cap `name` for `lease`, as `holder` (an
    /// id unique to this request). `false`: all slots are held.
    pub async fn acquire(
        &self,
        name: &str,
        cap: u32,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, SharedLimitError> {
        let taken: u8 = self
            .inner
            .acquire
            .key(self.key("slots", name))
            .arg(cap)
            .arg(holder)
            .arg(millis(lease))
            .invoke_async(&mut self.connection().await?)
            .await?;
        Ok(taken == 1)
    }

    /// Extend `holder`'s lease on `name` by `lease` from now. `false`: it had lapsed (the
    /// slot may be someone else's now).
    pub async fn renew(&self, name: &str, holder: &str, lease: Duration) -> Result<bool, SharedLimitError> {
        let renewed: u8 = self
            .inner
            .renew
            .key(self.key("slots", name))
            .arg(holder)
            .arg(millis(lease))
            .invoke_async(&mut self.connection().await?)
            .await?;
        Ok(renewed == 1)
    }

    /// Give `holder`'s slot on `name` back.
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), SharedLimitError> {
        let _: u8 = redis::cmd("ZREM")
            .arg(self.key("slots", name))
            .arg(holder)
            .query_async(&mut self.connection().await?)
            .await?;
        Ok(())
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}
