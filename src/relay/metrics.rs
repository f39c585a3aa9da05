//! What the webhook receiver and the delivery workers record.

use crate::metrics::{
    Counter, DELIVERY_BUCKETS, Gauge, Histogram, LabeledCounters, MetricSet, header, write_family, write_one,
};
use crate::store::{SubscriberReport, SubscriberState};

/// Subscriber states, as the gauges label them.
const STATES: [&str; 3] = ["active", "paused", "probing"];

/// What a probe of a paused subscriber did.
const PROBE_OUTCOMES: [&str; 2] = ["resumed", "failed"];

/// Why subscribers were paused.
const PAUSE_REASONS: [&str; 4] = ["failures", "operator", "gone", "asked"];

/// Metrics of the [`Relay`](super::Relay).
#[derive(Debug)]
pub struct RelayMetrics {
    /// Webhooks received with a valid token.
    pub webhooks_received: Counter,
    /// Webhooks stored for delivery.
    pub webhooks_stored: Counter,
    /// Webhooks that were stored before (not stored again).
    pub webhooks_duplicate: Counter,
    /// Webhooks stored but not to be delivered (an older status after the terminal one).
    pub webhooks_superseded: Counter,
    /// Webhooks refused for a bad or forged token.
    pub webhooks_rejected: Counter,
    /// Webhooks refused through a genuine token bound to another task (or naming no task
    /// once it is bound).
    pub webhooks_refused_other_task: Counter,
    /// Terminal callbacks the upstream confirmed (`--confirm-callbacks`).
    pub callbacks_confirmed: Counter,
    /// Terminal callbacks the upstream contradicted: not relayed.
    pub callbacks_contradicted: Counter,
    /// Terminal callbacks that could not be checked: relayed as they came.
    pub callbacks_unconfirmed: Counter,
    /// Delivery attempts that reached the subscriber.
    pub delivered: Counter,
    /// Delivery attempts that failed and will be tried again.
    pub retried: Counter,
    /// Deliveries given up: dead letters.
    pub dead: Counter,
    /// Deliveries pending or in flight, as the outbox last reported (refreshed every second).
    pub outbox_depth: Gauge,
    /// 1 while the outbox's database answers, 0 while it does not (asked every second).
    pub outbox_up: Gauge,
    /// Time from storing a webhook to its delivery.
    pub delivery_latency: Histogram,
    /// Subscribers by state (active, paused, probing), as the store last reported.
    pub subscribers: [Gauge; 3],
    /// Deliveries waiting, by their subscriber's state.
    pub subscriber_backlog: [Gauge; 3],
    /// Probes of paused subscribers, by outcome (resumed, failed).
    pub probes: LabeledCounters<2>,
    /// Subscribers paused, by reason (failures, operator, gone, asked).
    pub pauses: LabeledCounters<4>,
    /// Subscribers resumed (by a probe, an attempt, or an operator).
    pub resumes: Counter,
    /// Deliveries that waited longer than `delivery.max_age`: dead letters.
    pub expired: Counter,
}

impl RelayMetrics {
    /// Set the subscriber gauges from the store's report.
    pub(super) fn publish_subscribers(&self, subscribers: &[SubscriberReport]) {
        let mut count = [0i64; 3];
        let mut backlog = [0i64; 3];
        for subscriber in subscribers {
            let at = match subscriber.state {
                SubscriberState::Active => 0,
                SubscriberState::Paused => 1,
                SubscriberState::Probing => 2,
            };
            count[at] += 1;
            backlog[at] += i64::try_from(subscriber.backlog).unwrap_or(i64::MAX);
        }
        for at in 0..3 {
            self.subscribers[at].set(count[at]);
            self.subscriber_backlog[at].set(backlog[at]);
        }
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            webhooks_received: Counter::default(),
            webhooks_stored: Counter::default(),
            webhooks_duplicate: Counter::default(),
            webhooks_superseded: Counter::default(),
            webhooks_rejected: Counter::default(),
            webhooks_refused_other_task: Counter::default(),
            callbacks_confirmed: Counter::default(),
            callbacks_contradicted: Counter::default(),
            callbacks_unconfirmed: Counter::default(),
            delivered: Counter::default(),
            retried: Counter::default(),
            dead: Counter::default(),
            outbox_depth: Gauge::default(),
            outbox_up: Gauge::default(),
            delivery_latency: Histogram::new(DELIVERY_BUCKETS),
            subscribers: Default::default(),
            subscriber_backlog: Default::default(),
            probes: LabeledCounters::new(&PROBE_OUTCOMES),
            pauses: LabeledCounters::new(&PAUSE_REASONS),
            resumes: Counter::default(),
            expired: Counter::default(),
        }
    }
}

impl MetricSet for RelayMetrics {
    fn render(&self, out: &mut String) {
        for (name, help, counter) in [
            (
                "runway_proxy_webhooks_received_total",
                "Webhooks received with a valid token.",
                &self.webhooks_received,
            ),
            (
                "runway_proxy_webhooks_stored_total",
                "Webhooks stored for delivery.",
                &self.webhooks_stored,
            ),
            (
                "runway_proxy_webhooks_duplicate_total",
                "Webhooks stored before, not stored again.",
                &self.webhooks_duplicate,
            ),
            (
                "runway_proxy_webhooks_superseded_total",
                "Webhooks not delivered: an older status after the terminal one.",
                &self.webhooks_superseded,
            ),
        ] {
            write_one(out, name, "counter", help, counter.get());
        }
        write_family(
            out,
            "runway_proxy_webhooks_rejected_total",
            "counter",
            "Webhooks refused, by reason: a bad, forged or expired token; a genuine token bound to another task.",
            "reason",
            [
                ("token", self.webhooks_rejected.get()),
                ("other_task", self.webhooks_refused_other_task.get()),
            ],
        );
        write_family(
            out,
            "runway_proxy_callback_confirmations_total",
            "counter",
            "Final callbacks checked against the upstream before relaying (--confirm-callbacks), by result.",
            "result",
            [
                ("confirmed", self.callbacks_confirmed.get()),
                ("contradicted", self.callbacks_contradicted.get()),
                ("unconfirmed", self.callbacks_unconfirmed.get()),
            ],
        );
        let results = [
            ("delivered", &self.delivered),
            ("retried", &self.retried),
            ("dead", &self.dead),
        ];
        let help = "Delivery attempts by result.";
        let results = results.map(|(result, counter)| (result, counter.get()));
        write_family(
            out,
            "runway_proxy_deliveries_total",
            "counter",
            help,
            "result",
            results,
        );
        let depth = self.outbox_depth.get();
        write_one(
            out,
            "runway_proxy_outbox_depth",
            "gauge",
            "Deliveries pending or in flight.",
            depth,
        );
        write_one(
            out,
            "runway_proxy_outbox_up",
            "gauge",
            "1 while the outbox's database answers, 0 while it does not (webhooks get 503 meanwhile).",
            self.outbox_up.get(),
        );
        let name = "runway_proxy_delivery_latency_seconds";
        header(
            out,
            name,
            "histogram",
            "Time from storing a webhook to its delivery.",
        );
        self.delivery_latency.render(out, name, "");
        write_family(
            out,
            "runway_proxy_subscribers",
            "gauge",
            "Subscribers by state: active, paused (deliveries wait), probing (paused, a probe in flight).",
            "state",
            STATES.iter().zip(self.subscribers.iter().map(Gauge::get)),
        );
        write_family(
            out,
            "runway_proxy_subscriber_backlog",
            "gauge",
            "Deliveries waiting, by their subscriber's state.",
            "state",
            STATES.iter().zip(self.subscriber_backlog.iter().map(Gauge::get)),
        );
        self.probes.render(
            out,
            "runway_proxy_subscriber_probes_total",
            "Probes sent to paused subscribers, by outcome.",
            "outcome",
        );
        self.pauses.render(
            out,
            "runway_proxy_subscriber_pauses_total",
            "Subscribers paused, by reason: failures in a row, an operator, repeated 410 Gone, asked by header.",
            "reason",
        );
        write_one(
            out,
            "runway_proxy_subscriber_resumes_total",
            "counter",
            "Paused subscribers resumed (a probe or attempt that succeeded, or an operator).",
            self.resumes.get(),
        );
        write_one(
            out,
            "runway_proxy_deliveries_expired_total",
            "counter",
            "Deliveries that waited longer than delivery.max_age: dead letters.",
            self.expired.get(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PauseReason;

    /// The labels are the store's own names: a reason or state the metrics did not list
    /// would be counted nowhere (`LabeledCounters` drops labels it does not know).
    #[test]
    fn every_pause_reason_and_subscriber_state_has_its_series() {
        for reason in PauseReason::ALL {
            assert!(PAUSE_REASONS.contains(&reason.as_str()), "{reason:?}");
        }
        for state in SubscriberState::ALL {
            assert!(STATES.contains(&state.as_str()), "{state:?}");
        }
        assert_eq!(
            (PAUSE_REASONS.len(), STATES.len()),
            (PauseReason::ALL.len(), SubscriberState::ALL.len())
        );
    }
}
