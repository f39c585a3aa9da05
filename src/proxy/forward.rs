//! The innermost service: sends a request to the upstream and returns its response.
//!
//! [`Forward`] rewrites the request's URI onto the upstream base, drops hop-by-hop headers
//! both ways, appends `X-Forwarded-For`, and streams bodies through untouched. It sorts
//! its failures into the three kinds that matter to a caller deciding whether a paid
//! submission might have gone through: nothing was sent ([`UpstreamError::Connect`]),
//! something was sent and the answer is unknown ([`UpstreamError::Request`]), or no
//! answer came in time ([`UpstreamError::Timeout`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::headers;
use crate::body::{self, Body, BoxError};
use crate::duration;
use crate::envelope;
use crate::metrics::Metrics;

/// The address of the client that sent a request, put in its extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// How long the upstream took to answer with headers, put in the response's extensions.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLatency(pub Duration);

/// The hyper-util client [`Forward`] uses: pooled, HTTP/1.1 and HTTP/2 (ALPN) over rustls.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why the proxy could not get a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened: nothing was sent, so a retry is always safe.
    #[error("upstream connect failed: {}", cause(.0.as_ref()))]
    Connect(#[source] BoxError),
    /// No response headers within the request timeout: the request may have been received.
    #[error("upstream timed out after {}", duration::format(*.0))]
    Timeout(Duration),
    /// The connection failed after the request was (at least partly) written: the
    /// upstream may have received and acted on it.
    #[error("upstream request failed: {}", cause(.0.as_ref()))]
    Request(#[source] BoxError),
}

/// The chain of causes without hyper-util's generic outer message
/// ("client error (Connect)"), which says nothing the variant doesn't.
fn cause(err: &(dyn std::error::Error + 'static)) -> String {
    body::error_chain(err.source().unwrap_or(err))
}

impl UpstreamError {
    /// The HTTP status a client should see for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Connect(_) | UpstreamError::Request(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A short label for metrics: `connect`, `timeout` or `request`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Request(_) => "request",
        }
    }

    /// Whether any part of the request may have reached the upstream.
    pub fn may_have_been_sent(&self) -> bool {
        !matches!(self, UpstreamError::Connect(_))
    }

    /// The error envelope response for this failure.
    pub fn to_response(&self) -> Response<Body> {
        envelope::error_response(self.status(), &self.to_string())
    }
}

/// Where requests go: the upstream's scheme, authority and optional base path.
#[derive(Clone, Debug)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The base URL's path without its trailing `/` ("" for a bare host).
    base_path: String,
}

impl Target {
    fn new(upstream: &Uri) -> Result<Self, BoxError> {
        let scheme = upstream.scheme().cloned().ok_or("upstream URL has no scheme")?;
        let authority = upstream.authority().cloned().ok_or("upstream URL has no host")?;
        let base_path = upstream.path().trim_end_matches('/').to_owned();
        Ok(Target {
            scheme,
            authority,
            base_path,
        })
    }

    fn uri_for(&self, original: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if self.base_path.is_empty() {
            // The common case: reuse the original bytes, no formatting.
            original
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            PathAndQuery::try_from(format!("{}{}", self.base_path, path_and_query))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// Forwards requests to one upstream. Cheap to clone: clones share the connection pool.
#[derive(Clone, Debug)]
pub struct Forward {
    // One reference count per clone: the layers above clone the service per request.
    inner: Arc<ForwardInner>,
}

#[derive(Clone, Debug)]
struct ForwardInner {
    client: HttpsClient,
    target: Target,
    request_timeout: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl Forward {
    /// A forwarder to `upstream` (an `http` or `https` base URL) with its own client.
    pub fn new(
        upstream: &Uri,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, BoxError> {
        Self::with_client(https_client(connect_timeout)?, upstream, request_timeout)
    }

    /// A forwarder that sends through an existing client (sharing its pool).
    pub fn with_client(
        client: HttpsClient,
        upstream: &Uri,
        request_timeout: Duration,
    ) -> Result<Self, BoxError> {
        let target = Target::new(upstream)?;
        Ok(Forward {
            inner: Arc::new(ForwardInner {
                client,
                target,
                request_timeout,
                metrics: None,
            }),
        })
    }

    /// Record upstream latency and failures into `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        Arc::make_mut(&mut self.inner).metrics = Some(metrics);
        self
    }

    fn prepare(&self, request: &mut Request<Body>) -> Result<(), BoxError> {
        *request.uri_mut() = self.inner.target.uri_for(request.uri())?;
        // The client's protocol to us says nothing about ours to the upstream: the pool
        // picks HTTP/2 where ALPN offers it, and refuses an HTTP/2 request on an HTTP/1
        // connection, so an h2c request must not carry its version upstream.
        *request.version_mut() = http::Version::HTTP_11;
        let headers = request.headers_mut();
        headers::remove_hop_by_hop(headers);
        // The client sets `Host` (or `:authority` on HTTP/2) from the new URI.
        headers.remove(http::header::HOST);
        if let Some(ClientAddr(addr)) = request.extensions().get::<ClientAddr>().copied() {
            headers::append_forwarded_for(request.headers_mut(), addr.ip());
        }
        Ok(())
    }
}

/// Build the pooled HTTPS client: HTTP/1.1 and HTTP/2 by ALPN, rustls with the bundled
/// Mozilla roots (no OpenSSL, no system store needed), plain `http://` allowed for
/// the stand-in and for tests.
pub fn https_client(connect_timeout: Duration) -> Result<HttpsClient, BoxError> {
    tls_client(HttpConnector::new(), connect_timeout)
}

/// The same client over a connector with its own resolver (the relay's, which drops
/// internal addresses), for any request body type.
pub(crate) fn tls_client<R, B>(
    mut http: HttpConnector<R>,
    connect_timeout: Duration,
) -> Result<Client<HttpsConnector<HttpConnector<R>>, B>, BoxError>
where
    R: tower::Service<hyper_util::client::legacy::connect::dns::Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Error: Into<BoxError>,
    R::Future: Send,
    B: http_body::Body + Send,
    B::Data: Send,
{
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool has no back-pressure of its own; limits live in the layers above.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let prepared = self.prepare(&mut request);
        let this = Arc::clone(&self.inner);
        Box::pin(async move {
            // A URI that can't be rebuilt never left this process.
            prepared.map_err(UpstreamError::Connect)?;
            let started = Instant::now();
            let result = tokio::time::timeout(this.request_timeout, this.client.request(request)).await;
            let latency = started.elapsed();
            let result = match result {
                Err(_elapsed) => Err(UpstreamError::Timeout(this.request_timeout)),
                Ok(Err(err)) if err.is_connect() => Err(UpstreamError::Connect(err.into())),
                Ok(Err(err)) => Err(UpstreamError::Request(err.into())),
                Ok(Ok(response)) => Ok(response),
            };
            if let Some(metrics) = &this.metrics {
                match &result {
                    Ok(_) => metrics.upstream_latency.observe(latency),
                    Err(err) => metrics.upstream_errors.inc(&err.kind()),
                }
            }
            let mut response = result?;
            headers::remove_hop_by_hop(response.headers_mut());
            response.extensions_mut().insert(UpstreamLatency(latency));
            Ok(response.map(body::boxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_uri_onto_the_upstream() {
        let target = Target::new(&Uri::from_static("https://api.cometapi.com")).unwrap();
        let uri = target.uri_for(&Uri::from_static("/runway/feed?x=1")).unwrap();
        assert_eq!(uri, "https://api.cometapi.com/runway/feed?x=1");

        let target = Target::new(&Uri::from_static("http://127.0.0.1:9/base/")).unwrap();
        let uri = target.uri_for(&Uri::from_static("/runway/feed")).unwrap();
        assert_eq!(uri, "http://127.0.0.1:9/base/runway/feed");
    }
}
