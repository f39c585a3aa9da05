//! The settings listed under "Listeners" in `serve --help` and `config check`.

use super::super::values::*;
use super::*;
use crate::duration;

/// Under "Listeners".
pub(super) const KEYS: &[Key] = &[
    key! {
        listen, restart,
        env: "RUNWAY_PROXY_LISTEN",
        flag: "listen",
        doc: "Address the proxy listens on for your application's calls.",
        set: |c, raw| {
            c.listen = socket_addr(raw, "127.0.0.1:8080")?;
            Ok(())
        },
        show: |c| c.listen.to_string(),
    },
    key! {
        threads, restart,
        env: "RUNWAY_PROXY_THREADS",
        flag: "threads",
        doc: "Serving threads, each with its own listener, runtime and upstream pool (auto: one per core).",
        set: |c, raw| {
            c.threads = match raw.trim() {
                "auto" | "0" => 0,
                n => count(n)? as usize,
            };
            Ok(())
        },
        show: |c| match c.threads {
            0 => "auto".to_owned(),
            n => n.to_string(),
        },
    },
    key! {
        shutdown_grace, restart,
        env: "RUNWAY_PROXY_SHUTDOWN_GRACE",
        flag: "shutdown-grace",
        doc: "On SIGINT or SIGTERM, time in-flight requests get to finish.",
        parse: duration::parse,
        show: |c| duration::format(c.shutdown_grace),
    },
    key! {
        webhook_listen, restart,
        env: "RUNWAY_PROXY_WEBHOOK_LISTEN",
        flag: "webhook-listen",
        doc: "Address of the webhook listener (in production, the public one).",
        set: |c, raw| {
            c.webhook_listen = socket_addr(raw, "127.0.0.1:8081")?;
            Ok(())
        },
        show: |c| c.webhook_listen.to_string(),
    },
    key! {
        connections.header_read_timeout, restart,
        env: "RUNWAY_PROXY_HEADER_READ_TIMEOUT",
        flag: "header-read-timeout",
        doc: "Longest a request's head may take to arrive (and an HTTP/1.1 connection may wait for its next request).",
        parse: positive_duration,
        show: |c| duration::format(c.connections.header_read_timeout),
    },
    key! {
        connections.idle_timeout, restart,
        env: "RUNWAY_PROXY_IDLE_TIMEOUT",
        flag: "idle-timeout",
        doc: "Longest a connection stays open with no request in flight.",
        parse: positive_duration,
        show: |c| duration::format(c.connections.idle_timeout),
    },
    key! {
        connections.max_connections, restart,
        env: "RUNWAY_PROXY_MAX_CONNECTIONS",
        flag: "max-connections",
        doc: "Most connections open at once on each listener; more wait to be accepted.",
        set: |c, raw| {
            c.connections.max_connections = count(raw)? as usize;
            Ok(())
        },
        show: |c| c.connections.max_connections.to_string(),
    },
];
