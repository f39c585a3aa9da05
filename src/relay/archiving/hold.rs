//! The outbox as the relay sees it when outputs are archived: a succeeded task's webhook
//! is stored held back, with its archive job, instead of due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::archive::webhook;
use crate::duration::{millis, unix_millis};
use crate::store::{
    Completion, Delivery, DeliveryState, Depth, Enqueued, Fairness, Health, NewDelivery, Outbox,
    ReplayFilter, StoreFuture, SubscriberReport, Transition,
};

/// Wraps the outbox: every webhook of a succeeded task that names outputs (a received
/// callback, or a result the watcher recovered) is held for at most `deadline` while its
/// outputs are copied. Everything else passes through untouched.
pub(in crate::relay) struct HoldForArchive {
    inner: Arc<dyn Outbox>,
    deadline: Duration,
    /// Told of each webhook held, so an archive worker starts on it at once.
    held: Arc<Notify>,
}

impl HoldForArchive {
    pub(in crate::relay) fn new(inner: Arc<dyn Outbox>, deadline: Duration, held: Arc<Notify>) -> Self {
        HoldForArchive {
            inner,
            deadline,
            held,
        }
    }
}

/// Whether `delivery` reports a success whose outputs can be archived. Only a terminal
/// success's body is parsed (again): the one webhook per task that needs it.
fn names_outputs(delivery: &NewDelivery) -> bool {
    if !delivery.terminal || !matches!(delivery.status.as_deref(), Some("3" | "SUCCEEDED")) {
        return false;
    }
    serde_json::from_slice(&delivery.body).is_ok_and(|body| !webhook::outputs(&body).is_empty())
}

impl Outbox for HoldForArchive {
    fn enqueue(&self, mut delivery: NewDelivery) -> StoreFuture<'_, Enqueued> {
        let hold = delivery.hold_until.is_none() && names_outputs(&delivery);
        if hold {
            delivery.hold_until = Some(unix_millis() + millis(self.deadline));
        }
        Box::pin(async move {
            let enqueued = self.inner.enqueue(delivery).await?;
            if hold && matches!(enqueued, Enqueued::Stored(_)) {
                self.held.notify_waiters();
            }
            Ok(enqueued)
        })
    }

    fn claim_within(
        &self,
        owner: String,
        max: usize,
        lease: Duration,
        fairness: Fairness,
    ) -> StoreFuture<'_, Vec<Delivery>> {
        self.inner.claim_within(owner, max, lease, fairness)
    }

    fn finish_attempt(
        &self,
        id: i64,
        owner: String,
        subscriber: Option<String>,
        completion: Completion,
        health: Health,
    ) -> StoreFuture<'_, Transition> {
        self.inner
            .finish_attempt(id, owner, subscriber, completion, health)
    }

    fn release(&self, id: i64, owner: String) -> StoreFuture<'_, ()> {
        self.inner.release(id, owner)
    }

    fn list(&self, state: DeliveryState, after: i64, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        self.inner.list(state, after, limit)
    }

    fn deliveries_of_task(&self, task_key: String, limit: usize) -> StoreFuture<'_, Vec<Delivery>> {
        self.inner.deliveries_of_task(task_key, limit)
    }

    fn replay(&self, id: i64) -> StoreFuture<'_, bool> {
        self.inner.replay(id)
    }

    fn next_due(&self) -> StoreFuture<'_, Option<i64>> {
        self.inner.next_due()
    }

    fn depth(&self) -> StoreFuture<'_, Depth> {
        self.inner.depth()
    }

    fn subscribers(&self, after: String, limit: usize) -> StoreFuture<'_, Vec<SubscriberReport>> {
        self.inner.subscribers(after, limit)
    }

    fn pause_subscriber(&self, id: String) -> StoreFuture<'_, bool> {
        self.inner.pause_subscriber(id)
    }

    fn resume_subscriber(&self, id: String) -> StoreFuture<'_, bool> {
        self.inner.resume_subscriber(id)
    }

    fn replay_dead(&self, filter: ReplayFilter) -> StoreFuture<'_, u64> {
        self.inner.replay_dead(filter)
    }

    fn expire(&self, max_age: Duration) -> StoreFuture<'_, u64> {
        self.inner.expire(max_age)
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::event_delivery;

    #[test]
    fn only_a_success_naming_outputs_is_held() {
        let held = |body: &str| {
            names_outputs(&event_delivery(
                "https://app.example/hook",
                Bytes::from(body.to_owned()),
            ))
        };
        assert!(held(
            r#"{"task_id":"t1","status":"3","video_url":"https://runwaycdn.cometapi.com/v.mp4"}"#
        ));
        assert!(held(
            r#"{"id":"t1","status":"SUCCEEDED","output":["https://dnznrvs05pmza.cloudfront.net/a.mp4"]}"#
        ));
        assert!(
            !held(r#"{"task_id":"t1","status":"3","video_url":""}"#),
            "no output"
        );
        assert!(
            !held(r#"{"task_id":"t1","status":"2","video_url":"https://c/v.mp4"}"#),
            "failed"
        );
        assert!(!held(r#"{"task_id":"t1","status":"1"}"#), "running");
        assert!(!held(
            r#"{"id":"t1","status":"RUNNING","output":["https://c/a.mp4"]}"#
        ));
    }
}
