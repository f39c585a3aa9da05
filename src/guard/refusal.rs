//! The answers of a refused submission: nothing was sent, and the client is told which
//! limit, how much of it is used, when it frees up, and whether retrying helps.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::body::Body;
use crate::duration;
use crate::envelope;
use crate::tasks::{Limit, Spend};

/// Names the limit that refused a submission (`daily_point_budget_per_key`, ...).
pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-runway-proxy-limit");

/// Why a submission was not sent.
#[derive(Debug)]
pub(super) enum Refusal {
    /// A budget is spent.
    Budget {
        limit: Limit,
        key: String,
        budget: u64,
        used: i64,
        /// The budget's rolling window.
        window: Duration,
        /// When enough of the window has passed for one more task (Unix ms); `None`:
        /// never (a budget of 0).
        frees_at: Option<i64>,
        /// This submission's estimated points, when a point budget refused it: the
        /// estimate decided if `used` alone was under the budget.
        estimate: Option<u64>,
    },
    /// No task slot came free within `max_wait`.
    MaxWait {
        limit: Limit,
        key: String,
        cap: u32,
        max_wait: Duration,
    },
    /// `max_queue` submissions are already waiting for a slot.
    QueueFull { waiting: usize },
    /// The store that counts tasks did not answer.
    StoreUnavailable,
}

/// How long a client is told to wait for a task slot: no one knows when a generation
/// ends, and Runway's own SDKs poll a task no more often than this.
const SLOT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Refusal {
    /// The metric label.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Refusal::Budget { limit, .. } | Refusal::MaxWait { limit, .. } => limit.as_str(),
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::StoreUnavailable => "store_unavailable",
        }
    }

    /// The answer to a submission to `path`.
    pub(super) fn into_response(self, path: &str, now_ms: i64) -> Response<Body> {
        let (status, msg, retry_after, should_retry, data) = match &self {
            Refusal::Budget {
                limit,
                key,
                budget,
                used,
                window,
                frees_at,
                estimate,
            } => {
                let what = if matches!(limit, Limit::Points | Limit::PointsPerKey) {
                    "points"
                } else {
                    "tasks"
                };
                let whose = if limit.is_per_key() {
                    format!("key {key}")
                } else {
                    "the proxy".to_owned()
                };
                let (status, when, retry_after) = match frees_at {
                    Some(at) => {
                        let wait = Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0));
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            format!("it frees up at {} (in {})", duration::rfc3339(*at), rough(wait)),
                            Some(wait),
                        )
                    }
                    None => (
                        StatusCode::PAYMENT_REQUIRED,
                        "it allows none: ask an operator".to_owned(),
                        None,
                    ),
                };
                // Points not yet billed count at their estimate; say when one decided.
                let estimated = match estimate {
                    Some(points) if *used < i64::try_from(*budget).unwrap_or(i64::MAX) => format!(
                        " (counting estimates for tasks not billed yet), and this submission is estimated at \
                         {points} points, more than the {} left",
                        i64::try_from(*budget).unwrap_or(i64::MAX) - used
                    ),
                    Some(_) => " (counting estimates for tasks not billed yet)".to_owned(),
                    None => String::new(),
                };
                let msg = format!(
                    "budget spent (runway-proxy {}): {whose} used {used} {what} of its {budget} in the last {}{estimated}; \
                     nothing was sent; {when}",
                    limit.as_str(),
                    duration::format(*window),
                );
                let data = json!({
                    "limit": limit.as_str(),
                    "key": key,
                    "budget": budget,
                    "used": used,
                    "estimate": estimate,
                    "frees_at": frees_at.map(duration::rfc3339),
                });
                (status, msg, retry_after, false, data)
            }
            Refusal::MaxWait {
                limit,
                key,
                cap,
                max_wait,
            } => {
                let whose = if limit.is_per_key() {
                    format!("of key {key} ")
                } else {
                    String::new()
                };
                let msg = format!(
                    "task limit (runway-proxy {}): {cap} tasks {whose}are unfinished and none finished within the {} \
                     a submission may wait; nothing was sent; try again in {}s",
                    limit.as_str(),
                    duration::format(*max_wait),
                    SLOT_RETRY_AFTER.as_secs()
                );
                let data = json!({ "limit": limit.as_str(), "key": key, "in_flight": cap });
                (StatusCode::TOO_MANY_REQUESTS, msg, Some(SLOT_RETRY_AFTER), true, data)
            }
            Refusal::QueueFull { waiting } => (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "task limit (runway-proxy): {waiting} submissions are already waiting for a task slot; \
                     nothing was sent; try again in {}s",
                    SLOT_RETRY_AFTER.as_secs()
                ),
                Some(SLOT_RETRY_AFTER),
                true,
                json!({ "limit": "max_queue" }),
            ),
            Refusal::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "runway-proxy cannot reach the store that counts tasks and spend; nothing was sent; try again in 1s"
                    .to_owned(),
                Some(Duration::from_secs(1)),
                true,
                serde_json::Value::Null,
            ),
        };
        let body = if path.starts_with("/runwayml/") {
            json!({ "error": msg, "data": data })
        } else {
            json!({ "code": status.as_u16(), "msg": msg, "data": data })
        };
        let mut response = envelope::json_response(status, body.to_string());
        let headers = response.headers_mut();
        headers.insert(LIMIT_HEADER, HeaderValue::from_static(self.reason()));
        if let Some(wait) = retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response.extensions_mut().insert(envelope::Generated);
        envelope::should_retry(&mut response, should_retry);
        response
    }
}

/// A wait written for people: `3h 20m`, `45s`.
fn rough(wait: Duration) -> String {
    let secs = wait.as_secs().max(1);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs / 60 % 60),
    }
}

/// When a budget of `budget` refused because of `spent` (oldest first) frees room for one
/// more task, the window being `window`: once enough of the oldest entries have left it.
/// `None`: never (a budget of 0).
pub(super) fn frees_at(spent: &[Spend], budget: u64, points: bool, window: Duration) -> Option<i64> {
    if budget == 0 {
        return None;
    }
    let budget = i64::try_from(budget).unwrap_or(i64::MAX);
    let window = duration::millis(window);
    let mut used: i64 = if points {
        spent.iter().map(|s| s.net_points).sum()
    } else {
        i64::try_from(spent.len()).unwrap_or(i64::MAX)
    };
    for entry in spent {
        used -= if points { entry.net_points } else { 1 };
        if used < budget {
            return Some(entry.submitted_at + window + 1);
        }
    }
    // The entries changed since the refusal: there is room already.
    spent
        .last()
        .map(|last| last.submitted_at + window + 1)
        .or(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(at: i64, net_points: i64) -> Spend {
        Spend {
            submitted_at: at,
            net_points,
        }
    }

    #[test]
    fn a_budget_frees_up_when_enough_of_the_window_has_passed() {
        let day = Duration::from_secs(86_400);
        let spent = [spend(1_000, 320), spend(2_000, 0), spend(3_000, 320)];
        // 640 of 500 points: the first task leaving the window brings it to 320.
        assert_eq!(frees_at(&spent, 500, true, day), Some(1_000 + 86_400_000 + 1));
        // 640 of 300: both paid tasks must leave.
        assert_eq!(frees_at(&spent, 300, true, day), Some(3_000 + 86_400_000 + 1));
        // 3 of 2 tasks: two must leave.
        assert_eq!(frees_at(&spent, 2, false, day), Some(2_000 + 86_400_000 + 1));
        assert_eq!(frees_at(&spent, 0, true, day), None);
    }

    #[test]
    fn refusals_say_why_and_whether_retrying_helps() {
        let budget = Refusal::Budget {
            limit: Limit::PointsPerKey,
            key: "alice".into(),
            budget: 500,
            used: 640,
            window: Duration::from_secs(86_400),
            frees_at: Some(3_600_000),
            estimate: None,
        }
        .into_response("/runway/pro/generate", 0);
        assert_eq!(budget.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(budget.headers()["x-should-retry"], "false");
        assert_eq!(budget.headers()["retry-after"], "3600");
        assert_eq!(
            budget.headers()["x-runway-proxy-limit"],
            "daily_point_budget_per_key"
        );
        let never = Refusal::Budget {
            limit: Limit::Tasks,
            key: "alice".into(),
            budget: 0,
            used: 0,
            window: Duration::from_secs(86_400),
            frees_at: None,
            estimate: None,
        }
        .into_response("/runwayml/v1/image_to_video", 0);
        assert_eq!(never.status(), StatusCode::PAYMENT_REQUIRED);
        assert!(never.headers().get("retry-after").is_none());
        let waited = Refusal::MaxWait {
            limit: Limit::InFlight,
            key: "alice".into(),
            cap: 5,
            max_wait: Duration::from_secs(30),
        }
        .into_response("/runway/pro/generate", 0);
        assert_eq!(waited.headers()["x-should-retry"], "true");
        assert_eq!(waited.headers()["retry-after"], "5");
    }
}
