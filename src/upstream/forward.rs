//! The innermost service: sends a request to the upstream and returns its response.
//!
//! [`Forward`] rewrites the request's URI onto the upstream base, drops hop-by-hop headers
//! both ways, appends `X-Forwarded-For`, and streams bodies through untouched. It sorts
//! its failures into the three kinds that matter to a caller deciding whether a paid
//! submission might have gone through: nothing was sent ([`UpstreamError::Connect`]),
//! something was sent and the answer is unknown ([`UpstreamError::Request`]), or no
//! answer came in time ([`UpstreamError::Timeout`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use super::pool::{LocalPool, PoolError};

use super::{ClientAddr, ClientError, HttpsClient, UpstreamError, UpstreamLatency, UpstreamMetrics, headers};
use crate::body::{self, Body};

/// Where requests go: the upstream's scheme, authority and optional base path.
#[derive(Clone, Debug)]
struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    /// `Host` for HTTP/1.1 requests on the serving threads' pools.
    host: HeaderValue,
    /// The base URL's path without its trailing `/` ("" for a bare host).
    base_path: String,
}

impl UpstreamBase {
    fn new(upstream: &Uri) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUpstream(upstream.to_string());
        let scheme = upstream.scheme().cloned().ok_or_else(bad)?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad());
        }
        let authority = upstream.authority().cloned().ok_or_else(bad)?;
        let base_path = upstream.path().trim_end_matches('/').to_owned();
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
        Ok(UpstreamBase {
            scheme,
            host,
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

#[derive(Debug)]
struct ForwardInner {
    /// The pool of threads that are not serving threads (an embedder's runtime).
    client: HttpsClient,
    /// One pool per serving thread, made on its first request there (none when the
    /// client was given: it is used everywhere).
    local: Box<[OnceLock<Arc<LocalPool>>]>,
    /// What the serving threads' pools connect with.
    connector: Option<HttpsConnector<HttpConnector>>,
    base: UpstreamBase,
    request_timeout: Duration,
    metrics: Arc<UpstreamMetrics>,
}

impl Forward {
    /// A forwarder to `upstream` (an `http` or `https` base URL) with its own client.
    ///
    /// On the sidecar's serving threads (see [`serve_on_this_thread`]) each thread gets
    /// a pool of its own, so a request, its upstream connection and that connection's
    /// task stay on one thread; elsewhere every thread shares one pool.
    pub fn new(
        upstream: &Uri,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut forward =
            Self::with_client(super::https_client(connect_timeout)?, upstream, request_timeout)?;
        if let Some(inner) = Arc::get_mut(&mut forward.inner) {
            inner.local = (0..MAX_SERVING_THREADS).map(|_| OnceLock::new()).collect();
            inner.connector = Some(super::https_connector(connect_timeout)?);
        }
        Ok(forward)
    }

    /// A forwarder that sends through an existing client (sharing its pool).
    pub fn with_client(
        client: HttpsClient,
        upstream: &Uri,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Forward {
            inner: Arc::new(ForwardInner {
                client,
                local: Box::new([]),
                connector: None,
                base: UpstreamBase::new(upstream)?,
                request_timeout,
                metrics: Arc::default(),
            }),
        })
    }

    /// What this forwarder (and every clone of it) records.
    pub fn metrics(&self) -> Arc<UpstreamMetrics> {
        Arc::clone(&self.inner.metrics)
    }

    fn prepare(&self, request: &mut Request<Body>) -> Result<(), http::Error> {
        *request.uri_mut() = self.inner.base.uri_for(request.uri())?;
        // The client's protocol to us says nothing about ours to the upstream: the pool
        // picks HTTP/2 where ALPN offers it, and refuses an HTTP/2 request on an HTTP/1
        // connection, so an h2c request must not carry its version upstream.
        *request.version_mut() = http::Version::HTTP_11;
        let headers = request.headers_mut();
        headers::remove_hop_by_hop(headers);
        // The client sets `Host` (or `:authority` on HTTP/2) from the new URI.
        headers.remove(http::header::HOST);
        // A clone of the connection's header value: a reference count, no formatting.
        if let Some(ip) = request
            .extensions()
            .get::<ClientAddr>()
            .and_then(ClientAddr::ip_header)
            .cloned()
        {
            headers::append_forwarded_for_value(request.headers_mut(), &ip);
        }
        Ok(())
    }
}

/// Serving threads that get a pool of their own; more share the common one.
const MAX_SERVING_THREADS: usize = 64;

thread_local! {
    static SERVING_THREAD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Mark this thread as serving thread `index` (from 0): [`Forward`]s used on it send
/// through a pool of this thread's own. The sidecar calls it at the start of each of
/// its serving threads, each of which runs a current-thread runtime.
pub fn serve_on_this_thread(index: usize) {
    SERVING_THREAD.with(|cell| cell.set(Some(index)));
}

impl ForwardInner {
    /// This serving thread's pool, or `None` off the serving threads.
    fn local_pool(&self) -> Option<&Arc<LocalPool>> {
        let index = SERVING_THREAD.with(Cell::get)?;
        let connector = self.connector.as_ref()?;
        let slot = self.local.get(index)?;
        Some(slot.get_or_init(|| LocalPool::new(connector.clone())))
    }

    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        match self.local_pool() {
            Some(pool) => pool
                .send(request, &self.base.host)
                .await
                .map_err(|err| match err {
                    PoolError::Connect(err) => UpstreamError::Connect(err),
                    PoolError::Request(err) => UpstreamError::Request(err.into()),
                }),
            None => match self.client.request(request).await {
                Ok(response) => Ok(response.map(body::boxed)),
                Err(err) if err.is_connect() => Err(UpstreamError::Connect(err.into())),
                Err(err) => Err(UpstreamError::Request(err.into())),
            },
        }
    }
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
            prepared.map_err(|e| UpstreamError::Connect(e.into()))?;
            let started = Instant::now();
            let result = tokio::time::timeout(this.request_timeout, this.send(request)).await;
            let latency = started.elapsed();
            let result = match result {
                Err(_elapsed) => Err(UpstreamError::Timeout(this.request_timeout)),
                Ok(result) => result,
            };
            match &result {
                Ok(_) => this.metrics.latency.observe(latency),
                Err(err) => this.metrics.failed(err),
            }
            let mut response = result?;
            headers::remove_hop_by_hop(response.headers_mut());
            response.extensions_mut().insert(UpstreamLatency(latency));
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_uri_onto_the_upstream() {
        let base = UpstreamBase::new(&Uri::from_static("https://api.cometapi.com")).unwrap();
        let uri = base.uri_for(&Uri::from_static("/runway/feed?x=1")).unwrap();
        assert_eq!(uri, "https://api.cometapi.com/runway/feed?x=1");

        let base = UpstreamBase::new(&Uri::from_static("http://127.0.0.1:9/base/")).unwrap();
        let uri = base.uri_for(&Uri::from_static("/runway/feed")).unwrap();
        assert_eq!(uri, "http://127.0.0.1:9/base/runway/feed");
        assert!(UpstreamBase::new(&Uri::from_static("/no/host")).is_err());
    }
}
