//! An outbound gateway for CometAPI's Runway video endpoints.
//!
//! CometAPI's Runway calls are slow, paid, rate-limited, and sometimes answered with an
//! error inside an HTTP 200 (`{"code": 500, "msg": "system busy"}`); results come back
//! later as a webhook. `runway_proxy` handles that in one place, as a sidecar
//! ([`proxy::Proxy`], the `runway-proxy serve` binary) built from tower services.
//!
//! - [`proxy`]: the forwarding service and the sidecar server around it.
//! - [`mock`]: a CometAPI stand-in (Runway routes, task lifecycle, callbacks, faults) for
//!   tests and offline development.
//! - [`config`]: the typed configuration, from TOML, environment variables and flags.
//! - [`route`], [`envelope`], [`metrics`]: the shared vocabulary of the layers.
//!
//! # Example
//!
//! Run the sidecar in front of the stand-in, and send a submission through it:
//!
//! ```
//! use runway_proxy::config::{Config, Overrides};
//! use runway_proxy::mock::{MockConfig, MockUpstream};
//! use runway_proxy::proxy::Proxy;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), runway_proxy::body::BoxError> {
//! let upstream = MockUpstream::start(([127, 0, 0, 1], 0).into(), MockConfig::default()).await?;
//!
//! let flags = Overrides::from([
//!     ("listen", "127.0.0.1:0".to_owned()),
//!     ("upstream", upstream.url()),
//! ]);
//! let config = Config::load(None, &|_| None, &flags)?;
//! let proxy = Proxy::bind(&config).await?;
//! let addr = proxy.local_addr();
//! tokio::spawn(proxy.run(std::future::pending()));
//!
//! // Any HTTP client works; the proxy is transparent to CometAPI's clients.
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
//! let request = http::Request::post(format!("http://{addr}/runway/pro/generate"))
//!     .header("authorization", "Bearer sk-your-key")
//!     .body(Full::new(bytes::Bytes::from(
//!         r#"{"prompt": "a cat", "callback_url": "https://example.com/hook"}"#,
//!     )))?;
//! let response = client.request(request).await?;
//! let envelope: serde_json::Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//! assert_eq!(envelope["code"], 200);
//! assert_eq!(upstream.stats().accepted("/runway/pro/generate"), 1);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod callback;
pub mod config;
pub mod duration;
pub mod envelope;
pub mod layer;
pub mod limit;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod relay;
pub mod retry;
pub mod route;
pub mod server;

pub use layer::{Runway, RunwayLayer};
