//! The relay's admin paths: `/-/deliveries` (list), `/-/deliveries/{id}/replay`,
//! `/-/deliveries/replay` (bulk), `/-/subscribers` and `/-/subscribers/{id}/pause|resume`.

use std::sync::{Arc, Mutex};

use http::{Method, Response, StatusCode};
use tokio::sync::Notify;

use super::{DeliveryState, Outbox, RelayMetrics};
use crate::body::Body;
use crate::envelope;
use crate::store::ReplayFilter;

/// Most deliveries one admin page lists.
const PAGE: usize = 100;

/// Answers the relay's admin paths (on a private listener): lists deliveries and dead
/// letters, and replays them. Made by [`Relay::admin`](super::Relay::admin).
#[derive(Clone)]
pub struct RelayAdmin {
    outbox: Arc<dyn Outbox>,
    /// Notified after a replay so the workers pick it up at once.
    wake: Arc<Notify>,
    metrics: Arc<RelayMetrics>,
    /// The last bulk replay: its filter, the second it ran in, and how many it re-queued.
    /// The same call again within that second answers the same count and re-queues
    /// nothing (a retried request, or a double click, does not double the deliveries).
    last_bulk: Arc<Mutex<Option<(ReplayFilter, i64, u64)>>>,
}

impl std::fmt::Debug for RelayAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayAdmin { .. }")
    }
}

impl RelayAdmin {
    pub(super) fn new(outbox: Arc<dyn Outbox>, wake: Arc<Notify>, metrics: Arc<RelayMetrics>) -> Self {
        RelayAdmin {
            outbox,
            wake,
            metrics,
            last_bulk: Arc::default(),
        }
    }

    /// The deliveries of task `task_id`'s events to `subscriber`, oldest first (at most
    /// 100), their URLs redacted: a task's page shows them as its timeline's attempts.
    pub async fn deliveries_of(
        &self,
        subscriber: &str,
        task_id: &str,
    ) -> Result<Vec<super::Delivery>, crate::store::Error> {
        let task_key = crate::store::task_key(subscriber, task_id);
        let mut deliveries = self.outbox.deliveries_of_task(task_key, PAGE).await?;
        for delivery in &mut deliveries {
            delivery.target_url = redact(&delivery.target_url);
        }
        Ok(deliveries)
    }

    /// Answer the relay's admin paths:
    ///
    /// - `GET /-/deliveries?state=pending|in_flight|delivered|dead|superseded&after=ID&limit=N`:
    ///   a page of deliveries, oldest first, with `next` (the `after` for the next page).
    ///   Subscriber URLs are shown without their user info, query or fragment (where
    ///   secrets live) unless `reveal=1` is asked and `may_reveal` (the caller presented
    ///   the admin token).
    /// - `POST /-/deliveries/{id}/replay`: make a delivery pending again with a fresh schedule.
    /// - `POST /-/deliveries/replay?status=dead&since=T&subscriber=ID`: the same for every
    ///   dead letter that died at or after `T` (RFC 3339, a date, or Unix seconds; all
    ///   when absent) of subscriber `ID` (all when absent), each once; answers how many.
    /// - `GET /-/subscribers?after=ID&limit=N`: each subscriber with its state, backlog,
    ///   in-flight count, last success and error, and failure rate over the last hour.
    /// - `POST /-/subscribers/{id}/pause` and `/resume`.
    ///
    /// `None` for a path that is not the relay's. Who may call it at all is the
    /// caller's decision (the sidecar's [`AdminAccess`](crate::sidecar::AdminAccess)).
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        may_reveal: bool,
    ) -> Option<Response<Body>> {
        handle(self, method, path, query, may_reveal).await
    }
}

async fn handle(
    relay: &RelayAdmin,
    method: &Method,
    path: &str,
    query: Option<&str>,
    may_reveal: bool,
) -> Option<Response<Body>> {
    if let Some(rest) = path.strip_prefix("/-/subscribers") {
        return Some(subscribers(relay, method, rest, query, may_reveal).await);
    }
    let rest = path.strip_prefix("/-/deliveries")?;
    let bad = |status: StatusCode, msg: &str| Some(envelope::error_response(status, msg));
    if rest == "/replay" {
        return Some(replay_matching(relay, method, query).await);
    }
    if rest.is_empty() {
        if method != Method::GET {
            return bad(StatusCode::METHOD_NOT_ALLOWED, "/-/deliveries only answers GET");
        }
        let mut state = DeliveryState::Pending;
        let mut after = 0i64;
        let mut limit = PAGE;
        let mut reveal = false;
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "state" => match DeliveryState::parse(value) {
                    Some(parsed) => state = parsed,
                    None => {
                        let msg = format!(
                            "state {value:?} is not pending, in_flight, delivered, dead or superseded"
                        );
                        return bad(StatusCode::BAD_REQUEST, &msg);
                    }
                },
                "after" => match value.parse() {
                    Ok(parsed) => after = parsed,
                    Err(_) => return bad(StatusCode::BAD_REQUEST, "after must be a delivery id"),
                },
                "reveal" => match reveal_asked(value, may_reveal) {
                    Ok(asked) => reveal = asked,
                    Err((status, msg)) => return bad(status, msg),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(parsed) if parsed > 0 => limit = parsed.min(1000),
                    _ => return bad(StatusCode::BAD_REQUEST, "limit must be a number from 1 to 1000"),
                },
                _ => {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown query parameter {key:?}"),
                    );
                }
            }
        }
        return Some(match relay.outbox.list(state, after, limit).await {
            Ok(mut deliveries) => {
                if !reveal {
                    for delivery in &mut deliveries {
                        delivery.target_url = redact(&delivery.target_url);
                    }
                }
                let next = (deliveries.len() == limit)
                    .then(|| deliveries.last().map(|d| d.id))
                    .flatten();
                let page = serde_json::json!({ "state": state, "deliveries": deliveries, "next": next });
                json(StatusCode::OK, &page)
            }
            Err(err) => envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        });
    }
    let id = rest.strip_prefix('/').and_then(|r| r.strip_suffix("/replay"))?;
    if method != Method::POST {
        return bad(StatusCode::METHOD_NOT_ALLOWED, "replay with POST");
    }
    let Ok(id) = id.parse::<i64>() else {
        return bad(StatusCode::BAD_REQUEST, "the delivery id must be a number");
    };
    Some(match relay.outbox.replay(id).await {
        Ok(true) => {
            relay.wake.notify_waiters();
            json(
                StatusCode::OK,
                &serde_json::json!({"code": 200, "msg": "replaying", "data": {"id": id}}),
            )
        }
        Ok(false) => {
            envelope::error_response(StatusCode::NOT_FOUND, "no such delivery, or it is in flight now")
        }
        Err(err) => envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    })
}

/// Whether `reveal=...` asks to see URLs whole; an error response when it may not.
fn reveal_asked(value: &str, may_reveal: bool) -> Result<bool, (StatusCode, &'static str)> {
    match value {
        "1" | "true" if may_reveal => Ok(true),
        "1" | "true" => Err((
            StatusCode::FORBIDDEN,
            "reveal=1 shows subscriber URLs whole (query strings may hold secrets) and needs the \
             admin token: set --admin-token and send Authorization: Bearer <token>",
        )),
        "0" | "false" => Ok(false),
        _ => Err((StatusCode::BAD_REQUEST, "reveal must be 1 or 0")),
    }
}

/// `/-/subscribers...`: list, pause, resume.
async fn subscribers(
    relay: &RelayAdmin,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    may_reveal: bool,
) -> Response<Body> {
    let unavailable = |err: crate::store::Error| {
        envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string())
    };
    if rest.is_empty() {
        if method != Method::GET && method != Method::HEAD {
            return envelope::error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "/-/subscribers only answers GET",
            );
        }
        let (mut after, mut limit, mut reveal) = (String::new(), PAGE, false);
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "after" => after = value.to_owned(),
                "limit" => match value.parse::<usize>() {
                    Ok(parsed) if parsed > 0 => limit = parsed.min(1000),
                    _ => {
                        return envelope::error_response(
                            StatusCode::BAD_REQUEST,
                            "limit must be a number from 1 to 1000",
                        );
                    }
                },
                "reveal" => match reveal_asked(value, may_reveal) {
                    Ok(asked) => reveal = asked,
                    Err((status, msg)) => return envelope::error_response(status, msg),
                },
                _ => {
                    let msg = format!("unknown query parameter {key:?}");
                    return envelope::error_response(StatusCode::BAD_REQUEST, &msg);
                }
            }
        }
        return match relay.outbox.subscribers(after, limit).await {
            Ok(mut subscribers) => {
                if !reveal {
                    for subscriber in &mut subscribers {
                        subscriber.url = redact(&subscriber.url);
                    }
                }
                let next = (subscribers.len() == limit)
                    .then(|| subscribers.last().map(|s| s.id.clone()))
                    .flatten();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "subscribers": subscribers, "next": next }),
                )
            }
            Err(err) => unavailable(err),
        };
    }
    let Some((id, action)) = rest.strip_prefix('/').and_then(|r| r.split_once('/')) else {
        return envelope::error_response(
            StatusCode::NOT_FOUND,
            "no such path: /-/subscribers/{id}/pause or /-/subscribers/{id}/resume",
        );
    };
    if !matches!(action, "pause" | "resume") || id.is_empty() {
        return envelope::error_response(
            StatusCode::NOT_FOUND,
            "no such path: /-/subscribers/{id}/pause or /-/subscribers/{id}/resume",
        );
    }
    if method != Method::POST {
        return envelope::error_response(StatusCode::METHOD_NOT_ALLOWED, &format!("{action} with POST"));
    }
    let changed = if action == "pause" {
        relay.outbox.pause_subscriber(id.to_owned()).await
    } else {
        relay.outbox.resume_subscriber(id.to_owned()).await
    };
    match changed {
        Ok(true) => {
            if action == "pause" {
                relay.metrics.pauses.inc("operator");
                tracing::warn!(subscriber = id, "subscriber paused by an operator");
            } else {
                relay.metrics.resumes.inc();
                tracing::info!(subscriber = id, "subscriber resumed by an operator");
                relay.wake.notify_waiters();
            }
            let msg = if action == "pause" { "paused" } else { "resumed" };
            json(
                StatusCode::OK,
                &serde_json::json!({"code": 200, "msg": msg, "data": {"id": id}}),
            )
        }
        Ok(false) => envelope::error_response(StatusCode::NOT_FOUND, "no such subscriber"),
        Err(err) => unavailable(err),
    }
}

/// `POST /-/deliveries/replay?status=dead&since=...&subscriber=...`.
async fn replay_matching(relay: &RelayAdmin, method: &Method, query: Option<&str>) -> Response<Body> {
    if method != Method::POST {
        return envelope::error_response(StatusCode::METHOD_NOT_ALLOWED, "replay with POST");
    }
    let mut filter = ReplayFilter::default();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // `since=2026-12-06T10%3A00%3A00%2B01%3A00`, as a client encodes it.
        let Ok(value) = percent_encoding::percent_decode_str(value).decode_utf8() else {
            return envelope::error_response(
                StatusCode::BAD_REQUEST,
                &format!("{key} is not percent-encoded UTF-8"),
            );
        };
        let value = value.as_ref();
        match key {
            "status" | "state" if value == "dead" => {}
            "status" | "state" => {
                return envelope::error_response(
                    StatusCode::BAD_REQUEST,
                    "only dead letters are replayed in bulk: status=dead",
                );
            }
            "since" => match crate::duration::parse_time(value) {
                Some(since) => filter.since = since,
                None => {
                    return envelope::error_response(
                        StatusCode::BAD_REQUEST,
                        "since must be an RFC 3339 time (2026-12-06T10:00:00Z), a date or Unix seconds",
                    );
                }
            },
            "subscriber" if !value.is_empty() => filter.subscriber = Some(value.to_owned()),
            _ => {
                let msg = format!("unknown query parameter {key:?}");
                return envelope::error_response(StatusCode::BAD_REQUEST, &msg);
            }
        }
    }
    let second = crate::duration::unix_millis().div_euclid(1000);
    // Held only to read and write, never across the store's await: a repeat that races
    // the first call's store write may run it too, and finds nothing dead left to re-queue.
    let repeated = {
        let last = relay.last_bulk.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(previous, at, _)| *previous == filter && *at == second)
            .map(|(_, _, count)| *count)
    };
    let (replayed, repeated) = match repeated {
        Some(count) => (count, true),
        None => match relay.outbox.replay_dead(filter.clone()).await {
            Ok(count) => {
                *relay.last_bulk.lock().unwrap_or_else(|p| p.into_inner()) = Some((filter, second, count));
                if count > 0 {
                    relay.wake.notify_waiters();
                }
                tracing::info!(replayed = count, "dead letters replayed in bulk");
                (count, false)
            }
            Err(err) => return envelope::error_response(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        },
    };
    json(
        StatusCode::OK,
        &serde_json::json!({"code": 200, "msg": "replaying", "data": {"replayed": replayed, "repeated": repeated}}),
    )
}

/// A subscriber URL without the parts that carry secrets: user info, query, fragment.
/// (`?` stays, to show there was a query.) What the admin paths show of a subscriber
/// unless the admin token asks for the whole URL.
pub fn redact(url: &str) -> String {
    let (base, had_query) = match url.find(['?', '#']) {
        Some(at) => (&url[..at], url[at..].starts_with('?')),
        None => (url, false),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("", base));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let mut out = String::with_capacity(base.len() + 2);
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(path);
    if had_query {
        out.push('?');
    }
    out
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    envelope::json_response(status, value.to_string())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacted_urls_keep_where_they_go_and_lose_what_they_carry() {
        assert_eq!(
            redact("https://user:pw@hooks.example.com:8443/h/1?secret=abc#x"),
            "https://hooks.example.com:8443/h/1?"
        );
        assert_eq!(
            redact("https://hooks.example.com/h"),
            "https://hooks.example.com/h"
        );
        assert_eq!(redact("http://a.example#frag"), "http://a.example");
        assert_eq!(redact("http://a@b@c.example/?q"), "http://c.example/?");
    }
}
