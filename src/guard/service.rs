//! [`TaskGuard`], the service: reserve a task slot and the budget for a submission before
//! it is sent, and give the reservation back when no task came of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::refusal::Refusal;
use super::{Directory, GuardMetrics, GuardSettings};
use crate::body::{self, Body, Bounded, BoxError};
use crate::context::{self, BytesBody, Inner, OnSubmission, SubmissionBody, SubmissionHandler};
use crate::duration::{millis, unix_millis};
use crate::limit::WaitBounds;
use crate::retry::RetryOutcome;
use crate::route::RouteClass;
use crate::settings::{InvalidSetting, Live, at_least_one};
use crate::tasks::{
    Limit, Recorded, Reservation, Reserved, Submission, TaskFormat, TaskLimits, TaskStore, Usage, key_hash,
};

/// How often a waiting submission asks the store again when no task of this process has
/// finished: tasks also end on other replicas, which cannot wake it.
const POLL_OTHERS: Duration = Duration::from_millis(500);

/// The longest model name kept for the ledger (Runway's are under 20 characters).
const MODEL_LIMIT: usize = 64;

/// The handler of [`TaskGuard`]: the watch list it counts in, the rules (reloadable),
/// the submissions waiting for a slot, and the metrics. Made by [`TaskGuardLayer`](super::TaskGuardLayer).
#[derive(Debug)]
pub struct Guard {
    pub(super) store: Arc<dyn TaskStore>,
    pub(super) usage: Arc<Usage>,
    pub(super) rules: Live<GuardRules>,
    pub(super) unknown_for: Duration,
    pub(super) body_limit: usize,
    pub(super) waiting: AtomicUsize,
    pub(super) metrics: Arc<GuardMetrics>,
}

/// The part of the guard a reload replaces.
#[derive(Debug)]
pub(super) struct GuardRules {
    directory: Directory,
    /// What submissions are estimated to cost (`[[guard.prices]]`).
    prices: Vec<super::Price>,
    unknown_points: u64,
    /// No limit is set for anyone: submissions are only labelled for the ledger.
    unlimited: bool,
    max_wait: Duration,
    max_queue: usize,
}

impl GuardRules {
    /// Who is who, and their limits.
    pub(super) fn directory(&self) -> &Directory {
        &self.directory
    }

    pub(super) fn new(settings: &GuardSettings, waits: WaitBounds) -> Result<Self, InvalidSetting> {
        let directory = settings.directory()?;
        at_least_one(waits.max_queue, "limit.max_queue")?;
        Ok(GuardRules {
            directory,
            prices: settings.prices.clone(),
            unknown_points: settings.unknown_model_points,
            unlimited: settings.is_unlimited(),
            max_wait: waits.max_wait,
            max_queue: waits.max_queue,
        })
    }
}

/// Holds each submission until the task limits allow it, refuses it when a budget is
/// spent, and names its key and model for the ledger. See the [module docs](super).
pub type TaskGuard<S> = OnSubmission<S, Guard>;

impl SubmissionHandler for Guard {
    type Ticket = ();

    fn take<B>(&self, request: &Request<B>) -> Option<()> {
        (context::class_of(request) == RouteClass::Submission).then_some(())
    }

    fn handle<S: Inner<RB>, RB: BytesBody>(
        self: Arc<Self>,
        (): (),
        inner: S,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, S::Error>> + Send {
        self.guard(inner, request)
    }
}

impl Guard {
    async fn guard<S, RB>(
        self: Arc<Self>,
        inner: S,
        request: Request<Body>,
    ) -> Result<Response<Body>, S::Error>
    where
        S: Service<Request<Body>, Response = Response<RB>> + Send,
        S::Future: Send,
        RB: http_body::Body<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        let hash = key_hash(
            request
                .headers()
                .get(header::AUTHORIZATION)
                .map_or(&b""[..], HeaderValue::as_bytes),
        );
        let rules = self.rules.get();
        let key = rules.directory.key_of(hash.clone());
        let (model, duration_ms, mut request) = match SubmissionBody::of(&request, self.body_limit) {
            Some(buffered) => (model_of(buffered), buffered.fields().duration_ms, request),
            None => match read_for_model(request, self.body_limit).await {
                Ok(read) => read,
                Err(refusal) => return Ok(refusal),
            },
        };
        let path = request.uri().path().to_owned();
        let format = if path.starts_with("/runwayml/") {
            TaskFormat::Official
        } else {
            TaskFormat::Reverse
        };
        let limits = self.limits(&rules, &key);
        let mut reservation = None;
        if !rules.unlimited && !limits.is_unlimited() {
            let estimate = super::prices::estimate(
                &rules.prices,
                rules.unknown_points,
                model.as_deref(),
                &path,
                duration_ms,
            );
            if !estimate.priced {
                self.metrics.unpriced(model.as_deref());
            }
            let wanted = Reservation {
                id: format!("pending-{:032x}", rand::random::<u128>()),
                format,
                route: path.clone(),
                key_hash: hash.clone(),
                key: key.clone(),
                model: model.clone(),
                points: Some(estimate.points),
            };
            match self.reserve(&wanted, rules).await {
                Ok(()) => {
                    self.metrics.granted.inc();
                    reservation = Some(Held {
                        id: Some(wanted.id),
                        shared: Arc::clone(&self),
                    });
                }
                Err(refusal) => {
                    self.metrics.refused(refusal.reason());
                    tracing::info!(key = %key, reason = refusal.reason(), "a submission was refused by the task guard");
                    return Ok(refusal.into_response(&path, unix_millis()));
                }
            }
        }
        request.extensions_mut().insert(Submission {
            key_hash: hash,
            key: key.clone(),
            model,
            reservation: reservation.as_ref().and_then(|held| held.id.clone()),
        });
        let response = inner.oneshot(request).await?.map(body::boxed);
        if response.extensions().get::<RetryOutcome>() == Some(&RetryOutcome::OutcomeUnknown) {
            // Never finishes: counted now.
            self.usage.outcome_unknown(&key);
        }
        if let Some(mut held) = reservation
            && response.extensions().get::<Recorded>().is_some()
        {
            // The reservation is the task now; it ends when the watch list sees it end.
            held.id = None;
        }
        Ok(response)
    }

    /// What `key` may hold under `rules`.
    fn limits(&self, rules: &GuardRules, key: &str) -> TaskLimits {
        TaskLimits {
            unknown_for: self.unknown_for,
            ..rules.directory.limits_for(key)
        }
    }

    /// Wait for room under `rules`, then hold it as `wanted`. After a reload, the rules
    /// (its limits and `max_wait`) are the new ones from the next try on; `max_wait` is
    /// still counted from the arrival.
    async fn reserve(&self, wanted: &Reservation, mut rules: Arc<GuardRules>) -> Result<(), Refusal> {
        let arrived = Instant::now();
        let mut queued: Option<Queued<'_>> = None;
        let mut limits = self.limits(&rules, &wanted.key);
        loop {
            // Registered before the store is asked, so a task ending (or a reload) in
            // between wakes it.
            let freed = self.usage.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let reloaded = self.rules.changed();
            tokio::pin!(reloaded);
            reloaded.as_mut().enable();
            let current = self.rules.get();
            if !Arc::ptr_eq(&current, &rules) {
                limits = self.limits(&current, &wanted.key);
                rules = current;
            }
            let max_wait = rules.max_wait;
            let deadline = arrived + max_wait;
            let refused = match self.store.reserve(wanted.clone(), limits).await {
                Ok(Reserved::Granted) => return Ok(()),
                Ok(Reserved::Refused { limit, used }) => (limit, used),
                Err(err) => {
                    tracing::warn!(error = %err, "the task guard's store did not answer");
                    return Err(Refusal::StoreUnavailable);
                }
            };
            let (limit, used) = refused;
            if !limit.is_in_flight() {
                return Err(self.budget_refusal(wanted, limits, limit, used).await);
            }
            let cap = match limit {
                Limit::InFlight => limits.in_flight,
                _ => limits.in_flight_per_key,
            }
            .unwrap_or(0);
            let now = Instant::now();
            if now >= deadline {
                return Err(Refusal::MaxWait {
                    limit,
                    key: wanted.key.clone(),
                    cap,
                    max_wait,
                });
            }
            if queued.is_none() {
                queued = Some(Queued::join(self, rules.max_queue).ok_or(Refusal::QueueFull {
                    waiting: rules.max_queue,
                })?);
            }
            let nap = POLL_OTHERS.min(deadline - now);
            tokio::select! {
                () = &mut freed => {}
                () = &mut reloaded => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// The refusal of a spent budget, with when it frees up.
    async fn budget_refusal(
        &self,
        wanted: &Reservation,
        limits: TaskLimits,
        limit: Limit,
        used: i64,
    ) -> Refusal {
        let (budget, points) = match limit {
            Limit::Tasks => (limits.tasks, false),
            Limit::Points => (limits.points, true),
            Limit::TasksPerKey => (limits.tasks_per_key, false),
            _ => (limits.points_per_key, true),
        };
        let budget = budget.unwrap_or(0);
        let whose = limit.is_per_key().then(|| wanted.key.clone());
        let since = unix_millis() - millis(limits.window);
        let frees_at = match self.store.spend(whose, since).await {
            Ok(spent) => super::refusal::frees_at(&spent, budget, points, limits.window),
            // Not knowing when it frees up is no reason to send it: say "a window from now".
            Err(_) if budget > 0 => Some(unix_millis() + millis(limits.window)),
            Err(_) => None,
        };
        Refusal::Budget {
            limit,
            key: wanted.key.clone(),
            budget,
            used,
            window: limits.window,
            frees_at,
            estimate: points.then_some(wanted.points).flatten(),
        }
    }
}

/// The model a submission names, if it is a plausible one.
fn model_of(buffered: &SubmissionBody) -> Option<String> {
    let model = buffered.fields().model.as_deref()?;
    let fine = !model.is_empty()
        && model.len() <= MODEL_LIMIT
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    fine.then(|| model.to_owned())
}

/// A submission the context did not buffer (the guard used alone, or a body over the
/// context's bound): read up to `limit` for its model, and buffered for the layers
/// inside. Larger, it goes on unnamed; broken off, it is answered 400 with nothing
/// reserved.
async fn read_for_model(
    request: Request<Body>,
    limit: usize,
) -> Result<(Option<String>, Option<u64>, Request<Body>), Response<Body>> {
    let (mut parts, body) = request.into_parts();
    match body::read_bounded(body, limit).await {
        Ok(Bounded::Whole(bytes)) => {
            let buffered = SubmissionBody::new(bytes.clone());
            let (model, duration_ms) = (model_of(&buffered), buffered.fields().duration_ms);
            parts.extensions.insert(buffered);
            Ok((model, duration_ms, Request::from_parts(parts, body::full(bytes))))
        }
        Ok(Bounded::Partial(body)) => Ok((None, None, Request::from_parts(parts, body))),
        // The client went away mid-body: nothing to send, nothing reserved.
        Err(err) => {
            tracing::debug!(error = %body::error_chain(&err), "a submission's body broke off");
            let msg = format!(
                "the submission's body could not be read: {}",
                body::error_chain(&err)
            );
            Err(crate::envelope::error_response_for(
                parts.uri.path(),
                http::StatusCode::BAD_REQUEST,
                &msg,
            ))
        }
    }
}

/// A place in the queue of submissions waiting for a slot, given up on drop.
struct Queued<'a> {
    shared: &'a Guard,
    _waiting: crate::metrics::GaugeGuard,
}

impl<'a> Queued<'a> {
    fn join(shared: &'a Guard, max_queue: usize) -> Option<Queued<'a>> {
        let joined = shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_queue).then_some(n + 1)
            })
            .is_ok();
        joined.then(|| Queued {
            shared,
            _waiting: shared.metrics.waiting.track(),
        })
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reservation not (yet) turned into a task: released when dropped with its id still
/// set (the submission failed, was not accepted, or the client went away).
struct Held {
    id: Option<String>,
    shared: Arc<Guard>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let shared = Arc::clone(&self.shared);
        // Drop cannot wait; a reservation left behind still expires after `unknown_for`.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                match shared.store.cancel_reservation(id).await {
                    Ok(()) => shared.usage.freed(),
                    Err(err) => tracing::warn!(error = %err, "a task reservation could not be released"),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_of(body: &[u8]) -> Option<String> {
        super::model_of(&SubmissionBody::new(bytes::Bytes::copy_from_slice(body)))
    }

    #[test]
    fn only_plausible_model_names_reach_the_ledger() {
        assert_eq!(
            model_of(br#"{"model":"gen4_turbo","x":[1,2]}"#).as_deref(),
            Some("gen4_turbo")
        );
        assert_eq!(model_of(br#"{"prompt":"a cat"}"#), None);
        assert_eq!(model_of(br#"{"model":"a\nb"}"#), None);
        assert_eq!(model_of(&[b'{', 0xff]), None);
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MODEL_LIMIT + 1));
        assert_eq!(model_of(long.as_bytes()), None);
    }
}
