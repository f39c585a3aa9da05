//! The admin paths under `/-/`, answered by the sidecar itself and never forwarded: one
//! router for health, readiness, metrics and the relay's deliveries, and who may use them.

use http::{HeaderValue, Method, Response, StatusCode, Uri, header};
use ring::digest;

use super::query::percent_decoded;
use super::{AdminState, NotReady};
use crate::body::{self, Body};
use crate::callback::constant_time_eq;
use crate::envelope;
use crate::guard::TaskGuardLayer;
use crate::settings::Live;
use crate::tasks::{TaskStore, UsageReport};

/// Who may use the admin paths. `/-/healthz` and `/-/readyz` answer everyone (probes
/// carry no credentials).
///
/// - With a token, every other admin path requires `Authorization: Bearer <token>`
///   (compared in constant time), and `/-/deliveries?reveal=1` shows subscriber URLs
///   whole.
/// - Without one, `/-/metrics` answers everyone, and `/-/deliveries` (which lists
///   subscriber URLs and can replay webhooks) answers only on a loopback listener.
#[derive(Clone)]
pub struct AdminAccess {
    /// SHA-256 of the token: compared digest to digest, so the comparison's time says
    /// nothing about the token's length either. Clones share it, and see
    /// [`set_token`](AdminAccess::set_token).
    token: Live<Option<digest::Digest>>,
    loopback: bool,
}

impl Default for AdminAccess {
    fn default() -> Self {
        AdminAccess {
            token: Live::new(None),
            loopback: false,
        }
    }
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess")
            .field("token", &self.token.get().as_ref().map(|_| ".."))
            .field("loopback", &self.loopback)
            .finish()
    }
}

fn token_digest(token: Option<&str>) -> Option<digest::Digest> {
    token.map(|t| digest::digest(&digest::SHA256, t.as_bytes()))
}

impl AdminAccess {
    /// Access for a listener bound to `listen`, with `token` if one is set.
    pub fn new(token: Option<&str>, listen: std::net::SocketAddr) -> Self {
        AdminAccess {
            token: Live::new(token_digest(token)),
            loopback: listen.ip().is_loopback(),
        }
    }

    /// Require `token` (or none) from now on, on every clone of this value.
    pub fn set_token(&self, token: Option<&str>) {
        self.token.set(token_digest(token));
    }

    /// Whether the relay's admin paths are refused for want of a token (a listener that
    /// is not loopback, and no token): worth a warning at start.
    pub fn relay_locked(&self) -> bool {
        self.token.get().is_none() && !self.loopback
    }

    /// What `authorization` may do.
    fn grant(&self, authorization: Option<&HeaderValue>) -> Grant {
        let token = self.token.get();
        let Some(expected) = token.as_ref() else {
            return Grant::NoToken;
        };
        let presented = authorization
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .map(|token| digest::digest(&digest::SHA256, token));
        match presented {
            Some(presented) if constant_time_eq(presented.as_ref(), expected.as_ref()) => Grant::Admin,
            _ => Grant::Refused,
        }
    }
}

/// What a request to an admin path may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    /// The token is set and was presented.
    Admin,
    /// The token is set and was not presented (or was wrong).
    Refused,
    /// No token is set.
    NoToken,
}

/// What an admin path serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    /// `/-/healthz`, `/-/readyz`: open to anyone, token or not.
    Probe,
    Tasks,
    /// `/-/tasks/{id}`.
    Task,
    Usage,
    /// `/-/budgets`: each key's use of its budgets (the task guard answers).
    Budgets,
    Reload,
    /// `/-/deliveries` and everything under it (the relay answers those).
    Deliveries,
    Metrics,
    /// `/-/console` and its assets: open to anyone, they hold no data.
    Console,
    /// `/-/console/samples`: the console's charts.
    Samples,
}

/// One admin path: what it serves, and why it needs an admin token on a listener that
/// is not loopback (`None`: it does not).
struct Route {
    path: &'static str,
    /// The path and everything under it.
    prefix: bool,
    page: Page,
    sensitive: Option<&'static str>,
}

/// Every admin path.
const ROUTES: &[Route] = &[
    Route {
        path: "/-/healthz",
        prefix: false,
        page: Page::Probe,
        sensitive: None,
    },
    Route {
        path: "/-/readyz",
        prefix: false,
        page: Page::Probe,
        sensitive: None,
    },
    Route {
        path: "/-/tasks",
        prefix: false,
        page: Page::Tasks,
        sensitive: Some("reports the tasks the proxy watches and what each key spent"),
    },
    Route {
        path: "/-/tasks/",
        prefix: true,
        page: Page::Task,
        sensitive: Some("reports the tasks the proxy watches and links to their archived outputs"),
    },
    Route {
        path: "/-/usage",
        prefix: false,
        page: Page::Usage,
        sensitive: Some("reports the tasks the proxy watches and what each key spent"),
    },
    Route {
        path: "/-/budgets",
        prefix: false,
        page: Page::Budgets,
        sensitive: Some("reports what each key spent against its budgets"),
    },
    Route {
        path: super::console::SAMPLES_PATH,
        prefix: false,
        page: Page::Samples,
        sensitive: Some("charts the proxy's traffic for its console"),
    },
    Route {
        path: super::console::CONSOLE_PATH,
        prefix: true,
        page: Page::Console,
        sensitive: None,
    },
    Route {
        path: "/-/reload",
        prefix: false,
        page: Page::Reload,
        sensitive: Some("changes the proxy's settings"),
    },
    Route {
        path: "/-/deliveries",
        prefix: true,
        page: Page::Deliveries,
        sensitive: Some("lists subscriber URLs and replays webhooks"),
    },
    Route {
        path: "/-/subscribers",
        prefix: true,
        page: Page::Deliveries,
        sensitive: Some("lists subscriber URLs and pauses or resumes their deliveries"),
    },
    Route {
        path: "/-/metrics",
        prefix: false,
        page: Page::Metrics,
        sensitive: None,
    },
];

fn route_of(path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|route| path == route.path || (route.prefix && path.starts_with(route.path)))
}

/// Answer an admin path: find its route, check access once, then serve its page.
pub(crate) async fn answer(
    state: &AdminState,
    method: &Method,
    uri: &Uri,
    authorization: Option<&HeaderValue>,
) -> Response<Body> {
    let path = uri.path();
    let route = route_of(path);
    match route {
        Some(Route {
            page: Page::Probe, ..
        }) => return probe(state, method, path),
        // The console's page asks for the token itself (a browser's navigation carries none).
        Some(Route {
            page: Page::Console, ..
        }) => return super::console::asset(method, path),
        _ => {}
    }
    let grant = state.access.grant(authorization);
    if let Some(refusal) = refusal(state, route, grant) {
        return refusal;
    }
    let Some(route) = route else {
        return get_only(method, path).unwrap_or_else(|| not_found(path));
    };
    match route.page {
        Page::Probe => probe(state, method, path),
        Page::Console => super::console::asset(method, path),
        Page::Samples => match &state.console {
            Some(console) => console.samples_page(method),
            None => not_found(path),
        },
        Page::Tasks | Page::Usage => match &state.tasks {
            Some(store) if method == Method::GET || method == Method::HEAD => {
                if route.page == Page::Tasks {
                    super::task_pages::tasks(store.as_ref(), state.archive.as_deref(), uri.query()).await
                } else {
                    usage(store.as_ref(), uri.query()).await
                }
            }
            Some(_) => envelope::error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{path} only answers GET"),
            ),
            None => not_found(path),
        },
        Page::Task => match (&state.tasks, path.strip_prefix("/-/tasks/")) {
            (Some(store), Some(id)) if !id.is_empty() && !id.contains('/') => {
                let relay = state.relay.as_ref();
                super::task_pages::task(store.as_ref(), relay, state.archive.as_deref(), method, id).await
            }
            _ => not_found(path),
        },
        Page::Budgets => match &state.budgets {
            Some(guard) => match get_only(method, path) {
                Some(refused) => refused,
                None => budgets(guard).await,
            },
            None => not_found(path),
        },
        Page::Reload => reload(state, method, path).await,
        Page::Deliveries => match &state.relay {
            Some(relay) => relay
                .handle(method, path, uri.query(), grant == Grant::Admin)
                .await
                .unwrap_or_else(|| not_found(path)),
            None => not_found(path),
        },
        Page::Metrics => get_only(method, path).unwrap_or_else(|| {
            let sets: Vec<_> = state.metric_sets.iter().map(|s| s.as_ref()).collect();
            let mut response = Response::new(body::full(crate::metrics::render_all(&sets)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }),
    }
}

/// The one access check: a wrong token is refused everywhere (401); without a token
/// configured, a sensitive page is served on a loopback listener only (403).
fn refusal(state: &AdminState, route: Option<&Route>, grant: Grant) -> Option<Response<Body>> {
    if grant == Grant::Refused {
        let mut response = envelope::error_response(
            StatusCode::UNAUTHORIZED,
            "runway-proxy admin paths need Authorization: Bearer <admin token> (--admin-token)",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"runway-proxy admin\""),
        );
        return Some(response);
    }
    if let Some(Route {
        path,
        sensitive: Some(why),
        ..
    }) = route
        && grant == Grant::NoToken
        && !state.access.loopback
    {
        return Some(envelope::error_response(
            StatusCode::FORBIDDEN,
            &format!(
                "{path} {why}, so on a listener that is not loopback it needs an admin token: set \
                 --admin-token (RUNWAY_PROXY_ADMIN_TOKEN) and send Authorization: Bearer <token>"
            ),
        ));
    }
    None
}

/// The 405 for a method other than GET (or HEAD) on a read-only admin path.
fn get_only(method: &Method, path: &str) -> Option<Response<Body>> {
    (method != Method::GET && method != Method::HEAD).then(|| {
        envelope::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} is an admin path of runway-proxy and only answers GET"),
        )
    })
}

/// `POST /-/reload`: read the configuration again and answer what changed.
async fn reload(state: &AdminState, method: &Method, path: &str) -> Response<Body> {
    let Some(reload) = &state.reload else {
        return not_found(path);
    };
    if method != Method::POST {
        return envelope::error_response(StatusCode::METHOD_NOT_ALLOWED, "/-/reload only answers POST");
    }
    match reload.reload().await {
        Ok(report) => {
            let mut response = Response::new(body::full(report.to_string()));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(why) => envelope::error_response(
            StatusCode::BAD_REQUEST,
            &format!("the new configuration was refused, and the one in force stays: {why}"),
        ),
    }
}

/// The window `/-/usage` reports on when the query names none: the last 24 hours.
const USAGE_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// `GET /-/usage?key=LABEL|HASH&from=TIME&to=TIME`: the ledger's totals of tasks submitted
/// in `[from, to)` (default: the last 24 hours), in all, per key and per model. Times are
/// RFC 3339, a date, or Unix seconds ([`parse_time`](crate::duration::parse_time)).
async fn usage(store: &dyn TaskStore, query: Option<&str>) -> Response<Body> {
    let bad = |msg: &str| envelope::error_response(StatusCode::BAD_REQUEST, msg);
    let (mut key, mut from, mut to) = (None, None, None);
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(value) = percent_decoded(raw) else {
            return bad(&format!("{name}: the value is not percent-encoded UTF-8"));
        };
        let not_a_time = || {
            bad(&format!(
                "{name} {value:?} is not a time: write RFC 3339 (2026-12-02T18:00:00Z), a date (2026-12-02) \
                 or Unix seconds"
            ))
        };
        match name {
            "key" if !value.is_empty() => key = Some(value),
            "key" => return bad("key must name a key label or hash"),
            "from" => match crate::duration::parse_time(&value) {
                Some(at) => from = Some(at),
                None => return not_a_time(),
            },
            "to" => match crate::duration::parse_time(&value) {
                Some(at) => to = Some(at),
                None => return not_a_time(),
            },
            _ => {
                return bad(&format!(
                    "unknown query parameter {name:?}: /-/usage takes key, from and to"
                ));
            }
        }
    }
    let to = to.unwrap_or_else(crate::duration::unix_millis);
    let from = from.unwrap_or(to.saturating_sub(USAGE_WINDOW_MS));
    if from >= to {
        return bad("from must be before to");
    }
    match store.usage(key.clone(), from, to).await {
        Ok(rows) => {
            let report = serde_json::json!({
                "key": key,
                "from": crate::duration::rfc3339(from),
                "to": crate::duration::rfc3339(to),
                "usage": UsageReport::of(&rows),
            });
            envelope::json_response(StatusCode::OK, report.to_string())
        }
        Err(err) => envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

/// `GET /-/budgets`: each key's use of its per-key budgets over the budget window, and
/// what frees up when ([`TaskGuardLayer::budgets`]).
async fn budgets(guard: &TaskGuardLayer) -> Response<Body> {
    match guard.budgets().await {
        Ok(report) => {
            envelope::json_response(StatusCode::OK, serde_json::to_string(&report).unwrap_or_default())
        }
        Err(err) => envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

/// The probes: no credentials, GET or HEAD.
fn probe(state: &AdminState, method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return envelope::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} is an admin path of runway-proxy and only answers GET"),
        );
    }
    match path {
        "/-/healthz" => json(StatusCode::OK, r#"{"status":"alive"}"#),
        _ => match state.readiness.why_not() {
            None => json(StatusCode::OK, r#"{"status":"ready"}"#),
            Some(NotReady::OutboxUnavailable) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"outbox unavailable"}"#,
            ),
            Some(NotReady::ShuttingDown) => {
                json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"shutting down"}"#)
            }
        },
    }
}

fn not_found(path: &str) -> Response<Body> {
    envelope::error_response(
        StatusCode::NOT_FOUND,
        &format!("{path} is not an admin path of runway-proxy (paths under /-/ are never forwarded)"),
    )
}

fn json(status: StatusCode, text: &'static str) -> Response<Body> {
    envelope::json_response(status, text)
}
