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
        parse: base_url,
        show: |c| c.upstream.to_string().trim_end_matches('/').to_owned(),
    },
    key! {
        connect_timeout, restart,
        env: "RUNWAY_PROXY_CONNECT_TIMEOUT",
        flag: "connect-timeout",
        doc: "Time allowed to open a TCP and TLS connection to the upstream.",
        parse: positive_duration,
        show: |c| duration::format(c.connect_timeout),
    },
    key! {
        request_timeout, restart,
        env: "RUNWAY_PROXY_REQUEST_TIMEOUT",
        flag: "request-timeout",
        doc: "Time allowed for the upstream's response headers once the request is sent.",
        parse: positive_duration,
        show: |c| duration::format(c.request_timeout),
    },
];
