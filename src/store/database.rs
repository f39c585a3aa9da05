//! Where the shared outbox lives: [`DatabaseSettings`] for
//! [`PostgresOutbox`](super::PostgresOutbox).

use std::time::Duration;

use crate::settings::{InvalidSetting, ServiceUrl, check, parse, settings, show};

settings! {
    /// The PostgreSQL database that replicas share for the outbox and the idempotency records
    /// (`[database]` in the config file). With no URL, each process keeps its own SQLite file.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct DatabaseSettings in database {
        /// `postgres://user:password@host:port/database`; `None`: the embedded SQLite outbox.
        pub url: Option<ServiceUrl> = None,
        /// Most connections this process opens (default 8). Two replicas with the default
        /// hold 16 of the server's `max_connections`.
        pub pool_size: usize = 8,
        /// The longest any one store operation may take, from waiting for a pooled
        /// connection through connecting to the statement itself (default 5 s). A webhook
        /// that can't be stored within it is answered 503, so its sender tries again.
        pub timeout: Duration = Duration::from_secs(5),
    }
    rows {
        url: restart, under Stores,
            env: "RUNWAY_PROXY_DATABASE_URL",
            flag: "database-url",
            doc: "PostgreSQL that keeps the outbox and idempotency records, shared by every replica that names it (none: SQLite in data_dir).",
            parse: parse::service_url, show: show::service_url;
        pool_size: restart, under Stores,
            env: "RUNWAY_PROXY_DATABASE_POOL_SIZE",
            flag: "database-pool-size",
            doc: "Most connections to that PostgreSQL this process opens.",
            parse: parse::count, show: show::plain;
        timeout: restart, under Stores,
            env: "RUNWAY_PROXY_DATABASE_TIMEOUT",
            flag: "database-timeout",
            doc: "The longest one PostgreSQL operation may take (a webhook not stored by then is answered 503).",
            parse: parse::positive_duration, show: show::duration;
    }
}

impl DatabaseSettings {
    /// Settings for the database at `url`, with the default pool.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseSettings {
            url: Some(ServiceUrl::new(url)),
            ..DatabaseSettings::default()
        }
    }

    /// Check every value; the config and [`PostgresOutbox::connect`](super::PostgresOutbox::connect)
    /// both call this.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        // Writes (group commits) and claims each need a connection of their own.
        check(self.pool_size >= 2, "database.pool_size", || {
            "must be at least 2".into()
        })?;
        check(
            !self.timeout.is_zero() && self.timeout <= Duration::from_secs(300),
            "database.timeout",
            || "must be longer than zero and at most 5m".into(),
        )?;
        match &self.url {
            Some(url) => check_database_url(url),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "postgres")]
fn check_database_url(url: &ServiceUrl) -> Result<(), InvalidSetting> {
    use tokio_postgres::config::SslMode;
    // The messages never quote the URL: it may carry a password.
    let parsed = url.expose().parse::<tokio_postgres::Config>().map_err(|_| {
        InvalidSetting::new(
            "database.url",
            format!(
                "{} is not a PostgreSQL URL (postgres://user:password@host:port/database)",
                url.redacted()
            ),
        )
    })?;
    check(parsed.get_ssl_mode() != SslMode::Require, "database.url", || {
        "sslmode=require: this build speaks to PostgreSQL without TLS; reach it over a private \
         network or a local TLS-terminating proxy, and drop sslmode=require"
            .into()
    })
}

#[cfg(not(feature = "postgres"))]
fn check_database_url(_: &ServiceUrl) -> Result<(), InvalidSetting> {
    check(false, "database.url", || {
        "this build has no PostgreSQL support (build with the `postgres` feature)".into()
    })
}
