//! The relay's admin paths: `/-/deliveries` (list) and `/-/deliveries/{id}/replay`.

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use tokio::sync::Notify;

use super::{DeliveryState, Outbox};
use crate::body::Body;
use crate::envelope;

/// Most deliveries one admin page lists.
const PAGE: usize = 100;

/// Answers the relay's admin paths (on a private listener): lists deliveries and dead
/// letters, and replays them. Made by [`Relay::admin`](super::Relay::admin).
#[derive(Clone)]
pub struct RelayAdmin {
    outbox: Arc<dyn Outbox>,
    /// Notified after a replay so the workers pick it up at once.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for RelayAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayAdmin { .. }")
    }
}

impl RelayAdmin {
    pub(super) fn new(outbox: Arc<dyn Outbox>, wake: Arc<Notify>) -> Self {
        RelayAdmin { outbox, wake }
    }

    /// Answer the relay's admin paths:
    ///
    /// - `GET /-/deliveries?state=pending|in_flight|delivered|dead|superseded&after=ID&limit=N`:
    ///   a page of deliveries, oldest first, with `next` (the `after` for the next page).
    ///   Subscriber URLs are shown without their user info, query or fragment (where
    ///   secrets live) unless `reveal=1` is asked and `may_reveal` (the caller presented
    ///   the admin token).
    /// - `POST /-/deliveries/{id}/replay`: make a delivery pending again with a fresh schedule.
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
    let rest = path.strip_prefix("/-/deliveries")?;
    let bad = |status: StatusCode, msg: &str| Some(envelope::error_response(status, msg));
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
                "reveal" => match value {
                    "1" | "true" if may_reveal => reveal = true,
                    "1" | "true" => {
                        return bad(
                            StatusCode::FORBIDDEN,
                            "reveal=1 shows subscriber URLs whole (query strings may hold secrets) and needs the \
                             admin token: set --admin-token and send Authorization: Bearer <token>",
                        );
                    }
                    "0" | "false" => {}
                    _ => return bad(StatusCode::BAD_REQUEST, "reveal must be 1 or 0"),
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

/// A subscriber URL without the parts that carry secrets: user info, query, fragment.
/// (`?` stays, to show there was a query.)
fn redact(url: &str) -> String {
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
