//! The sidecar's outermost service: admin paths, request metrics and logs, error envelopes.
//!
//! [`Sidecar`] answers the reserved admin paths under `/-/` itself ([`admin`]: never
//! forwarded), counts and logs every request, and turns the inner stack's errors into
//! CometAPI-shaped error envelopes. It knows nothing of how the stack below it was built;
//! the [`app`](crate::app) module wires it from the configuration.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use runway_proxy::sidecar::{Readiness, RequestMetrics, Sidecar};
//! use runway_proxy::RunwayLayer;
//! use tower::Layer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let forward = runway_proxy::upstream::Forward::new(
//!     &"https://api.cometapi.com".parse()?,
//!     std::time::Duration::from_secs(10),
//!     std::time::Duration::from_secs(60),
//! )?;
//! let stack = RunwayLayer::new().layer(forward);
//! let requests = Arc::new(RequestMetrics::default());
//! let sidecar = Sidecar::new(stack, Arc::clone(&requests), Readiness::default())
//!     .metric_sets(vec![requests]);
//! # let _ = sidecar;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod console;
mod metrics;
mod query;
mod task_pages;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

pub use admin::AdminAccess;
pub use console::Console;
pub use metrics::{RequestMetrics, StatusCounts};

use crate::body::{self, Body, BoxError};
use crate::envelope;
use crate::metrics::{GaugeGuard, MetricSet};
use crate::relay::{RelayAdmin, TaskArchive};
use crate::route::{self, RouteClass};
use crate::settings::setters;
use crate::tasks::TaskStore;
use crate::trace::{Span, SpanKind, Tracer};
use crate::upstream::{UpstreamError, UpstreamLatency};

/// Prefix of the admin paths the proxy answers itself.
pub const ADMIN_PREFIX: &str = "/-/";

/// Whether the proxy is ready to take traffic: it is serving (set when it starts, cleared
/// when shutdown begins) and its outbox answers. `/-/readyz` answers from it.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<AtomicU8>);

/// Not serving: not started yet, or shutting down.
const NOT_SERVING: u8 = 1;
/// The outbox does not answer (its database is down).
const STORE_DOWN: u8 = 2;

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(AtomicU8::new(NOT_SERVING)))
    }
}

impl Readiness {
    /// Mark the proxy serving (or not).
    pub fn set(&self, ready: bool) {
        self.flag(NOT_SERVING, !ready);
    }

    /// Record whether the outbox answers: a proxy whose webhooks can't be stored is not
    /// ready, so a load balancer sends them to a replica whose can.
    pub fn set_store_available(&self, available: bool) {
        self.flag(STORE_DOWN, !available);
    }

    fn flag(&self, bit: u8, raised: bool) {
        if raised {
            self.0.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.0.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Whether the proxy is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }

    /// Why it is not ready, if it is not.
    pub fn why_not(&self) -> Option<NotReady> {
        let flags = self.0.load(Ordering::Acquire);
        if flags & NOT_SERVING != 0 {
            Some(NotReady::ShuttingDown)
        } else if flags & STORE_DOWN != 0 {
            Some(NotReady::OutboxUnavailable)
        } else {
            None
        }
    }
}

/// Why the proxy is not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// Not started yet, or shutting down.
    ShuttingDown,
    /// The outbox does not answer.
    OutboxUnavailable,
}

/// What the admin paths answer from: readiness, the metric sets to render, the relay.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    readiness: Readiness,
    access: AdminAccess,
    metric_sets: Arc<[Arc<dyn MetricSet>]>,
    relay: Option<RelayAdmin>,
    tasks: Option<Arc<dyn TaskStore>>,
    archive: Option<Arc<dyn TaskArchive>>,
    reload: Option<Arc<dyn ConfigReload>>,
    budgets: Option<crate::guard::TaskGuardLayer>,
    console: Option<Console>,
}

/// What `POST /-/reload` calls: read the configuration again and put it in force.
/// `Ok` carries the report to answer with (a JSON object), `Err` why the new
/// configuration was refused (the old one stays in force).
pub trait ConfigReload: Send + Sync + std::fmt::Debug + 'static {
    /// Reload now.
    fn reload(&self)
    -> futures_util::future::BoxFuture<'_, Result<serde_json::Value, crate::body::BoxError>>;
}

/// The outermost service of the sidecar: admin paths, metrics, logging, error envelopes.
#[derive(Clone, Debug)]
pub struct Sidecar<S> {
    inner: S,
    requests: Arc<RequestMetrics>,
    admin: AdminState,
    access_log: bool,
    tracer: Tracer,
}

impl<S> Sidecar<S> {
    /// Wrap the forwarding stack `inner`, counting requests in `requests`.
    pub fn new(inner: S, requests: Arc<RequestMetrics>, readiness: Readiness) -> Self {
        Sidecar {
            inner,
            admin: AdminState {
                readiness,
                access: AdminAccess::default(),
                metric_sets: Arc::new([Arc::clone(&requests) as Arc<dyn MetricSet>]),
                relay: None,
                tasks: None,
                archive: None,
                reload: None,
                budgets: None,
                console: None,
            },
            requests,
            access_log: false,
            tracer: Tracer::off(),
        }
    }

    setters! {
        /// Record a span for each proxied request (a child of its `traceparent`, if it came
        /// with one), and put its context in the request's extensions for the layers below.
        tracer(tracer: Tracer) => tracer;
        /// Log one line per request at info (default: at debug, where it costs nothing
        /// unless `RUST_LOG` asks for it).
        access_log(on: bool) => access_log;
        /// Render these metric sets, in this order, at `/-/metrics`.
        metric_sets(sets: Vec<Arc<dyn MetricSet>>) => admin.metric_sets = sets.into();
        /// Who may use the admin paths (default: no token, and a listener taken for one that
        /// is not loopback, so `/-/deliveries` is refused).
        admin_access(access: AdminAccess) => admin.access;
        /// Answer the relay's admin paths (`/-/deliveries`) too.
        relay_admin(relay: RelayAdmin) => admin.relay = Some(relay);
        /// Answer `POST /-/reload` with `reload`.
        config_reload(reload: Arc<dyn ConfigReload>) => admin.reload = Some(reload);
        /// Answer `/-/tasks` (the watch list) from `store` too.
        task_admin(store: Arc<dyn TaskStore>) => admin.tasks = Some(store);
        /// Show each task's archive at `/-/tasks/{id}`.
        archive_admin(archive: Arc<dyn TaskArchive>) => admin.archive = Some(archive);
        /// Answer `/-/budgets` from `guard`.
        budget_admin(guard: crate::guard::TaskGuardLayer) => admin.budgets = Some(guard);
        /// Serve the web console at `/-/console`, its charts from `console`'s samples.
        console(console: Console) => admin.console = Some(console);
    }
}

impl<S> Service<Request<Body>> for Sidecar<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of `inner` is awaited per request (on a clone, by `Oneshot`), so one
        // limited route never blocks the admin paths or the rest of the connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.uri().path().starts_with(ADMIN_PREFIX) {
            let admin = self.admin.clone();
            let (method, uri) = (request.method().clone(), request.uri().clone());
            let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
            return ResponseFuture {
                kind: Kind::Admin {
                    future: Box::pin(async move {
                        admin::answer(&admin, &method, &uri, authorization.as_ref()).await
                    }),
                },
            };
        }
        // Before the class is read from the path: a spelling of a CometAPI route that an
        // upstream might normalise must not slip through as "other".
        if let Err(problem) = route::check_path(request.method(), request.uri().path()) {
            let path = request.uri().path();
            let msg = format!(
                "runway-proxy refuses {path:?}: {problem}; send the route's canonical path \
                 (as CometAPI documents it)"
            );
            tracing::info!(method = %request.method(), path, reason = %problem, "request refused: path not canonical");
            let response = envelope::error_response_for(path, StatusCode::BAD_REQUEST, &msg);
            return ResponseFuture {
                kind: Kind::Refused {
                    response: Some(response),
                    log: self.log(&request),
                },
            };
        }
        let mut request = request;
        let mut log = self.log(&request);
        if self.tracer.is_on() {
            log.span = self.request_span(&mut request, log.class);
        }
        let future = self.inner.clone().oneshot(request);
        ResponseFuture {
            kind: Kind::Forward { future, log },
        }
    }
}

impl<S> Sidecar<S> {
    /// The request's span, its context left in the request for the layers below.
    fn request_span(&self, request: &mut Request<Body>, class: RouteClass) -> Span {
        let parent = crate::trace::parent_of(request.extensions(), request.headers());
        let name = match class {
            RouteClass::Submission => "proxy submission",
            RouteClass::Read => "proxy read",
            RouteClass::Other => "proxy other",
        };
        let mut span = self.tracer.span(name, SpanKind::Server, parent);
        // Nothing to copy for a span the sampler left out.
        if span.is_recording() {
            span.set_str("http.request.method", request.method().as_str().to_owned());
            // The path only: a query may carry a secret.
            span.set_str("url.path", request.uri().path().to_owned());
            span.set_str("runway.route_class", class.as_str());
        }
        if let Some(context) = span.context() {
            request.extensions_mut().insert(context);
        }
        span
    }

    fn log(&self, request: &Request<Body>) -> RequestLog {
        let class = RouteClass::of(request.method(), request.uri().path());
        if class == RouteClass::Other
            && let Some(endpoint) =
                crate::route::unknown_official_post(request.method(), request.uri().path())
        {
            self.requests.unknown_endpoint(endpoint);
        }
        RequestLog {
            class,
            method: request.method().clone(),
            uri: request.uri().clone(),
            started: Instant::now(),
            _in_flight: self.requests.in_flight.track(),
            metrics: Arc::clone(&self.requests),
            access_log: self.access_log,
            span: Span::default(),
        }
    }
}

/// What is needed to count and log a request once its response is known.
struct RequestLog {
    class: RouteClass,
    method: Method,
    /// The URI as received (a cheap clone; only its path is ever logged).
    uri: http::Uri,
    started: Instant,
    // Held for the life of the request, however it ends (even if the client goes away).
    _in_flight: GaugeGuard,
    metrics: Arc<RequestMetrics>,
    access_log: bool,
    /// Ended with the response's head (empty when traces are off).
    span: Span,
}

impl RequestLog {
    fn finish(&mut self, response: &Response<Body>) {
        let status = response.status().as_u16();
        if self.span.is_recording() {
            let mut span = std::mem::take(&mut self.span);
            span.set_int("http.response.status_code", i64::from(status));
            if let Some(outcome) = response.extensions().get::<crate::retry::RetryOutcome>() {
                span.set_str("runway.retry.outcome", outcome.as_str());
            }
            if response.status().is_server_error() || response.status() == StatusCode::TOO_MANY_REQUESTS {
                span.set_error(format!("answered {status}"));
            }
        }
        self.metrics.requests.inc(&(self.class, status));
        let upstream_ms = response
            .extensions()
            .get::<UpstreamLatency>()
            .map(|l| millis(l.0));
        // Path only: a query string may carry a secret a client put there. Two call
        // sites, because a tracing event's level is fixed where it is written.
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    method = %self.method,
                    path = self.uri.path(),
                    route_class = self.class.as_str(),
                    status,
                    upstream_ms,
                    total_ms = millis(self.started.elapsed()),
                    "request"
                )
            };
        }
        if self.access_log {
            line!(info);
        } else {
            line!(debug);
        }
    }
}

/// Milliseconds with microsecond precision, for log fields.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1e3
}

pin_project! {
    /// Response future of [`Sidecar`].
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        kind: Kind<S>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S>
    where
        S: Service<Request<Body>>,
    {
        Admin { future: Pin<Box<dyn Future<Output = Response<Body>> + Send>> },
        Forward { #[pin] future: Oneshot<S, Request<Body>>, log: RequestLog },
        Refused { response: Option<Response<Body>>, log: RequestLog },
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admin { future } => future.as_mut().poll(cx).map(Ok),
            KindProj::Forward { future, log } => {
                let response = match ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(err) => error_response(err.into()),
                };
                log.finish(&response);
                Poll::Ready(Ok(response))
            }
            KindProj::Refused { response, log } => {
                let response = response.take().unwrap_or_else(|| {
                    envelope::error_response(StatusCode::BAD_REQUEST, "polled after completion")
                });
                log.finish(&response);
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// Turn an error from the forwarding stack into the envelope a client sees.
pub fn error_response(err: BoxError) -> Response<Body> {
    if let Some(upstream) = err.downcast_ref::<UpstreamError>() {
        tracing::warn!(error = %upstream, "upstream call failed");
        return upstream.to_response();
    }
    let msg = format!("runway-proxy failed: {}", body::error_chain(err.as_ref()));
    tracing::error!(error = %msg, "request failed inside the proxy");
    envelope::error_response(StatusCode::BAD_GATEWAY, &msg)
}
