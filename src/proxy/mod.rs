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
use tokio::sync::Notify;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

pub(crate) use forward::tls_client;
pub use forward::{ClientAddr, Forward, HttpsClient, UpstreamError, UpstreamLatency, https_client};

use crate::body::{self, Body, BoxError};
use crate::callback::{CallbackRewriter, Keyring};
use crate::config::Config;
use crate::envelope;
use crate::layer::{Runway, RunwayLayer};
use crate::metrics::{GaugeGuard, Metrics};
use crate::relay::{
    DeliveryWorkers, Outbox, RelayAdmin, RelaySettings, SqliteOutbox, WebhookReceiver, WebhookSigner,
};
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
    relay: Option<RelayAdmin>,
}

impl<S> Sidecar<S> {
    /// Wrap the forwarding stack `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>, readiness: Readiness) -> Self {
        Sidecar {
            inner,
            metrics,
            readiness,
            relay: None,
        }
    }

    /// Answer the relay's admin paths (`/-/deliveries`) too.
    pub fn relay_admin(mut self, relay: RelayAdmin) -> Self {
        self.relay = Some(relay);
        self
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
        if let (Some(relay), true) = (&self.relay, request.uri().path().starts_with("/-/deliveries")) {
            let relay = relay.clone();
            let future = async move {
                let (method, path, query) = (request.method(), request.uri().path(), request.uri().query());
                crate::relay::admin(&relay, method, path, query)
                    .await
                    .unwrap_or_else(|| {
                        envelope::error_response(StatusCode::NOT_FOUND, "not an admin path of runway-proxy")
                    })
            };
            return ResponseFuture {
                kind: Kind::Admin {
                    future: Box::pin(future),
                },
            };
        }
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
            uri: request.uri().clone(),
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
    /// The URI as received (a cheap clone; only its path is ever logged).
    uri: http::Uri,
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
            path = self.uri.path(),
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
        Admin { future: Pin<Box<dyn Future<Output = Response<Body>> + Send>> },
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
            KindProj::Admin { future } => future.as_mut().poll(cx).map(Ok),
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

/// The sidecar bound to its listeners, ready to run: the proxy listener (forwarding and
/// admin paths), the webhook listener, and the relay's outbox and delivery workers.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    webhook_listener: TcpListener,
    service: Sidecar<Runway<Forward>>,
    receiver: WebhookReceiver,
    relay: RelayParts,
    readiness: Readiness,
    grace: Duration,
}

#[derive(Debug)]
struct RelayParts {
    outbox: Arc<SqliteOutbox>,
    signer: WebhookSigner,
    settings: RelaySettings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// Build everything `serve` runs from `config`, and bind both listeners.
    pub async fn bind(config: &Config) -> Result<Proxy, BoxError> {
        let metrics = Metrics::new();
        create_private_dir(&config.data_dir).map_err(|e| {
            format!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
        let webhook_secret = match &config.webhook_secret {
            Some(secret) => secret.expose().to_owned(),
            None => secret_file(
                &config.data_dir.join("webhook-secret"),
                "webhook signing secret",
                "subscribers verify with it, replicas sign with it",
                WebhookSigner::generate_secret,
            )?,
        };
        let signer = WebhookSigner::from_secret(&webhook_secret)?;
        let token_keys = match &config.callback.token_keys {
            Some(keys) => keys.expose().to_owned(),
            None => secret_file(
                &config.data_dir.join("callback-token-keys"),
                "callback token key",
                "every replica needs the same one",
                || format!("1:{}", crate::callback::random_secret()),
            )?,
        };
        let keys = Arc::new(Keyring::parse(&token_keys)?);
        let outbox = Arc::new(SqliteOutbox::open(&config.data_dir.join("outbox.sqlite3"))?);

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let webhook_listener = TcpListener::bind(config.webhook_listen)
            .await
            .map_err(|e| format!("cannot listen for webhooks on {}: {e}", config.webhook_listen))?;
        let public_url = match &config.public_url {
            Some(url) => url.clone(),
            None => {
                let addr = webhook_listener.local_addr()?;
                if addr.ip().is_unspecified() {
                    tracing::warn!(%addr, "webhook listener on an unspecified address: set --public-url to the URL the upstream can reach");
                }
                format!("http://{addr}")
            }
        };

        let forward = Forward::new(&config.upstream, config.connect_timeout, config.request_timeout)?
            .metrics(Arc::clone(&metrics));
        // Exactly the layer an embedding application uses.
        let rewrite = CallbackRewriter::new(&public_url, Arc::clone(&keys))
            .policy(config.callback.policy.clone())
            .body_limit(config.callback.body_limit);
        let stack = RunwayLayer::new()
            .retry(config.retry.clone())
            .rate_limit(config.limit.clone())
            .metrics(Arc::clone(&metrics))
            .callback_rewriter(rewrite)
            .layer(forward);

        let wake = Arc::new(Notify::new());
        let outbox_dyn: Arc<dyn Outbox> = outbox.clone();
        let receiver = WebhookReceiver::new(
            keys,
            Arc::clone(&outbox_dyn),
            Arc::clone(&wake),
            config.callback.body_limit,
            Some(Arc::clone(&metrics)),
        );
        let readiness = Readiness::default();
        let service = Sidecar::new(stack, Arc::clone(&metrics), readiness.clone()).relay_admin(RelayAdmin {
            outbox: outbox_dyn,
            wake: Arc::clone(&wake),
        });
        let mut delivery = config.delivery.clone();
        delivery.policy = config.callback.policy.clone();
        tracing::info!(public_url = %public_url, outbox = %outbox.path().display(), "webhook relay ready");
        Ok(Proxy {
            listener,
            webhook_listener,
            service,
            receiver,
            relay: RelayParts {
                outbox,
                signer,
                settings: delivery,
                wake,
                metrics,
            },
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

    /// The address the webhook listener listens on.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serve until `shutdown` completes, then drain in-flight requests for up to the
    /// configured grace period, and let the delivery workers finish or hand back what
    /// they hold.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let relay = self.relay;
        let workers = match DeliveryWorkers::start(
            relay.outbox.clone(),
            relay.signer,
            relay.settings,
            relay.wake,
            Some(relay.metrics),
        ) {
            Ok(workers) => Some(workers),
            Err(err) => {
                tracing::error!(error = %err, "cannot start the delivery workers; webhooks are stored but not relayed");
                None
            }
        };
        self.readiness.set(true);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let proxy = crate::server::serve(self.listener, self.service, signal(stopped.clone()), self.grace);
        let hooks = crate::server::serve(self.webhook_listener, self.receiver, signal(stopped), self.grace);
        let readiness = self.readiness.clone();
        let trigger = async move {
            shutdown.await;
            readiness.set(false);
            let _ = stop.send(true);
        };
        tokio::join!(proxy, hooks, trigger);
        if let Some(workers) = workers {
            workers.shutdown(self.grace).await;
        }
    }
}

/// Create the data directory readable by its owner only: it holds secrets and the
/// webhooks' payloads.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Read a secret from `path`, or generate one and store it there (readable by the owner
/// only). The secret itself is never logged, only where it is.
fn secret_file(
    path: &std::path::Path,
    what: &str,
    who_needs_it: &str,
    generate: impl FnOnce() -> String,
) -> Result<String, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot read the {what} at {}: {err}", path.display()).into());
        }
        Err(_) => {}
    }
    let secret = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot store the {what} at {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "generated a {what} (keep it: {who_needs_it})");
    Ok(secret)
}
