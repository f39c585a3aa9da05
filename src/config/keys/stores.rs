//! The settings listed under "Stores" in `serve --help` and `config check`.

use super::super::ValueError;
use super::super::values::*;
use super::*;
use crate::duration;

/// Under "Stores".
pub(super) const KEYS: &[Key] = &[
    key! {
        limit.redis_url, restart,
        env: "RUNWAY_PROXY_REDIS_URL",
        flag: "redis-url",
        doc: "Redis that keeps the rate quotas, shared by every replica that names it (none: in memory).",
        set: |c, raw| {
            c.limit.redis_url = service_url(raw);
            Ok(())
        },
        show: |c| show_service_url(c.limit.redis_url.as_ref()),
    },
    key! {
        limit.redis_fallback, restart,
        env: "RUNWAY_PROXY_REDIS_FALLBACK",
        flag: "redis-fallback",
        doc: "When that Redis is unreachable: local (this process's own limiter, with a warning) or refuse (503).",
        set: |c, raw| {
            c.limit.redis_fallback = raw.parse().map_err(ValueError::Form)?;
            Ok(())
        },
        show: |c| c.limit.redis_fallback.as_str().to_owned(),
    },
    key! {
        data_dir, restart,
        env: "RUNWAY_PROXY_DATA_DIR",
        flag: "data-dir",
        doc: "Directory of the outbox database and generated secrets.",
        set: |c, raw| {
            if raw.trim().is_empty() {
                return Err(ValueError::Form("the data directory must not be empty".into()));
            }
            c.data_dir = raw.into();
            Ok(())
        },
        show: |c| c.data_dir.display().to_string(),
    },
    key! {
        database.url, restart,
        env: "RUNWAY_PROXY_DATABASE_URL",
        flag: "database-url",
        doc: "PostgreSQL that keeps the outbox and idempotency records, shared by every replica that names it (none: SQLite in data_dir).",
        set: |c, raw| {
            c.database.url = service_url(raw);
            Ok(())
        },
        show: |c| show_service_url(c.database.url.as_ref()),
    },
    key! {
        database.pool_size, restart,
        env: "RUNWAY_PROXY_DATABASE_POOL_SIZE",
        flag: "database-pool-size",
        doc: "Most connections to that PostgreSQL this process opens.",
        set: |c, raw| {
            c.database.pool_size = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.database.pool_size.to_string(),
    },
    key! {
        database.timeout, restart,
        env: "RUNWAY_PROXY_DATABASE_TIMEOUT",
        flag: "database-timeout",
        doc: "The longest one PostgreSQL operation may take (a webhook not stored by then is answered 503).",
        parse: positive_duration,
        show: |c| duration::format(c.database.timeout),
    },
    key! {
        idempotency.ttl, restart,
        env: "RUNWAY_PROXY_IDEMPOTENCY_TTL",
        flag: "idempotency-ttl",
        doc: "How long an Idempotency-Key is remembered: a repeat within it gets the first answer.",
        parse: positive_duration,
        show: |c| duration::format(c.idempotency.ttl),
    },
];
