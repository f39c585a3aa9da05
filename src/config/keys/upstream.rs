//! The settings listed under "Upstream" in `serve --help` and `config check`.

use super::super::values::*;
use super::*;
use crate::duration;

/// Under "Upstream".
pub(super) const KEYS: &[Key] = &[
    key! {
        upstream, restart,
        env: "RUNWAY_PROXY_UPSTREAM",
        flag: "upstream",
        doc: "Base URL requests are forwarded to, path and query unchanged.",
        set: |c, raw| {
            c.upstream = base_url(raw)?;
            Ok(())
        },
        show: |c| c.upstream.to_string().trim_end_matches('/').to_owned(),
    },
    key! {
        connect_timeout, restart,
        env: "RUNWAY_PROXY_CONNECT_TIMEOUT",
        flag: "connect-timeout",
        doc: "Time allowed to open a TCP and TLS connection to the upstream.",
        set: |c, raw| {
            c.connect_timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.connect_timeout),
    },
    key! {
        request_timeout, restart,
        env: "RUNWAY_PROXY_REQUEST_TIMEOUT",
        flag: "request-timeout",
        doc: "Time allowed for the upstream's response headers once the request is sent.",
        set: |c, raw| {
            c.request_timeout = positive_duration(raw)?;
            Ok(())
        },
        show: |c| duration::format(c.request_timeout),
    },
];
