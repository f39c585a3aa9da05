//! The pooled HTTPS client: HTTP/1.1 and HTTP/2 by ALPN, rustls with the bundled Mozilla
//! roots (no OpenSSL, no system store needed), plain `http://` allowed for the stand-in
//! and for tests.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, BoxError};

/// The hyper-util client [`Forward`](super::Forward) uses.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why a client or forwarder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// rustls refused the TLS configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The upstream base URL is not `http(s)://host[:port][/path]`.
    #[error("{0:?} is not an http(s) base URL like https://api.cometapi.com")]
    BadUpstream(String),
}

/// Build the pooled HTTPS client for the upstream.
pub fn https_client(connect_timeout: Duration) -> Result<HttpsClient, ClientError> {
    tls_client(HttpConnector::new(), connect_timeout)
}

/// The connector under [`https_client`], for the serving threads' own pools.
pub(crate) fn https_connector(
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, ClientError> {
    tls_connector(HttpConnector::new(), connect_timeout)
}

fn tls_connector<R>(
    mut http: HttpConnector<R>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector<R>>, ClientError> {
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// The same client over a connector with its own resolver (the relay's, which drops
/// internal addresses), for any request body type.
pub(crate) fn tls_client<R, B>(
    http: HttpConnector<R>,
    connect_timeout: Duration,
) -> Result<Client<HttpsConnector<HttpConnector<R>>, B>, ClientError>
where
    R: tower::Service<hyper_util::client::legacy::connect::dns::Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Error: Into<BoxError>,
    R::Future: Send,
    B: http_body::Body + Send,
    B::Data: Send,
{
    let https = tls_connector(http, connect_timeout)?;
    Ok(Client::builder(TokioExecutor::new()).build(https))
}
