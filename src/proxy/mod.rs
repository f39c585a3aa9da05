//! The sidecar: an HTTP server that forwards every request to the upstream.
//!
//! [`Sidecar`] is the outermost service. It answers the reserved admin paths under `/-/`
//! itself (never forwarding them), counts and logs every request, and turns the inner
//! stack's errors into CometAPI-shaped error envelopes. [`Proxy`] binds a listener and
//! runs it until shutdown.
//!
//! # Example
//!
//! ```no_run
//! use runway_proxy::config::Config;
//! use runway_proxy::proxy::Proxy;
//!
//! # async fn run() -> Result<(), runway_proxy::body::BoxError> {
//! let proxy = Proxy::bind(&Config::default()).await?;
//! println!("listening on {}", proxy.local_addr());
//! proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```

mod forward;
pub mod headers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tokio::net::TcpListener;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

pub use forward::{ClientAddr, Forward, HttpsClient, UpstreamError, UpstreamLatency, https_client};

use crate::body::{self, Body, BoxError};
use crate::config::Config;
use crate::envelope;
use crate::limit::{RateLimit, RateLimitLayer};
use crate::metrics::{GaugeGuard, Metrics};
use crate::retry::{Retry, RetryLayer};
use crate::route::RouteClass;

/// Prefix of the admin paths the proxy answers itself.
pub const ADMIN_PREFIX: &str = "/-/";

/// Whether the proxy is ready to take traffic; cleared when shutdown begins.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Mark the proxy ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the proxy is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The outermost service of the sidecar: admin paths, metrics, logging, error envelopes.
#[derive(Clone, Debug)]
pub struct Sidecar<S> {
    inner: S,
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

impl<S> Sidecar<S> {
    /// Wrap the forwarding stack `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>, readiness: Readiness) -> Self {
        Sidecar {
            inner,
            metrics,
            readiness,
        }
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
            let response = admin(&request, &self.metrics, &self.readiness);
            return ResponseFuture {
                kind: Kind::Ready {
                    response: Some(response),
                },
            };
        }
        let log = RequestLog {
            class: RouteClass::of(request.method(), request.uri().path()),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
            _in_flight: self.metrics.in_flight.track(),
            metrics: Arc::clone(&self.metrics),
        };
        let future = self.inner.clone().oneshot(request);
        ResponseFuture {
            kind: Kind::Forward { future, log },
        }
    }
}

/// What is needed to count and log a request once its response is known.
struct RequestLog {
    class: RouteClass,
    method: Method,
    path: String,
    started: Instant,
    // Held for the life of the request, however it ends (even if the client goes away).
    _in_flight: GaugeGuard,
    metrics: Arc<Metrics>,
}

impl RequestLog {
    fn finish(&self, response: &Response<Body>) {
        let status = response.status().as_u16();
        self.metrics.requests.inc(&(self.class, status));
        let upstream_ms = response
            .extensions()
            .get::<UpstreamLatency>()
            .map(|l| millis(l.0));
        // Path only: a query string may carry a secret a client put there.
        tracing::info!(
            method = %self.method,
            path = %self.path,
            route_class = self.class.as_str(),
            status,
            upstream_ms,
            total_ms = millis(self.started.elapsed()),
            "request"
        );
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
        Ready { response: Option<Response<Body>> },
        Forward { #[pin] future: Oneshot<S, Request<Body>>, log: RequestLog },
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
            KindProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Forward { future, log } => {
                let response = match ready!(future.poll(cx)) {
                    Ok(response) => response,
                    Err(err) => error_response(err.into()),
                };
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

fn admin(request: &Request<Body>, metrics: &Metrics, readiness: &Readiness) -> Response<Body> {
    let path = request.uri().path();
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return envelope::error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} is an admin path of runway-proxy and only answers GET"),
        );
    }
    let json = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(body::full(text));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, envelope::JSON);
        response
    };
    match path {
        "/-/healthz" => json(StatusCode::OK, r#"{"status":"alive"}"#),
        "/-/readyz" if readiness.get() => json(StatusCode::OK, r#"{"status":"ready"}"#),
        "/-/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"shutting down"}"#),
        "/-/metrics" => {
            let mut response = Response::new(body::full(metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => envelope::error_response(
            StatusCode::NOT_FOUND,
            &format!("{path} is not an admin path of runway-proxy (paths under /-/ are never forwarded)"),
        ),
    }
}

/// The sidecar bound to its listener, ready to run.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    service: Sidecar<Retry<RateLimit<Forward>>>,
    readiness: Readiness,
    grace: Duration,
}

impl Proxy {
    /// Build the forwarding stack from `config` and bind `config.listen`.
    pub async fn bind(config: &Config) -> Result<Proxy, BoxError> {
        let metrics = Metrics::new();
        let forward = Forward::new(&config.upstream, config.connect_timeout, config.request_timeout)?
            .metrics(Arc::clone(&metrics));
        let retry = RetryLayer::from_settings(config.retry.clone()).metrics(Arc::clone(&metrics));
        // Inside the retry layer, so that every attempt takes its own permit.
        let limit = RateLimitLayer::from_settings(config.limit.clone()).metrics(Arc::clone(&metrics));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let readiness = Readiness::default();
        Ok(Proxy {
            listener,
            service: Sidecar::new(retry.layer(limit.layer(forward)), metrics, readiness.clone()),
            readiness,
            grace: config.shutdown_grace,
        })
    }

    /// The address the proxy listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serve until `shutdown` completes, then drain in-flight requests for up to the
    /// configured grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.readiness.set(true);
        let readiness = self.readiness.clone();
        let shutdown = async move {
            shutdown.await;
            readiness.set(false);
        };
        crate::server::serve(self.listener, self.service, shutdown, self.grace).await;
    }
}
