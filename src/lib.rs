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
//! The same stack runs as a sidecar, `runway-proxy serve` (`app::Proxy`).
//!
//! # Example
//!
//! Wrap a hyper-util client; here it talks to the crate's CometAPI stand-in ([`mock`]),
//! which answers "system busy" once before accepting the task:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use runway_proxy::RunwayLayer;
//! use runway_proxy::body::Body;
//! use runway_proxy::callback::{Callbacks, Keyring, SubscriberPolicy};
//! use runway_proxy::limit::LimitSettings;
//! use runway_proxy::mock::{Fault, MockConfig, MockUpstream};
//! use runway_proxy::relay::{Relay, SqliteOutbox, WebhookSigner};
//! use runway_proxy::retry::RetrySettings;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let cometapi = MockUpstream::start(([127, 0, 0, 1], 0).into(), MockConfig::default()).await?;
//! cometapi.inject("/runway/pro/generate", Fault::busy(), 1);
//!
//! // Every fallible constructor checks its input and says what is wrong.
//! let mut retry = RetrySettings::default();
//! retry.base_delay = Duration::from_millis(10);
//! let mut limits = LimitSettings::default();
//! limits.submit_rate = Some("5/s".parse()?);
//! limits.max_concurrency = Some(5);
//! let keys: Keyring = "1:a-secret-of-at-least-thirty-two-bytes".parse()?;
//! let callbacks = Callbacks::new("https://hooks.my-app.example", keys)?
//!     .with_policy(SubscriberPolicy::default().allowed_hosts(["hooks.example.com"]));
//!
//! let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
//! let runway = ServiceBuilder::new()
//!     .layer(
//!         RunwayLayer::builder()
//!             .retry(retry)
//!             .rate_limit(limits)
//!             .callbacks(callbacks.clone())
//!             .build()?,
//!     )
//!     .service(client);
//!
//! // The webhook side, built from the same callbacks (same keys, same policy).
//! let data = std::env::temp_dir().join(format!("runway-proxy-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&data)?;
//! let outbox = Arc::new(SqliteOutbox::open(&data.join("outbox.sqlite3"))?);
//! let signer = WebhookSigner::from_secret(&WebhookSigner::generate_secret())?;
//! let relay = Relay::builder(&callbacks, outbox, signer).start()?;
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
//! relay.shutdown(Duration::from_secs(1)).await;
//! # let _ = std::fs::remove_dir_all(&data);
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every fallible constructor returns a typed error that is `std::error::Error + Send +
//! Sync + 'static`, so `?` works in any application's `main`:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use runway_proxy::app::Proxy;
//! use runway_proxy::callback::{Callbacks, Keyring};
//! use runway_proxy::config::{Config, Overrides};
//! use runway_proxy::limit::{QuotaSpec, RateLimitLayer};
//! use runway_proxy::relay::{Relay, SqliteOutbox, WebhookSigner};
//! use runway_proxy::retry::{RetryLayer, RuleSpec};
//! use runway_proxy::upstream::Forward;
//! use runway_proxy::RunwayLayer;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let rate: QuotaSpec = "5/s burst 10".parse()?;
//!     let wait = runway_proxy::duration::parse("30s")?;
//!     let keys: Keyring = "1:a-secret-of-at-least-thirty-two-bytes".parse()?;
//!     let signer = WebhookSigner::from_secret(&WebhookSigner::generate_secret())?;
//!     let callbacks = Callbacks::new("https://hooks.my-app.example", keys)?;
//!     let rule = toml::from_str::<RuleSpec>(r#"msg_contains = "quota"
//!         action = "fail""#)?.build(0)?;
//!
//!     let retry = RetryLayer::builder().max_attempts(4).build()?;
//!     let limit = RateLimitLayer::builder().submit_rate(rate).max_wait(wait).build()?;
//!     let runway = RunwayLayer::builder().callbacks(callbacks.clone()).build()?;
//!     let upstream = "https://api.cometapi.com".parse()?;
//!     let forward = Forward::new(&upstream, Duration::from_secs(10), Duration::from_secs(60))?;
//!
//!     let data = std::env::temp_dir().join(format!("runway-proxy-errors-{}", std::process::id()));
//!     std::fs::create_dir_all(&data)?;
//!     let outbox = Arc::new(SqliteOutbox::open(&data.join("outbox.sqlite3"))?);
//!     let relay = Relay::builder(&callbacks, outbox, signer).start()?;
//!
//!     let flags = Overrides::from([
//!         ("listen", "127.0.0.1:0".to_owned()),
//!         ("webhook_listen", "127.0.0.1:0".to_owned()),
//!         ("data_dir", data.join("sidecar").display().to_string()),
//!     ]);
//!     let config = Config::load(None, &|_| None, &flags)?;
//!     let proxy = Proxy::bind(&config).await?;
//!
//!     # let _ = (rule, retry, limit, runway, forward, proxy);
//!     relay.shutdown(Duration::from_secs(1)).await;
//!     # let _ = std::fs::remove_dir_all(&data);
//!     Ok(())
//! }
//! ```
//!
//! # Layers
//!
//! Each module imports only modules below it (a test, `tests/architecture.rs`, holds
//! the crate to that):
//!
//! | layer | modules | what they hold |
//! |---|---|---|
//! | app | [`app`] (feature `config`) | the only place that takes a [`config::Config`] and wires everything |
//! | configuration | [`config`] (feature `config`) | one typed `Config`, its keys gathered from each settings type's rows |
//! | sidecar | [`sidecar`] | the outermost service: admin paths, request metrics and logs, error envelopes |
//! | composition | [`runway`], [`guard`], [`relay`], [`mock`] (feature `mock`) | [`RunwayLayer`]; task limits and budgets; the webhook relay; the CometAPI stand-in |
//! | records | [`idempotency`], [`tasks`] | `Idempotency-Key` on submissions, recorded by what the retry layer concluded; the watch list of accepted tasks and the watcher that sees each one through |
//! | middleware | [`callback`], [`retry`], [`limit`], [`server`] | each a tower `Layer` + `Service` with its own metrics; serving a service |
//! | upstream, context | [`upstream`], [`context`] | talking to CometAPI: [`upstream::Forward`], [`upstream::UpstreamError`], TLS; one request's context: a submission's body buffered and parsed once for every layer |
//! | storage, envelope | [`store`], [`envelope`] | CometAPI's response envelope; the durable records (outbox, watch list and ledger, idempotency) behind their traits, the SQLite and PostgreSQL backends, one typed error |
//! | settings | [`settings`] | each setting declared once, next to its field ([`settings::Setting`] rows), the error `validate` returns, [`settings::Secret`], [`settings::Live`] |
//! | vocabulary | [`body`], [`duration`], [`route`], [`metrics`] | shared types |
//!
//! # Features
//!
//! - `cli` (default): the `runway-proxy` binary; turns on `config` and `mock`.
//! - `config`: [`config::Config`] (TOML, environment, flags) and [`app::Proxy`].
//! - `mock`: [`mock::MockUpstream`], the CometAPI stand-in.
//! - `axum`: [`relay::Relay::router`].
//! - `redis` (default): [`limit::SharedLimits`], quotas and caps shared by replicas.
//! - `postgres` (default): `store::PostgresOutbox`, the outbox, idempotency records and
//!   watch list shared by replicas.
//!
//! `cargo build --lib --no-default-features` builds the layers and the relay alone,
//! without clap, indicatif, toml, tracing-subscriber or the stand-in.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// vocabulary
pub mod body;
pub mod duration;
pub mod envelope;
pub mod metrics;
pub mod route;
pub mod settings;
// the storage floor
pub mod store;
// talking to the upstream
pub mod upstream;
// one request's context: a submission buffered and parsed once
pub mod context;

pub mod trace;
// middleware, and serving a service
pub mod callback;
pub mod limit;
pub mod retry;
pub mod server;
// the idempotency record, which reads the retry layer's verdict
pub mod idempotency;
// the watch list of accepted tasks, and its watcher
pub mod tasks;
// composition
pub mod guard;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;
pub mod relay;
pub mod runway;
// outputs copied to the operator's storage (the copier itself: feature `archive`)
pub mod archive;
// the sidecar
pub mod sidecar;
// configuration and wiring
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod app;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;

pub use runway::{Runway, RunwayLayer, RunwayLayerBuilder};
