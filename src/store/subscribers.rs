//! Subscribers: the endpoints webhooks are relayed to, each scheduled on its own.
//!
//! Every delivery belongs to one subscriber (its target URL, named by [`subscriber_id`]).
//! The stores keep a record per subscriber beside the deliveries: whether it is active or
//! paused (and why), its consecutive failures, when it was last served (claims go
//! round-robin, least recently served first), its rate allowance and its failure rate
//! over the last hour. Claims honour [`Fairness`]; each attempt's [`Signal`] moves the
//! circuit breaker ([`Breaker`]).

use std::time::Duration;

use serde::Serialize;

/// A subscriber's id: 16 hex digits of the SHA-256 of its URL. Short, stable, and safe to
/// show where the URL (which may carry a secret in its query) is not.
pub fn subscriber_id(url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    let mut id = String::with_capacity(16);
    for byte in &digest.as_ref()[..8] {
        use std::fmt::Write;
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// How claims share the delivery slots among subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fairness {
    /// Most attempts in flight to one subscriber, across every worker and replica.
    pub max_in_flight: u32,
    /// Most attempts started per period to one subscriber, if limited.
    pub rate: Option<Rate>,
}

impl Fairness {
    /// No per-subscriber limit (one delivery per task still, in order).
    pub const UNLIMITED: Fairness = Fairness {
        max_in_flight: u32::MAX,
        rate: None,
    };
}

/// A rate: one attempt per `interval`, with bursts of up to `burst` after a quiet spell.
/// It is kept in the subscriber's record (GCRA: a theoretical arrival time), so every
/// replica's claims share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// The time between two attempts at the steady rate.
    pub interval: Duration,
    /// How many may go at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// The time between two attempts, in milliseconds (at least 1: the stores keep
    /// milliseconds).
    pub fn interval_ms(&self) -> i64 {
        (self.interval.as_millis() as i64).max(1)
    }

    /// Attempts allowed now for a subscriber whose theoretical arrival time is `tat`.
    pub(crate) fn allowance(&self, tat: i64, now: i64) -> i64 {
        let interval = self.interval_ms();
        let tat = tat.max(now);
        ((now + i64::from(self.burst) * interval - tat) / interval).max(0)
    }

    /// The theoretical arrival time after `taken` attempts from `tat` at `now`.
    pub(crate) fn advance(&self, tat: i64, now: i64, taken: i64) -> i64 {
        tat.max(now) + taken * self.interval_ms()
    }
}

/// When the circuit breaker opens, and how it probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    /// Consecutive failures (timeouts, connection errors, 5xx) that pause a subscriber.
    pub pause_after: u32,
    /// How often a paused subscriber is sent one probe.
    pub probe_interval: Duration,
}

/// Consecutive `410 Gone` answers after which a subscriber has paused itself.
pub const GONE_PAUSES_AFTER: u32 = 3;

/// What one attempt said about its subscriber's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// It answered 2xx.
    Healthy,
    /// A timeout, a connection error or a 5xx: counts toward the breaker.
    Failing,
    /// It answered `410 Gone`: repeated, the subscriber pauses itself.
    Gone,
    /// It asked to be paused (the `runway-proxy-pause` response header).
    AskedToPause,
    /// Anything else (a 4xx, a refused address): the breaker is not moved.
    Neutral,
}

/// Why a subscriber is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// `delivery.pause_after` consecutive failures: probed, resumed by the first success.
    Failures,
    /// An operator paused it (`POST /-/subscribers/{id}/pause`).
    Operator,
    /// It answered `410 Gone` repeatedly.
    Gone,
    /// It asked to be paused, with the `runway-proxy-pause` header.
    Asked,
}

impl PauseReason {
    /// The name kept in the store, the admin API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::Failures => "failures",
            PauseReason::Operator => "operator",
            PauseReason::Gone => "gone",
            PauseReason::Asked => "asked",
        }
    }

    /// Parse a reason's name.
    pub fn parse(text: &str) -> Option<PauseReason> {
        Some(match text {
            "failures" => PauseReason::Failures,
            "operator" => PauseReason::Operator,
            "gone" => PauseReason::Gone,
            "asked" => PauseReason::Asked,
            _ => return None,
        })
    }

    /// Every reason, for metrics that show each from the start.
    pub const ALL: [PauseReason; 4] = [
        PauseReason::Failures,
        PauseReason::Operator,
        PauseReason::Gone,
        PauseReason::Asked,
    ];
}

/// What an attempt's completion did to its subscriber.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed state.
    #[default]
    Unchanged,
    /// The subscriber is paused now.
    Paused(PauseReason),
    /// The subscriber was paused and is active again.
    Resumed,
}

impl Transition {
    /// Read back the transition column the health update sets.
    pub(crate) fn parse(text: Option<&str>) -> Transition {
        match text {
            Some("resumed") => Transition::Resumed,
            Some(reason) => PauseReason::parse(reason).map_or(Transition::Unchanged, Transition::Paused),
            None => Transition::Unchanged,
        }
    }
}

/// A subscriber's state, as the admin API and the metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriberState {
    /// Deliveries go out, at its cap and rate.
    Active,
    /// Its deliveries wait.
    Paused,
    /// Paused, with a probe in flight now.
    Probing,
}

impl SubscriberState {
    /// The name used in the admin API and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriberState::Active => "active",
            SubscriberState::Paused => "paused",
            SubscriberState::Probing => "probing",
        }
    }

    /// Every state, for metrics that show each from the start.
    pub const ALL: [SubscriberState; 3] = [
        SubscriberState::Active,
        SubscriberState::Paused,
        SubscriberState::Probing,
    ];
}

/// One subscriber, as `GET /-/subscribers` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriberReport {
    /// Its id ([`subscriber_id`] of its URL).
    pub id: String,
    /// Its URL (the admin API redacts it unless asked to reveal it).
    pub url: String,
    /// Active, paused or probing.
    pub state: SubscriberState,
    /// Why it is paused, when it is.
    pub paused_reason: Option<PauseReason>,
    /// Since when (Unix milliseconds).
    pub paused_at: Option<i64>,
    /// When its next probe is due, when paused for failures (Unix milliseconds).
    pub next_probe_at: Option<i64>,
    /// Deliveries waiting.
    pub backlog: u64,
    /// Deliveries in flight now.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
    /// Failures in a row (timeouts, connection errors, 5xx).
    pub consecutive_failures: u32,
    /// When it last answered 2xx (Unix milliseconds).
    pub last_success_at: Option<i64>,
    /// Why its last failed attempt failed.
    pub last_error: Option<String>,
    /// When (Unix milliseconds).
    pub last_error_at: Option<i64>,
    /// Attempts over about the last hour.
    pub attempts_last_hour: u64,
    /// The share of those that failed, 0 to 1 (`None` without attempts).
    pub failure_rate: Option<f64>,
}

/// The four flags the health update reads: healthy, failing, gone, asked to pause.
pub(crate) fn flags(signal: Signal) -> [bool; 4] {
    match signal {
        Signal::Healthy => [true, false, false, false],
        Signal::Failing => [false, true, false, false],
        Signal::Gone => [false, false, true, false],
        Signal::AskedToPause => [false, false, false, true],
        Signal::Neutral => [false; 4],
    }
}

/// An hour in milliseconds: the failure rate's window.
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// Attempts and failures over about the last hour, from two fixed hourly windows: the
/// current one whole and the share of the previous one still inside the last hour.
pub(crate) fn last_hour(now: i64, window_start: i64, counts: [i64; 4]) -> (u64, Option<f64>) {
    let [attempts, failures, prev_attempts, prev_failures] = counts.map(|n| n.max(0) as f64);
    let current = now / HOUR_MS * HOUR_MS;
    let (attempts, failures, prev_attempts, prev_failures) = if window_start == current {
        (attempts, failures, prev_attempts, prev_failures)
    } else if window_start == current - HOUR_MS {
        (0.0, 0.0, attempts, failures)
    } else {
        (0.0, 0.0, 0.0, 0.0)
    };
    let weight = 1.0 - (now - current) as f64 / HOUR_MS as f64;
    let total = attempts + prev_attempts * weight;
    let failed = failures + prev_failures * weight;
    let rate = (total > 0.0).then(|| (failed / total).clamp(0.0, 1.0));
    (total.round() as u64, rate)
}

/// Which dead letters a bulk replay re-queues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayFilter {
    /// Only those that became dead letters at or after this time (Unix milliseconds).
    pub since: i64,
    /// Only this subscriber's.
    pub subscriber: Option<String>,
}

/// The health update every completion makes to its subscriber's record, written once for
/// both stores (`{subscribers}` is the table; parameters `$1` subscriber id, `$2` the
/// delivery's id, `$3` healthy, `$4` failing, `$5` gone, `$6` asked to pause,
/// `$7` `pause_after`, `$8` probe interval in ms, `$9` now in ms, `$10` the error).
///
/// Every `SET` expression reads the row as it was, so the new state, the reason and the
/// transition are each decided from the old values in one statement: two completions
/// for one subscriber never lose a count, whichever store and replica record them.
pub(crate) fn health_update(subscribers: &str) -> String {
    // Typed once here: PostgreSQL infers a parameter's type from its first use, and an
    // untyped `$9 / 3600000` would be a 32-bit integer. (SQLite reads the casts too.)
    let healthy = "CAST($3 AS BOOLEAN)";
    let failing = "CAST($4 AS BOOLEAN)";
    let now = "CAST($9 AS BIGINT)";
    let error = "CAST($10 AS TEXT)";
    let hour = format!("{now} / {HOUR_MS} * {HOUR_MS}");
    let asked = "CAST($6 AS BOOLEAN)";
    let gone = "CAST($5 AS BOOLEAN)";
    let gone_pause = format!("({gone} AND gone + 1 >= {GONE_PAUSES_AFTER})");
    let failing_pause = format!("({failing} AND state = 'active' AND failures + 1 >= CAST($7 AS INTEGER))");
    let resume = format!("({healthy} AND state = 'paused' AND reason = 'failures')");
    let probe = "CAST($2 AS BIGINT)";
    let probe_failed = format!("(probe_id = {probe} AND NOT {healthy})");
    format!(
        "UPDATE {subscribers} SET
            transition = CASE
                WHEN {asked} AND (state = 'active' OR reason <> 'asked') THEN 'asked'
                WHEN {gone_pause} AND (state = 'active' OR reason NOT IN ('gone', 'asked')) THEN 'gone'
                WHEN {failing_pause} THEN 'failures'
                WHEN {resume} THEN 'resumed'
                ELSE NULL END,
            state = CASE
                WHEN {asked} OR {gone_pause} OR {failing_pause} THEN 'paused'
                WHEN {resume} THEN 'active'
                ELSE state END,
            reason = CASE
                WHEN {asked} THEN 'asked'
                WHEN {gone_pause} AND (reason IS NULL OR reason <> 'asked') THEN 'gone'
                WHEN {failing_pause} THEN 'failures'
                WHEN {resume} THEN NULL
                ELSE reason END,
            paused_at = CASE
                WHEN state = 'active' AND ({asked} OR {gone_pause} OR {failing_pause}) THEN {now}
                WHEN {resume} THEN NULL
                ELSE paused_at END,
            next_probe_at = CASE
                WHEN {failing_pause} OR ({probe_failed} AND state = 'paused') THEN {now} + CAST($8 AS BIGINT)
                WHEN {resume} THEN NULL
                ELSE next_probe_at END,
            probe_id = CASE WHEN probe_id = {probe} THEN NULL ELSE probe_id END,
            probe_until = CASE WHEN probe_id = {probe} THEN NULL ELSE probe_until END,
            failures = CASE WHEN {healthy} THEN 0 WHEN {failing} THEN failures + 1 ELSE failures END,
            gone = CASE WHEN {gone} THEN gone + 1 ELSE 0 END,
            last_success_at = CASE WHEN {healthy} THEN {now} ELSE last_success_at END,
            last_error = CASE WHEN {error} IS NOT NULL THEN {error} ELSE last_error END,
            last_error_at = CASE WHEN {error} IS NOT NULL THEN {now} ELSE last_error_at END,
            prev_attempts = CASE
                WHEN window_start = {hour} THEN prev_attempts
                WHEN window_start = {hour} - {HOUR_MS} THEN window_attempts
                ELSE 0 END,
            prev_failures = CASE
                WHEN window_start = {hour} THEN prev_failures
                WHEN window_start = {hour} - {HOUR_MS} THEN window_failures
                ELSE 0 END,
            window_attempts = CASE WHEN window_start = {hour} THEN window_attempts + 1 ELSE 1 END,
            window_failures = CASE WHEN window_start = {hour} THEN window_failures ELSE 0 END
                + CASE WHEN {failing} THEN 1 ELSE 0 END,
            window_start = {hour}
         WHERE id = $1
         RETURNING transition"
    )
}

/// When a subscriber resumes, its waiting deliveries are due now: its backlog drains in
/// order at its cap rather than at the retry times its failures left.
pub(crate) fn drain_now(deliveries: &str) -> String {
    format!(
        "UPDATE {deliveries} SET next_attempt_at = CAST($2 AS BIGINT)
         WHERE subscriber = $1 AND state = 'pending' AND next_attempt_at > CAST($2 AS BIGINT)"
    )
}

/// The SQL of `statement` for SQLite: its `$N` parameters as `?N`.
pub(crate) fn for_sqlite(statement: &str) -> String {
    statement.replace('$', "?")
}

/// How a subscriber is paused or resumed by an operator: `$1` the id, `$2` now.
pub(crate) fn operator_pause(subscribers: &str) -> String {
    format!(
        "UPDATE {subscribers} SET state = 'paused', reason = 'operator', transition = 'operator',
            paused_at = CASE WHEN state = 'active' THEN CAST($2 AS BIGINT) ELSE paused_at END,
            next_probe_at = NULL
         WHERE id = $1"
    )
}

/// `$1` the id: active again, its failures forgotten.
pub(crate) fn operator_resume(subscribers: &str) -> String {
    format!(
        "UPDATE {subscribers} SET state = 'active', reason = NULL, transition = 'resumed', paused_at = NULL,
            next_probe_at = NULL, failures = 0, gone = 0
         WHERE id = $1"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_stable_and_hide_the_url() {
        let id = subscriber_id("https://hooks.example.com/runway?secret=abc");
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, subscriber_id("https://hooks.example.com/runway?secret=abc"));
        assert_ne!(id, subscriber_id("https://hooks.example.com/runway"));
    }

    #[test]
    fn the_rate_allows_a_burst_then_its_steady_pace() {
        let rate = Rate {
            interval: Duration::from_millis(20),
            burst: 50,
        };
        assert_eq!(rate.interval_ms(), 20);
        assert_eq!(rate.allowance(0, 10_000), 50);
        let tat = rate.advance(0, 10_000, 50);
        assert_eq!(rate.allowance(tat, 10_000), 0);
        assert_eq!(rate.allowance(tat, 10_020), 1);
        assert_eq!(rate.allowance(tat, 11_000), 50);
    }

    #[test]
    fn the_failure_rate_weighs_the_previous_hour_by_what_is_left_of_it() {
        let now = 10 * HOUR_MS + HOUR_MS / 4;
        let (attempts, rate) = last_hour(now, 10 * HOUR_MS, [10, 5, 100, 100]);
        assert_eq!(attempts, 85);
        assert!((rate.unwrap() - 80.0 / 85.0).abs() < 1e-9);
        let (attempts, rate) = last_hour(now, 9 * HOUR_MS, [20, 0, 7, 7]);
        assert_eq!((attempts, rate), (15, Some(0.0)));
        assert_eq!(last_hour(now, 2 * HOUR_MS, [20, 20, 7, 7]), (0, None));
    }

    #[test]
    fn transitions_read_back_from_their_column() {
        assert_eq!(Transition::parse(None), Transition::Unchanged);
        assert_eq!(Transition::parse(Some("resumed")), Transition::Resumed);
        assert_eq!(
            Transition::parse(Some("gone")),
            Transition::Paused(PauseReason::Gone)
        );
    }
}
