//! The webhook relay: receive CometAPI's callbacks, store them durably, and deliver them,
//! signed, to the original subscriber at least once.
//!
//! - [`WebhookReceiver`] (a tower `Service`) answers `POST /hooks/runway/{token}`: it
//!   verifies the route token, stores the body in the [`Outbox`] *before* answering 2xx,
//!   and answers 503 when it can't, so the sender tries again.
//! - [`SqliteOutbox`] is the embedded store (WAL, group commit); [`Outbox`] is the trait a
//!   shared store would implement for several replicas. The same (task, status, update
//!   time) is stored once, and a task's older status is never delivered after its
//!   terminal one.
//! - [`DeliveryWorkers`] send each webhook with Standard Webhooks headers
//!   ([`WebhookSigner`]), retry on a schedule (honouring `Retry-After`, stopping at
//!   `410 Gone`), check the subscriber's resolved address again at delivery, and turn
//!   exhausted deliveries into dead letters that [`admin`] lists and replays.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use runway_proxy::callback::Keyring;
//! use runway_proxy::relay::{DeliveryWorkers, RelaySettings, SqliteOutbox, WebhookReceiver, WebhookSigner};
//!
//! # async fn run() -> Result<(), runway_proxy::body::BoxError> {
//! let keys = Arc::new(Keyring::parse("1:a-secret-of-at-least-thirty-two-bytes")?);
//! let outbox = Arc::new(SqliteOutbox::open("outbox.sqlite3".as_ref())?);
//! let wake = Arc::new(tokio::sync::Notify::new());
//! // Mount this at /hooks/runway/{token} in your router.
//! let receiver = WebhookReceiver::new(keys, outbox.clone(), wake.clone(), 1 << 20, None);
//! let signer = WebhookSigner::from_secret(&WebhookSigner::generate_secret())?;
//! let workers = DeliveryWorkers::start(outbox, signer, RelaySettings::default(), wake, None)?;
//! // ... serve ...
//! workers.shutdown(std::time::Duration::from_secs(10)).await;
//! # let _ = receiver;
//! # Ok(())
//! # }
//! ```

mod listener;
mod outbox;
mod signing;
mod sqlite;
mod worker;

use std::sync::Arc;

use http::{Method, Response, StatusCode, header};
use tokio::sync::Notify;

pub use listener::WebhookReceiver;
pub use outbox::{
    BoxFuture, Completion, Delivery, DeliveryState, Depth, Enqueued, NewDelivery, Outbox, OutboxError,
};
pub use signing::WebhookSigner;
pub use sqlite::SqliteOutbox;
pub use worker::{DeliveryWorkers, RelaySettings};

use std::time::Duration;

use crate::body::{self, Body, BoxError};
use crate::callback::Keyring;
use crate::envelope;
use crate::metrics::Metrics;

/// The webhook side of runway-proxy for an application that embeds it: the receiver to
/// mount, the delivery workers running on the application's runtime, and a handle to
/// stop them gracefully.
///
/// ```no_run
/// use std::sync::Arc;
/// use runway_proxy::callback::Keyring;
/// use runway_proxy::relay::{Relay, SqliteOutbox, WebhookSigner};
///
/// # async fn run() -> Result<(), runway_proxy::body::BoxError> {
/// let keys = Arc::new(Keyring::parse("1:a-secret-of-at-least-thirty-two-bytes")?);
/// let outbox = Arc::new(SqliteOutbox::open("outbox.sqlite3".as_ref())?);
/// let signer = WebhookSigner::from_secret(&std::env::var("RUNWAY_PROXY_WEBHOOK_SECRET")?)?;
/// let relay = Relay::builder(keys, outbox, signer).start()?;
/// let receiver = relay.receiver(); // mount at /hooks/runway/{token}
/// // ... serve ...
/// relay.shutdown(std::time::Duration::from_secs(10)).await;
/// # let _ = receiver;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Relay {
    receiver: WebhookReceiver,
    admin: RelayAdmin,
    workers: DeliveryWorkers,
}

/// Settings for [`Relay::start`](RelayBuilder::start).
#[derive(Debug)]
pub struct RelayBuilder {
    keys: Arc<Keyring>,
    outbox: Arc<dyn Outbox>,
    signer: WebhookSigner,
    settings: RelaySettings,
    body_limit: usize,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for dyn Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

impl Relay {
    /// A relay that verifies route tokens with `keys`, stores webhooks in `outbox` and
    /// signs deliveries with `signer`.
    pub fn builder(keys: Arc<Keyring>, outbox: Arc<dyn Outbox>, signer: WebhookSigner) -> RelayBuilder {
        RelayBuilder {
            keys,
            outbox,
            signer,
            settings: RelaySettings::default(),
            body_limit: 1 << 20,
            metrics: None,
        }
    }

    /// The receiver to mount at `/hooks/runway/{token}` (a tower `Service`; cheap to clone).
    pub fn receiver(&self) -> WebhookReceiver {
        self.receiver.clone()
    }

    /// What [`admin`] needs, to serve `/-/deliveries` on a private route.
    pub fn admin(&self) -> RelayAdmin {
        self.admin.clone()
    }

    /// The receiver as an axum `Router` answering `POST /hooks/runway/{token}`; merge it
    /// into the application's router.
    #[cfg(feature = "axum")]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        axum::Router::new().route_service("/hooks/runway/{token}", self.receiver.clone())
    }

    /// Stop the delivery workers: deliveries in flight get `grace` to finish, and what is
    /// left goes back to pending for the next start.
    pub async fn shutdown(self, grace: Duration) {
        self.workers.shutdown(grace).await;
    }
}

impl RelayBuilder {
    /// Delivery schedule, timeout, workers and target policy.
    pub fn settings(mut self, settings: RelaySettings) -> Self {
        self.settings = settings;
        self
    }

    /// Largest webhook body accepted (default 1 MiB).
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Record webhook and delivery metrics in `metrics`.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Start the delivery workers on the current Tokio runtime.
    pub fn start(self) -> Result<Relay, BoxError> {
        let wake = Arc::new(Notify::new());
        let receiver = WebhookReceiver::new(
            self.keys,
            Arc::clone(&self.outbox),
            Arc::clone(&wake),
            self.body_limit,
            self.metrics.clone(),
        );
        let admin = RelayAdmin {
            outbox: Arc::clone(&self.outbox),
            wake: Arc::clone(&wake),
        };
        let workers = DeliveryWorkers::start(self.outbox, self.signer, self.settings, wake, self.metrics)?;
        Ok(Relay {
            receiver,
            admin,
            workers,
        })
    }
}

/// Most deliveries one admin page lists.
const PAGE: usize = 100;

/// What the admin paths need: the outbox, and the workers' wake-up.
#[derive(Clone)]
pub struct RelayAdmin {
    /// The outbox.
    pub outbox: Arc<dyn Outbox>,
    /// Notified after a replay so the workers pick it up at once.
    pub wake: Arc<Notify>,
}

impl std::fmt::Debug for RelayAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayAdmin { .. }")
    }
}

/// Answer the relay's admin paths (on the private listener):
///
/// - `GET /-/deliveries?state=pending|in_flight|delivered|dead|superseded&after=ID&limit=N`:
///   a page of deliveries, oldest first, with `next` (the `after` for the next page).
/// - `POST /-/deliveries/{id}/replay`: make a delivery pending again with a fresh schedule.
///
/// `None` for a path that is not the relay's.
pub async fn admin(
    relay: &RelayAdmin,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Response<Body>> {
    let rest = path.strip_prefix("/-/deliveries")?;
    let bad = |status: StatusCode, msg: &str| Some(envelope::error_response(status, msg));
    if rest.is_empty() {
        if method != Method::GET {
            return bad(StatusCode::METHOD_NOT_ALLOWED, "/-/deliveries only answers GET");
        }
        let mut state = outbox::DeliveryState::Pending;
        let mut after = 0i64;
        let mut limit = PAGE;
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "state" => match DeliveryState::parse(value) {
                    Some(parsed) => state = parsed,
                    None => {
                        let msg = format!(
                            "state {value:?} is not pending, in_flight, delivered, dead or superseded"
                        );
                        return bad(StatusCode::BAD_REQUEST, &msg);
                    }
                },
                "after" => match value.parse() {
                    Ok(parsed) => after = parsed,
                    Err(_) => return bad(StatusCode::BAD_REQUEST, "after must be a delivery id"),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(parsed) if parsed > 0 => limit = parsed.min(1000),
                    _ => return bad(StatusCode::BAD_REQUEST, "limit must be a number from 1 to 1000"),
                },
                _ => {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown query parameter {key:?}"),
                    );
                }
            }
        }
        return Some(match relay.outbox.list(state, after, limit).await {
            Ok(deliveries) => {
                let next = (deliveries.len() == limit)
                    .then(|| deliveries.last().map(|d| d.id))
                    .flatten();
                let page = serde_json::json!({ "state": state, "deliveries": deliveries, "next": next });
                json(StatusCode::OK, &page)
            }
            Err(err) => envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        });
    }
    let id = rest.strip_prefix('/').and_then(|r| r.strip_suffix("/replay"))?;
    if method != Method::POST {
        return bad(StatusCode::METHOD_NOT_ALLOWED, "replay with POST");
    }
    let Ok(id) = id.parse::<i64>() else {
        return bad(StatusCode::BAD_REQUEST, "the delivery id must be a number");
    };
    Some(match relay.outbox.replay(id).await {
        Ok(true) => {
            relay.wake.notify_waiters();
            json(
                StatusCode::OK,
                &serde_json::json!({"code": 200, "msg": "replaying", "data": {"id": id}}),
            )
        }
        Ok(false) => {
            envelope::error_response(StatusCode::NOT_FOUND, "no such delivery, or it is in flight now")
        }
        Err(err) => envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    })
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(body::full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, envelope::JSON);
    response
}
