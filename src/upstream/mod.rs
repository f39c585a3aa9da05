//! Talking to CometAPI: the forwarding client, its TLS setup, and what can go wrong.
//!
//! This is the bottom of the proxy. [`Forward`] sends a request to the upstream and
//! streams the answer back; [`UpstreamError`] is the one type that says what happened when
//! no answer came, and above all whether the request *may have been sent*, the fact a
//! retry of a paid submission turns on. The retry layer, the metrics and the logs all
//! read that type, with one set of labels (`connect`, `timeout`, `request`).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use runway_proxy::upstream::Forward;
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let upstream = http::Uri::from_static("https://api.cometapi.com");
//! let forward = Forward::new(&upstream, Duration::from_secs(10), Duration::from_secs(60))?;
//! let request = http::Request::get("/runwayml/v1/tasks/abc")
//!     .header("authorization", "Bearer sk-your-key")
//!     .body(runway_proxy::body::empty())?;
//! let response = forward.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod forward;
pub mod headers;
mod metrics;
mod pool;
mod resolver;
mod retry_after;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::{ClientError, HttpsClient, https_client};
pub(crate) use client::{https_connector, tls_client};
pub use error::UpstreamError;
pub use forward::{Forward, serve_on_this_thread};
pub use metrics::UpstreamMetrics;
pub(crate) use resolver::GuardedResolver;
pub use retry_after::retry_after;

/// The address of the client that sent a request, put in its extensions by the server
/// and read by [`Forward`] for `X-Forwarded-For`.
#[derive(Clone, Debug)]
pub struct ClientAddr {
    addr: SocketAddr,
    /// The IP as a header value, written once per connection rather than per request.
    ip_header: Option<http::HeaderValue>,
}

impl ClientAddr {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        ClientAddr {
            addr,
            ip_header: http::HeaderValue::from_str(&addr.ip().to_string()).ok(),
        }
    }

    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client's IP, as `X-Forwarded-For` carries it.
    pub fn ip_header(&self) -> Option<&http::HeaderValue> {
        self.ip_header.as_ref()
    }
}

/// How long the upstream took to answer with headers, put in the response's extensions.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamLatency(pub Duration);
