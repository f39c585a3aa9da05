//! Delivery workers: send each stored webhook to its subscriber, signed, at least once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode, header};
use http_body_util::Full;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::RelayMetrics;
use super::client::{DeliveryClient, delivery_client};
use super::outcome::{Failure, complete};
use super::settings::DeliverySettings;
use super::signing::WebhookSigner;
use crate::body;
use crate::callback::SubscriberPolicy;
use crate::duration::{jittered, unix_millis as now_ms};
use crate::settings::InvalidSetting;
use crate::store::{Completion, Delivery, Health, Outbox, Signal, Transition};
use crate::trace::{Span, SpanContext, SpanKind, Tracer};
use crate::upstream::{ClientError, retry_after};

/// How often an idle worker looks for due deliveries even without a wake-up (another
/// replica's completions, a paused subscriber's probe, a rate's allowance coming back).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The response header a subscriber sends to pause itself until an operator resumes it.
pub const PAUSE_HEADER: &str = "runway-proxy-pause";

struct Worker {
    name: String,
    outbox: Arc<dyn Outbox>,
    client: DeliveryClient,
    signer: WebhookSigner,
    settings: Arc<DeliverySettings>,
    policy: SubscriberPolicy,
    wake: Arc<Notify>,
    metrics: Arc<RelayMetrics>,
    tracer: Tracer,
}

/// The running delivery workers: one generation at a time claims deliveries; a reload
/// starts a new one and lets the one before it finish what it holds.
#[derive(Debug)]
pub(super) struct DeliveryWorkers {
    outbox: Arc<dyn Outbox>,
    signer: WebhookSigner,
    wake: Arc<Notify>,
    metrics: Arc<RelayMetrics>,
    tracer: Tracer,
    /// Stops the upkeep (gauges, expiry).
    stop: watch::Sender<bool>,
    depth: JoinSet<()>,
    /// `delivery.max_age` in milliseconds, as the upkeep reads it (a reload sets it).
    max_age: Arc<AtomicU64>,
    /// The current generation last; earlier ones are finishing their claims. Held only
    /// to push or take, never across an await.
    generations: std::sync::Mutex<Vec<Generation>>,
}

/// Workers started together, with one set of settings.
#[derive(Debug)]
struct Generation {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    settings: Arc<DeliverySettings>,
    policy: SubscriberPolicy,
}

impl DeliveryWorkers {
    /// Start `settings.workers` workers delivering from `outbox`, signing with `signer`.
    /// `wake` is notified when something new is stored (the receiver does it).
    pub(super) fn start(
        outbox: Arc<dyn Outbox>,
        signer: WebhookSigner,
        settings: DeliverySettings,
        policy: SubscriberPolicy,
        wake: Arc<Notify>,
        metrics: Arc<RelayMetrics>,
        tracer: Tracer,
    ) -> Result<DeliveryWorkers, ClientError> {
        let (stop, stopped) = watch::channel(false);
        let max_age = Arc::new(AtomicU64::new(settings.max_age.as_millis() as u64));
        let mut depth = JoinSet::new();
        depth.spawn(super::upkeep::run(
            Arc::clone(&outbox),
            Arc::clone(&metrics),
            Arc::clone(&max_age),
            stopped,
        ));
        let workers = DeliveryWorkers {
            outbox,
            signer,
            wake,
            metrics,
            tracer,
            stop,
            depth,
            max_age,
            generations: std::sync::Mutex::default(),
        };
        let first = workers.generation(settings, policy)?;
        workers.lock().push(first);
        Ok(workers)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Generation>> {
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(
        &self,
        settings: DeliverySettings,
        policy: SubscriberPolicy,
    ) -> Result<Generation, ClientError> {
        let client = delivery_client(&policy, settings.timeout)?;
        let settings = Arc::new(settings);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let instance: u32 = rand::random();
        for n in 0..settings.workers.max(1) {
            let worker = Worker {
                name: format!("worker-{instance:08x}-{n}"),
                outbox: Arc::clone(&self.outbox),
                client: client.clone(),
                signer: self.signer.clone(),
                settings: Arc::clone(&settings),
                policy: policy.clone(),
                wake: Arc::clone(&self.wake),
                metrics: Arc::clone(&self.metrics),
                tracer: self.tracer.clone(),
            };
            tasks.spawn(Arc::new(worker).run(stopped.clone()));
        }
        Ok(Generation {
            stop,
            tasks,
            settings,
            policy,
        })
    }

    /// Put `settings` and `policy` in force: unless both are what the workers run with,
    /// start a new generation of workers with them and tell the current one to stop
    /// claiming. Its deliveries in flight finish (or time out) as usual, so nothing is
    /// dropped or sent twice. Returns whether anything changed.
    pub(super) fn reload(
        &self,
        settings: DeliverySettings,
        policy: SubscriberPolicy,
    ) -> Result<bool, InvalidSetting> {
        settings.validate()?;
        {
            let generations = self.lock();
            if generations
                .last()
                .is_some_and(|current| *current.settings == settings && current.policy == policy)
            {
                return Ok(false);
            }
        }
        self.max_age
            .store(settings.max_age.as_millis() as u64, Ordering::Relaxed);
        let next = self
            .generation(settings, policy)
            .map_err(|err| InvalidSetting::new("delivery", err.to_string()))?;
        let mut generations = self.lock();
        for old in generations.iter_mut() {
            let _ = old.stop.send(true);
        }
        // Generations whose workers are all gone are done with.
        generations.retain_mut(|old| {
            while old.tasks.try_join_next().is_some() {}
            !old.tasks.is_empty()
        });
        generations.push(next);
        self.wake.notify_waiters();
        Ok(true)
    }

    /// Stop claiming; let deliveries in flight finish for up to `grace`, then give the
    /// rest back to the outbox as pending.
    pub(super) async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let generations = std::mem::take(&mut *self.lock());
        for generation in &generations {
            let _ = generation.stop.send(true);
        }
        // Each worker enforces the grace itself; this bounds the wait for their exit.
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), async {
            for mut generation in generations {
                while generation.tasks.join_next().await.is_some() {}
            }
            while self.depth.join_next().await.is_some() {}
        })
        .await;
        self.depth.abort_all();
    }
}

impl Worker {
    /// Claim as slots free up: each delivery is sent and recorded on its own, so a slow
    /// subscriber holds only its own slots, never a whole batch.
    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        // Long enough for an attempt and its bookkeeping; a crashed worker's claims come
        // back after this.
        let lease = self.settings.timeout * 2 + Duration::from_secs(5);
        let capacity = self.settings.max_in_flight_per_worker.max(1);
        let fairness = self.settings.fairness();
        let held = Arc::new(Mutex::new(HashSet::new()));
        let mut attempts = JoinSet::new();
        loop {
            if *stopped.borrow() {
                break;
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let free = capacity.saturating_sub(attempts.len());
            let mut idle = IDLE_POLL;
            if free > 0 {
                match self
                    .outbox
                    .claim_within(self.name.clone(), free, lease, fairness)
                    .await
                {
                    Ok(claimed) if claimed.is_empty() => {
                        // Only a time still ahead: a due delivery that was not claimed
                        // waits for a slot, its task or its subscriber, and a completion
                        // or a wake-up says when that changes.
                        if let Ok(Some(at)) = self.outbox.next_due().await {
                            let ahead = at - now_ms();
                            if ahead > 0 {
                                idle = Duration::from_millis(ahead as u64).min(IDLE_POLL);
                            }
                        }
                    }
                    Ok(claimed) => {
                        let filled = claimed.len() == free;
                        for delivery in claimed {
                            lock(&held).insert(delivery.id);
                            attempts.spawn(Arc::clone(&self).deliver(delivery, Arc::clone(&held)));
                        }
                        if filled {
                            continue;
                        }
                        // The rest waits for a completion, a wake-up or the poll.
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "cannot claim deliveries");
                    }
                }
            }
            tokio::select! {
                Some(joined) = attempts.join_next(), if !attempts.is_empty() => {
                    // Every slot freed meanwhile, in one claim rather than one each.
                    let mut next = Some(joined);
                    while let Some(joined) = next {
                        if let Err(panic) = joined {
                            // Its claim comes back when its lease runs out.
                            tracing::error!(error = %panic, "a delivery attempt panicked");
                        }
                        next = attempts.try_join_next();
                    }
                }
                () = &mut notified => {}
                () = tokio::time::sleep(idle) => {}
                _ = stopped.changed() => {}
            }
        }
        // Stopped: the attempts in flight finish, bounded by the attempt timeout; what is
        // left then goes back to the outbox as pending.
        let finished = tokio::time::timeout(self.settings.timeout, async {
            while attempts.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            attempts.abort_all();
            while attempts.join_next().await.is_some() {}
            let left: Vec<i64> = lock(&held).drain().collect();
            for id in left {
                let _ = self.outbox.release(id, self.name.clone()).await;
            }
        }
    }

    /// Send one claimed delivery, record how it ended and what it said of its subscriber.
    async fn deliver(self: Arc<Self>, delivery: Delivery, held: Arc<Mutex<HashSet<i64>>>) {
        let (completion, signal) = self.attempt(&delivery).await;
        self.record(&delivery, &completion);
        let health = Health {
            signal,
            breaker: self.settings.breaker(),
        };
        match self
            .outbox
            .finish_attempt(
                delivery.id,
                self.name.clone(),
                Some(delivery.subscriber.clone()),
                completion,
                health,
            )
            .await
        {
            Ok(transition) => self.transitioned(&delivery, signal, transition),
            Err(err) => {
                tracing::error!(error = %err, id = delivery.id, "cannot record a delivery attempt");
            }
        }
        lock(&held).remove(&delivery.id);
    }

    /// Log and count what an attempt did to its subscriber.
    fn transitioned(&self, delivery: &Delivery, signal: Signal, transition: Transition) {
        let metrics = &self.metrics;
        if delivery.probe {
            let outcome = if signal == Signal::Healthy {
                "resumed"
            } else {
                "failed"
            };
            metrics.probes.inc(outcome);
        }
        let url = super::admin::redact(&delivery.target_url);
        match transition {
            Transition::Unchanged => {}
            Transition::Paused(reason) => {
                metrics.pauses.inc(reason.as_str());
                tracing::warn!(
                    subscriber = %delivery.subscriber,
                    %url,
                    reason = reason.as_str(),
                    "subscriber paused: its webhooks wait (GET /-/subscribers)"
                );
            }
            Transition::Resumed => {
                metrics.resumes.inc();
                tracing::info!(subscriber = %delivery.subscriber, %url, "subscriber resumed: its backlog drains");
                // Its backlog is due now: every worker may take a share.
                self.wake.notify_waiters();
            }
        }
    }

    /// One attempt: how it ended, as the outbox records it, and what it said of the
    /// subscriber.
    async fn attempt(&self, delivery: &Delivery) -> (Completion, Signal) {
        // Each attempt a trace of its own, linked to the task's submission.
        let submission = self
            .tracer
            .is_on()
            .then(|| delivery.trace.as_deref().and_then(SpanContext::from_traceparent))
            .flatten();
        let mut span = self
            .tracer
            .span_linked("webhook delivery", SpanKind::Client, submission);
        if span.is_recording() {
            span.set_str("runway.webhook_id", delivery.webhook_id.clone());
            span.set_int("runway.delivery.attempt", i64::from(delivery.attempts) + 1);
            if let Some(status) = &delivery.status {
                span.set_str("runway.task.status", status.clone());
            }
        }
        let (sent, signal) = self.send(delivery, &mut span).await;
        let completion = complete(
            sent,
            delivery.attempts,
            &self.settings.schedule,
            now_ms(),
            jittered,
        );
        if span.is_recording() {
            let (outcome, error) = match &completion {
                Completion::Delivered => ("delivered", None),
                Completion::RetryAt { error, .. } => ("retry", Some(error)),
                Completion::Dead { error } => ("dead", Some(error)),
            };
            span.set_str("runway.delivery.outcome", outcome);
            if let Some(error) = error {
                span.set_error(error.clone());
            }
        }
        (completion, signal)
    }

    /// Send `delivery`: how it went, and what that says of the subscriber's health
    /// (timeouts, connection errors and 5xx count toward its breaker).
    async fn send(&self, delivery: &Delivery, span: &mut Span) -> (Result<(), Failure>, Signal) {
        // The literal-address case: the resolver sees only host names.
        let target = match self.policy.check(&delivery.target_url) {
            Ok(target) => target,
            Err(refused) => return (Err(Failure::Refused(refused.to_string())), Signal::Neutral),
        };
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
            .header("webhook-signature", signature);
        // The subscriber may continue the attempt's trace.
        let request = match span.context() {
            Some(context) => request.header(crate::trace::TRACEPARENT, context.traceparent()),
            None => request,
        };
        let request = match request.body(Full::new(delivery.body.clone())) {
            Ok(request) => request,
            Err(e) => {
                let error = format!("cannot build the request: {e}");
                return (Err(Failure::Refused(error)), Signal::Neutral);
            }
        };
        let response = match tokio::time::timeout(self.settings.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                let cause =
                    std::error::Error::source(&err).map_or_else(|| err.to_string(), body::error_chain);
                let failure = Failure::Retry {
                    error: format!("cannot reach the subscriber: {cause}"),
                    retry_after: None,
                };
                return (Err(failure), Signal::Failing);
            }
            Err(_) => {
                let error = format!(
                    "subscriber timed out after {}",
                    crate::duration::format(self.settings.timeout)
                );
                let failure = Failure::Retry {
                    error,
                    retry_after: None,
                };
                return (Err(failure), Signal::Failing);
            }
        };
        let status = response.status();
        span.set_int("http.response.status_code", i64::from(status.as_u16()));
        let asked_to_pause = response.headers().contains_key(PAUSE_HEADER);
        let signal = |otherwise| {
            if asked_to_pause {
                Signal::AskedToPause
            } else {
                otherwise
            }
        };
        if status.is_success() {
            return (Ok(()), signal(Signal::Healthy));
        }
        if status == StatusCode::GONE {
            let failure = Failure::Gone("subscriber answered 410 Gone".into());
            return (Err(failure), signal(Signal::Gone));
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
        let failure = Failure::Retry {
            error: format!("subscriber answered {status}"),
            retry_after,
        };
        let health = if status.is_server_error() {
            Signal::Failing
        } else {
            Signal::Neutral
        };
        (Err(failure), signal(health))
    }

    fn record(&self, delivery: &Delivery, completion: &Completion) {
        let metrics = &self.metrics;
        match completion {
            Completion::Delivered => {
                metrics.delivered.inc();
                let age = (now_ms() - delivery.created_at).max(0) as u64;
                metrics.delivery_latency.observe(Duration::from_millis(age));
                tracing::info!(
                    id = delivery.id,
                    webhook_id = %delivery.webhook_id,
                    attempt = delivery.attempts + 1,
                    since_received_ms = age,
                    "webhook delivered"
                );
            }
            Completion::RetryAt { error, .. } => {
                metrics.retried.inc();
                tracing::info!(id = delivery.id, attempt = delivery.attempts + 1, %error, "delivery failed; will retry");
            }
            Completion::Dead { error } => {
                metrics.dead.inc();
                tracing::warn!(id = delivery.id, attempts = delivery.attempts + 1, %error, "delivery is a dead letter");
            }
        }
    }
}

fn lock(held: &Mutex<HashSet<i64>>) -> std::sync::MutexGuard<'_, HashSet<i64>> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}
