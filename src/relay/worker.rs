//! Delivery workers: send each stored webhook to its subscriber, signed, at least once.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::outbox::{Completion, Delivery, Outbox};
use super::signing::WebhookSigner;
use crate::body::{self, BoxError};
use crate::callback::TargetPolicy;
use crate::metrics::Metrics;
use crate::retry::retry_after;

/// Settings of the delivery workers.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RelaySettings {
    /// Wait before each attempt: the first is the wait before the first attempt, and the
    /// number of entries is the number of attempts (default: immediately, 5 s, 5 min,
    /// 30 min, 2 h, 5 h, 10 h, 10 h, each with ±20% jitter).
    pub schedule: Vec<Duration>,
    /// Time allowed for one attempt (default 15 s).
    pub timeout: Duration,
    /// Number of workers (default 4); each sends up to 16 deliveries at once.
    pub workers: usize,
    /// The longest a subscriber's `Retry-After` can push an attempt back (default 1 h).
    pub retry_after_cap: Duration,
    /// Which subscriber addresses may be delivered to (checked again at delivery).
    pub policy: TargetPolicy,
}

impl Default for RelaySettings {
    fn default() -> Self {
        let m = 60;
        let h = 3600;
        RelaySettings {
            schedule: [0, 5, 5 * m, 30 * m, 2 * h, 5 * h, 10 * h, 10 * h]
                .map(Duration::from_secs)
                .to_vec(),
            timeout: Duration::from_secs(15),
            workers: 4,
            retry_after_cap: Duration::from_secs(3600),
            policy: TargetPolicy::default(),
        }
    }
}

/// Deliveries one worker claims and sends at once.
const BATCH: usize = 16;
/// How often an idle worker looks for due deliveries even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// A resolver that drops internal addresses (unless allowed), so the connection can only
/// go where the check said: the guard against DNS rebinding between check and connect.
#[derive(Clone, Debug)]
struct SafeResolver {
    policy: TargetPolicy,
}

impl tower::Service<Name> for SafeResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let safe: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.check_resolved(a.ip()).is_ok())
                .collect();
            if safe.is_empty() && !addrs.is_empty() {
                return Err(std::io::Error::other(format!(
                    "{name} resolves only to internal addresses"
                )));
            }
            Ok(safe.into_iter())
        })
    }
}

type DeliveryClient = Client<HttpsConnector<HttpConnector<SafeResolver>>, Full<Bytes>>;

fn delivery_client(settings: &RelaySettings) -> Result<DeliveryClient, BoxError> {
    let resolver = SafeResolver {
        policy: settings.policy.clone(),
    };
    crate::proxy::tls_client(HttpConnector::new_with_resolver(resolver), settings.timeout)
}

struct Worker {
    name: String,
    outbox: Arc<dyn Outbox>,
    client: DeliveryClient,
    signer: WebhookSigner,
    settings: Arc<RelaySettings>,
    wake: Arc<Notify>,
    metrics: Option<Arc<Metrics>>,
}

/// The running delivery workers.
#[derive(Debug)]
pub struct DeliveryWorkers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl DeliveryWorkers {
    /// Start `settings.workers` workers delivering from `outbox`, signing with `signer`.
    /// `wake` is notified when something new is stored (the receiver does it).
    pub fn start(
        outbox: Arc<dyn Outbox>,
        signer: WebhookSigner,
        settings: RelaySettings,
        wake: Arc<Notify>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<DeliveryWorkers, BoxError> {
        let client = delivery_client(&settings)?;
        let settings = Arc::new(settings);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let instance: u32 = rand::random();
        for n in 0..settings.workers.max(1) {
            let worker = Worker {
                name: format!("worker-{instance:08x}-{n}"),
                outbox: Arc::clone(&outbox),
                client: client.clone(),
                signer: signer.clone(),
                settings: Arc::clone(&settings),
                wake: Arc::clone(&wake),
                metrics: metrics.clone(),
            };
            tasks.spawn(worker.run(stopped.clone()));
        }
        if let Some(metrics) = metrics {
            tasks.spawn(publish_depth(outbox, metrics, stopped));
        }
        Ok(DeliveryWorkers { stop, tasks })
    }

    /// Stop claiming; let deliveries in flight finish for up to `grace`, then give the
    /// rest back to the outbox as pending.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        // Each worker enforces the grace itself; this bounds the wait for their exit.
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// How often the outbox depth gauge is refreshed from the store.
const DEPTH_EVERY: Duration = Duration::from_secs(1);

/// Keep `runway_proxy_outbox_depth` equal to what the store holds. Asking the store
/// (rather than counting in the receiver and the workers) stays right through superseded
/// statuses, replays, restarts, and other replicas sharing the store.
async fn publish_depth(outbox: Arc<dyn Outbox>, metrics: Arc<Metrics>, mut stopped: watch::Receiver<bool>) {
    loop {
        if let Ok(depth) = outbox.depth().await {
            metrics
                .outbox_depth
                .set(i64::try_from(depth.pending + depth.in_flight).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = tokio::time::sleep(DEPTH_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `delay` scaled by a random factor in [0.8, 1.2], so retries of many deliveries that
/// failed together spread out.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

impl Worker {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        // Long enough for an attempt and its bookkeeping; a crashed worker's claims come
        // back after this.
        let lease = self.settings.timeout * 2 + Duration::from_secs(5);
        loop {
            if *stopped.borrow() {
                return;
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimed = match self.outbox.claim(self.name.clone(), BATCH, lease).await {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::error!(error = %err, "cannot claim deliveries");
                    tokio::time::sleep(IDLE_POLL).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                let idle = match self.outbox.next_due().await {
                    Ok(Some(at)) => {
                        Duration::from_millis((at - now_ms()).clamp(1, IDLE_POLL.as_millis() as i64) as u64)
                    }
                    _ => IDLE_POLL,
                };
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep(idle) => {}
                    _ = stopped.changed() => {}
                }
                continue;
            }
            let ids: Vec<i64> = claimed.iter().map(|d| d.id).collect();
            let sends = futures_util::future::join_all(claimed.iter().map(|d| self.attempt(d)));
            let grace_over = async {
                let _ = stopped.wait_for(|s| *s).await;
                // The server's grace is enforced by whoever stops us; here it is the
                // attempt timeout that bounds a send.
                tokio::time::sleep(self.settings.timeout).await;
            };
            tokio::select! {
                completions = sends => {
                    for (delivery, completion) in claimed.iter().zip(completions) {
                        self.record(delivery, &completion);
                        if let Err(err) = self.outbox.complete(delivery.id, self.name.clone(), completion).await {
                            tracing::error!(error = %err, id = delivery.id, "cannot record a delivery attempt");
                        }
                    }
                }
                () = grace_over => {
                    for id in ids {
                        let _ = self.outbox.release(id, self.name.clone()).await;
                    }
                    return;
                }
            }
        }
    }

    /// One attempt: how it ended, as the outbox records it.
    async fn attempt(&self, delivery: &Delivery) -> Completion {
        let (error, retry_after) = match self.send(delivery).await {
            Ok(()) => return Completion::Delivered,
            Err(Failure::Gone(error)) | Err(Failure::Refused(error)) => return Completion::Dead { error },
            Err(Failure::Retry { error, retry_after }) => (error, retry_after),
        };
        let attempts = delivery.attempts as usize + 1;
        match self.settings.schedule.get(attempts) {
            None => Completion::Dead {
                error: format!("{error} (after {attempts} attempts)"),
            },
            Some(&delay) => {
                let wait = jittered(delay).max(retry_after.unwrap_or_default());
                Completion::RetryAt {
                    at: now_ms() + wait.as_millis() as i64,
                    error,
                }
            }
        }
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), Failure> {
        // The literal-address case: the resolver sees only host names.
        let target = self
            .settings
            .policy
            .check(&delivery.target_url)
            .map_err(|r| Failure::Refused(r.to_string()))?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = self.signer.sign(&delivery.webhook_id, timestamp, &delivery.body);
        let request = Request::post(target.uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("runway-proxy/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &delivery.webhook_id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Full::new(delivery.body.clone()))
            .map_err(|e| Failure::Refused(format!("cannot build the request: {e}")))?;
        let response = match tokio::time::timeout(self.settings.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                let cause =
                    std::error::Error::source(&err).map_or_else(|| err.to_string(), body::error_chain);
                return Err(Failure::Retry {
                    error: format!("cannot reach the subscriber: {cause}"),
                    retry_after: None,
                });
            }
            Err(_) => {
                let error = format!(
                    "subscriber timed out after {}",
                    crate::duration::format(self.settings.timeout)
                );
                return Err(Failure::Retry {
                    error,
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status == StatusCode::GONE {
            return Err(Failure::Gone("subscriber answered 410 Gone".into()));
        }
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| {
            retry_after(
                response.headers(),
                SystemTime::now(),
                self.settings.retry_after_cap,
            )
        })
        .flatten();
        Err(Failure::Retry {
            error: format!("subscriber answered {status}"),
            retry_after,
        })
    }

    fn record(&self, delivery: &Delivery, completion: &Completion) {
        let Some(metrics) = &self.metrics else { return };
        match completion {
            Completion::Delivered => {
                metrics.deliveries.inc(&"delivered");
                let age = (now_ms() - delivery.created_at).max(0) as u64;
                metrics.delivery_latency.observe(Duration::from_millis(age));
            }
            Completion::RetryAt { error, .. } => {
                metrics.deliveries.inc(&"retried");
                tracing::info!(id = delivery.id, attempt = delivery.attempts + 1, %error, "delivery failed; will retry");
            }
            Completion::Dead { error } => {
                metrics.deliveries.inc(&"dead");
                tracing::warn!(id = delivery.id, attempts = delivery.attempts + 1, %error, "delivery is a dead letter");
            }
        }
    }
}

enum Failure {
    /// 410: the subscriber wants no more.
    Gone(String),
    /// The target is not allowed: retrying won't change that.
    Refused(String),
    /// Worth another attempt.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
}
