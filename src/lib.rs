//! An outbound gateway for CometAPI's Runway video endpoints, as tower middleware and as
//! a sidecar.
//!
//! CometAPI's Runway calls are slow, paid, rate-limited, and sometimes answered with an
//! error inside an HTTP 200 (`{"code": 500, "msg": "system busy"}`); results come back
//! later as an unsigned webhook to the submission's `callback_url`. [`RunwayLayer`] wraps
//! the client an application already has and:
//!
//! - **rate-limits** outbound calls (GCRA via `governor`): calls wait their turn, within
//!   bounds ([`limit`]);
//! - **retries** by the response envelope's `code` and `msg`, the HTTP status and
//!   transport errors, never resubmitting a paid task that may have been accepted
//!   ([`retry`]);
//! - **rewrites `callback_url`** so webhooks come back through the [`relay`], which stores
//!   each one durably and delivers it, signed, to the original subscriber ([`callback`]).
//!
//! The same stack runs as a sidecar, `runway-proxy serve` ([`proxy::Proxy`]).
//!
//! # Example
//!
//! Wrap a hyper-util client; here it talks to the crate's CometAPI stand-in ([`mock`]),
//! which answers "system busy" once before accepting the task:
//!
//! ```
//! use std::time::Duration;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use runway_proxy::RunwayLayer;
//! use runway_proxy::body::Body;
//! use runway_proxy::limit::{LimitSettings, QuotaSpec};
//! use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
//! use runway_proxy::retry::RetrySettings;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), runway_proxy::body::BoxError> {
//! let cometapi = MockUpstream::start(([127, 0, 0, 1], 0).into(), MockConfig::default()).await?;
//! cometapi.inject("/runway/pro/generate", Fault::busy(), 1);
//!
//! let mut retry = RetrySettings::default();
//! retry.base_delay = Duration::from_millis(10);
//! let mut limits = LimitSettings::default();
//! limits.submit = Some(QuotaSpec::parse("5/s")?);
//! limits.max_concurrency = Some(5);
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
//! let runway = ServiceBuilder::new()
//!     .layer(RunwayLayer::new().retry(retry).rate_limit(limits))
//!     .service(client);
//!
//! let request = http::Request::post(format!("{}/runway/pro/generate", cometapi.url()))
//!     .header("authorization", "Bearer sk-your-key")
//!     .body(Full::new(bytes::Bytes::from(
//!         r#"{"prompt": "a cat", "callback_url": "https://hooks.example.com/runway"}"#,
//!     )))?;
//! let response = runway.oneshot(request).await?;
//! assert_eq!(response.headers()["x-runway-proxy-attempts"], "2");
//! let envelope: serde_json::Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//! assert_eq!(envelope["code"], 200);
//! assert_eq!(cometapi.stats().accepted("/runway/pro/generate"), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Modules
//!
//! - [`layer`]: [`RunwayLayer`], the three middleware composed in the right order.
//! - [`limit`], [`retry`], [`callback`]: the middleware, each a tower `Layer` of its own.
//! - [`relay`]: the webhook receiver, the durable outbox and the delivery workers.
//! - [`proxy`], [`server`], [`config`]: the sidecar and its configuration.
//! - [`mock`]: a CometAPI stand-in for tests and offline development.
//! - [`envelope`], [`route`], [`metrics`], [`body`], [`duration`]: shared vocabulary.
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
