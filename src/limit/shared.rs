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
//! This module decides; [`RateLimit`](super::RateLimit) waits. Wiring it into the layer
//! (with the fallback to the local limiter when Redis is away) is issue 13's next step.
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

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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
    connection: ConnectionManager,
    prefix: String,
    gcra: redis::Script,
    acquire: redis::Script,
    renew: redis::Script,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: it is not kept, and never printed.
        f.debug_struct("SharedLimits")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How long one decision may take before Redis counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl SharedLimits {
    /// Connect to the Redis at `url` (`redis://[user:password@]host:port/db`). Keys are
    /// named `{prefix}:…`: replicas that share a budget use the same prefix.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, SharedLimitError> {
        let client = redis::Client::open(url).map_err(SharedLimitError::Url)?;
        // One multiplexed connection: a decision is one round trip, never a connect; it
        // reconnects by itself after Redis comes back.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1);
        let connection = client.get_connection_manager_with_config(config).await?;
        Ok(SharedLimits {
            connection,
            prefix: prefix.to_owned(),
            gcra: redis::Script::new(GCRA),
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
        })
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    /// Whether a request that falls under each of `quotas` (a name, unique per quota and
    /// per key of a keyed quota, and its rate) may go now. Admitted by all, it is counted
    /// by all; refused by one, it is counted by none.
    pub async fn check(&self, quotas: &[(&str, QuotaSpec)]) -> Result<SharedDecision, SharedLimitError> {
        if quotas.is_empty() {
            return Ok(SharedDecision::Allowed);
        }
        let mut invocation = self.gcra.prepare_invoke();
        for (name, spec) in quotas {
            let interval = micros(spec.replenish_interval());
            let tolerance = interval.saturating_mul(u64::from(spec.burst_size().get() - 1));
            invocation
                .key(self.key("rate", name))
                .arg(interval)
                .arg(tolerance);
        }
        let wait: u64 = invocation.invoke_async(&mut self.connection.clone()).await?;
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
            .acquire
            .key(self.key("slots", name))
            .arg(cap)
            .arg(holder)
            .arg(millis(lease))
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(taken == 1)
    }

    /// Extend `holder`'s lease on `name` by `lease` from now. `false`: it had lapsed (the
    /// slot may be someone else's now).
    pub async fn renew(&self, name: &str, holder: &str, lease: Duration) -> Result<bool, SharedLimitError> {
        let renewed: u8 = self
            .renew
            .key(self.key("slots", name))
            .arg(holder)
            .arg(millis(lease))
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(renewed == 1)
    }

    /// Give `holder`'s slot on `name` back.
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), SharedLimitError> {
        let _: u8 = redis::cmd("ZREM")
            .arg(self.key("slots", name))
            .arg(holder)
            .query_async(&mut self.connection.clone())
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
