//! How a delivery attempt ends, as the outbox records it: delivered, a dead letter, or
//! another attempt on the schedule (or later, when the subscriber says so).

use std::time::Duration;

use crate::store::Completion;

/// How a delivery attempt ended, as the outbox records it: delivered, a dead letter (the
/// subscriber is gone, refused, or the schedule is spent), or another attempt after the
/// schedule's next wait (`jitter` applied) or the subscriber's `Retry-After`, whichever
/// is later.
pub(super) fn complete(
    sent: Result<(), Failure>,
    attempts_before: u32,
    schedule: &[Duration],
    now_ms: i64,
    jitter: fn(Duration) -> Duration,
) -> Completion {
    let (error, retry_after) = match sent {
        Ok(()) => return Completion::Delivered,
        Err(Failure::Gone(error) | Failure::Refused(error)) => return Completion::Dead { error },
        Err(Failure::Retry { error, retry_after }) => (error, retry_after),
    };
    let attempts = attempts_before as usize + 1;
    match schedule.get(attempts) {
        None => Completion::Dead {
            error: format!("{error} (after {attempts} attempts)"),
        },
        Some(&delay) => {
            let wait = jitter(delay).max(retry_after.unwrap_or_default());
            Completion::RetryAt {
                at: now_ms + wait.as_millis() as i64,
                error,
            }
        }
    }
}

/// Why an attempt did not deliver.
pub(super) enum Failure {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::jittered;

    const SCHEDULE: [Duration; 3] = [Duration::ZERO, Duration::from_secs(5), Duration::from_secs(300)];

    fn exact(delay: Duration) -> Duration {
        delay
    }

    fn retry(retry_after: Option<Duration>) -> Result<(), Failure> {
        Err(Failure::Retry {
            error: "subscriber answered 503 Service Unavailable".into(),
            retry_after,
        })
    }

    #[test]
    fn a_failed_attempt_waits_for_the_next_step_of_the_schedule() {
        let completion = complete(retry(None), 0, &SCHEDULE, 1_000, exact);
        assert_eq!(
            completion,
            Completion::RetryAt {
                at: 6_000,
                error: "subscriber answered 503 Service Unavailable".into()
            }
        );
        let completion = complete(retry(None), 1, &SCHEDULE, 1_000, exact);
        assert!(
            matches!(completion, Completion::RetryAt { at: 301_000, .. }),
            "{completion:?}"
        );
    }

    #[test]
    fn retry_after_pushes_the_attempt_back_but_never_forward() {
        let later = complete(retry(Some(Duration::from_secs(60))), 0, &SCHEDULE, 0, exact);
        assert!(
            matches!(later, Completion::RetryAt { at: 60_000, .. }),
            "{later:?}"
        );
        let sooner = complete(retry(Some(Duration::from_secs(1))), 0, &SCHEDULE, 0, exact);
        assert!(
            matches!(sooner, Completion::RetryAt { at: 5_000, .. }),
            "{sooner:?}"
        );
    }

    #[test]
    fn a_spent_schedule_gone_or_refused_subscriber_is_a_dead_letter() {
        let spent = complete(retry(None), 2, &SCHEDULE, 0, exact);
        assert_eq!(
            spent,
            Completion::Dead {
                error: "subscriber answered 503 Service Unavailable (after 3 attempts)".into()
            }
        );
        let gone = complete(Err(Failure::Gone("410".into())), 0, &SCHEDULE, 0, exact);
        assert_eq!(gone, Completion::Dead { error: "410".into() });
        let refused = complete(Err(Failure::Refused("private".into())), 0, &SCHEDULE, 0, exact);
        assert_eq!(
            refused,
            Completion::Dead {
                error: "private".into()
            }
        );
        assert_eq!(complete(Ok(()), 5, &SCHEDULE, 0, exact), Completion::Delivered);
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let wait = jittered(Duration::from_secs(10));
            assert!(
                wait >= Duration::from_secs(8) && wait <= Duration::from_secs(12),
                "{wait:?}"
            );
        }
    }
}
