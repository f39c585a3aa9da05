//! The delivery workers' settings (`[delivery]`).

use std::time::Duration;

use crate::settings::{InvalidSetting, at_least_one, check, longer_than_zero, parse, settings, show};

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
        )
    }
}
