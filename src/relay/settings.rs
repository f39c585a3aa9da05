//! The delivery workers' settings (`[delivery]`).

use std::time::Duration;

use crate::limit::{QuotaSpec, parse_optional};
use crate::settings::{InvalidSetting, at_least_one, check, longer_than_zero, parse, settings, show};
use crate::store::{Breaker, Fairness, Rate};

/// A minute and an hour, in seconds, for the default schedule.
const M: u64 = 60;
const H: u64 = 3600;

settings! {
    /// Settings of the delivery workers (`[delivery]` in the config file). Field names are
    /// the config keys.
    #[derive(Clone, Debug, PartialEq)]
    #[non_exhaustive]
    pub struct DeliverySettings in delivery {
        /// Wait before each attempt: the first is the wait before the first attempt, and the
        /// number of entries is the number of attempts (default: immediately, 5 s, 5 min,
        /// 30 min, 2 h, 5 h, 10 h, 10 h, each with ±20% jitter).
        pub schedule: Vec<Duration> = [0, 5, 5 * M, 30 * M, 2 * H, 5 * H, 10 * H, 10 * H]
            .map(Duration::from_secs)
            .to_vec(),
        /// Time allowed for one attempt (default 15 s).
        pub timeout: Duration = Duration::from_secs(15),
        /// Number of workers (default 4); each sends up to `max_in_flight_per_worker`
        /// deliveries at once.
        pub workers: usize = 4,
        /// Deliveries one worker claims and sends at once, 1 to 1024 (default 16): with
        /// `workers`, how many subscribers can be waited on at the same time.
        pub max_in_flight_per_worker: usize = 16,
        /// The longest a subscriber's `Retry-After` can push an attempt back (default 1 h).
        pub retry_after_cap: Duration = Duration::from_secs(3600),
        /// Most attempts in flight to one subscriber, across every worker and replica
        /// (default 8): a slow subscriber holds at most this many slots.
        pub max_in_flight_per_subscriber: usize = 8,
        /// Most attempts started per period to one subscriber, like `50/s` (default: no
        /// limit). Shared by the replicas through the store.
        pub rate_per_subscriber: Option<QuotaSpec> = None,
        /// Consecutive failures (timeouts, connection errors, 5xx) that pause a
        /// subscriber (default 10).
        pub pause_after: u32 = 10,
        /// How often a paused subscriber is sent one probe (default 1 min).
        pub probe_interval: Duration = Duration::from_secs(60),
        /// How long a webhook may wait to be delivered before it is a dead letter, paused
        /// subscriber or not (default 3 d).
        pub max_age: Duration = Duration::from_secs(3 * 24 * H),
    }
    rows {
        schedule: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_SCHEDULE",
            flag: "delivery-schedule",
            doc: "Wait before each delivery attempt (with jitter); then a dead letter.",
            parse: parse::schedule, show: show::schedule;
        timeout: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_TIMEOUT",
            flag: "delivery-timeout",
            doc: "Time allowed for one delivery attempt.",
            parse: parse::positive_duration, show: show::duration;
        workers: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_WORKERS",
            flag: "delivery-workers",
            doc: "Delivery workers (each sends up to delivery.max_in_flight_per_worker webhooks at once).",
            parse: parse::count, show: show::plain;
        max_in_flight_per_worker: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_MAX_IN_FLIGHT_PER_WORKER",
            flag: "delivery-max-in-flight-per-worker",
            doc: "Deliveries each worker sends at once (all workers: delivery.workers times this).",
            parse: parse::count, show: show::plain;
        retry_after_cap: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_RETRY_AFTER_CAP",
            flag: "delivery-retry-after-cap",
            doc: "The longest a subscriber's Retry-After can push a delivery back.",
            parse: parse::duration, show: show::duration;
        max_in_flight_per_subscriber: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_MAX_IN_FLIGHT_PER_SUBSCRIBER",
            flag: "delivery-max-in-flight-per-subscriber",
            doc: "Most delivery attempts in flight to one subscriber, across workers and replicas.",
            parse: parse::count, show: show::plain;
        rate_per_subscriber: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_RATE_PER_SUBSCRIBER",
            flag: "delivery-rate-per-subscriber",
            doc: "Most delivery attempts per period to one subscriber, like 50/s (unlimited: none).",
            parse: parse_optional, show: show::optional;
        pause_after: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_PAUSE_AFTER",
            flag: "delivery-pause-after",
            doc: "Consecutive failed attempts (timeout, connection error, 5xx) that pause a subscriber.",
            parse: parse::count, show: show::plain;
        probe_interval: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_PROBE_INTERVAL",
            flag: "delivery-probe-interval",
            doc: "How often a paused subscriber is sent one probe; its first 2xx resumes it.",
            parse: parse::positive_duration, show: show::duration;
        max_age: live, under Callbacks,
            env: "RUNWAY_PROXY_DELIVERY_MAX_AGE",
            flag: "delivery-max-age",
            doc: "How long a webhook may wait to be delivered before it is a dead letter.",
            parse: parse::positive_duration, show: show::duration;
    }
}

impl DeliverySettings {
    /// Check every value; the config and [`RelayBuilder::start`](super::RelayBuilder::start)
    /// both call this.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(!self.schedule.is_empty(), "delivery.schedule", || {
            "needs at least one wait, like 0s,5s,5m".into()
        })?;
        longer_than_zero(self.timeout, "delivery.timeout")?;
        at_least_one(self.workers, "delivery.workers")?;
        check(
            (1..=1024).contains(&self.max_in_flight_per_worker),
            "delivery.max_in_flight_per_worker",
            || format!("{} is not a number from 1 to 1024", self.max_in_flight_per_worker),
        )?;
        check(
            (1..=100_000).contains(&self.max_in_flight_per_subscriber),
            "delivery.max_in_flight_per_subscriber",
            || {
                format!(
                    "{} is not a number from 1 to 100000",
                    self.max_in_flight_per_subscriber
                )
            },
        )?;
        check(self.pause_after >= 1, "delivery.pause_after", || {
            "must be at least 1".into()
        })?;
        longer_than_zero(self.probe_interval, "delivery.probe_interval")?;
        longer_than_zero(self.max_age, "delivery.max_age")
    }

    /// How claims share the slots among subscribers.
    pub fn fairness(&self) -> Fairness {
        Fairness {
            max_in_flight: u32::try_from(self.max_in_flight_per_subscriber).unwrap_or(u32::MAX),
            rate: self.rate_per_subscriber.map(|quota| Rate {
                interval: quota.replenish_interval(),
                burst: quota.burst_size().get(),
            }),
        }
    }

    /// When a subscriber is paused, and how it is probed.
    pub fn breaker(&self) -> Breaker {
        Breaker {
            pause_after: self.pause_after,
            probe_interval: self.probe_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_check_themselves() {
        assert!(DeliverySettings::default().validate().is_ok());
        let mut settings = DeliverySettings::default();
        settings.schedule.clear();
        assert_eq!(settings.validate().unwrap_err().key, "delivery.schedule");
        settings = DeliverySettings::default();
        settings.workers = 0;
        assert_eq!(settings.validate().unwrap_err().key, "delivery.workers");
        for in_flight in [0, 1025] {
            settings = DeliverySettings::default();
            settings.max_in_flight_per_worker = in_flight;
            let key = settings.validate().unwrap_err().key;
            assert_eq!(key, "delivery.max_in_flight_per_worker");
        }
        settings = DeliverySettings::default();
        settings.max_in_flight_per_subscriber = 0;
        let key = settings.validate().unwrap_err().key;
        assert_eq!(key, "delivery.max_in_flight_per_subscriber");
        settings = DeliverySettings::default();
        settings.pause_after = 0;
        assert_eq!(settings.validate().unwrap_err().key, "delivery.pause_after");
        settings = DeliverySettings::default();
        settings.probe_interval = Duration::ZERO;
        assert_eq!(settings.validate().unwrap_err().key, "delivery.probe_interval");
    }

    #[test]
    fn a_rate_per_subscriber_is_kept_as_its_interval_and_burst() {
        let mut settings = DeliverySettings::default();
        assert_eq!(settings.fairness().rate, None);
        assert_eq!(settings.fairness().max_in_flight, 8);
        settings.rate_per_subscriber = Some(QuotaSpec::parse("50/s").unwrap());
        let rate = settings.fairness().rate.unwrap();
        assert_eq!((rate.interval, rate.burst), (Duration::from_millis(20), 50));
    }
}
