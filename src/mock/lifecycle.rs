//! A task's life: its statuses one step apart, and a callback at each change.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;

use super::SentCallback;
use super::state::State;
use super::state::unix_now;
use crate::body;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum CallbackPlan {
    Normal,
    Duplicate,
    OutOfOrder,
    Dropped,
}

/// Move a task through running to its end, one step apart, sending a callback per change.
pub(super) async fn lifecycle(state: Arc<State>, id: String, plan: CallbackPlan) {
    let mut shutdown = state.shutdown.clone();
    let mut held_back = None;
    // A throttled task waits for a slot; the slots are checked often enough that a slot
    // freed by a task's end is taken well within a step.
    let poll = (state.config.step / 4).max(Duration::from_millis(5));
    loop {
        {
            let mut inner = state.lock();
            let slot_free = state.config.max_running.is_none_or(|most| inner.running() < most);
            let Some(task) = inner.tasks.get_mut(&id) else {
                return;
            };
            if task.cancelled {
                return;
            }
            if !task.throttled {
                break;
            }
            if slot_free {
                task.throttled = false;
                break;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
    }
    for _ in 0..2 {
        tokio::select! {
            () = tokio::time::sleep(state.config.step) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
        let (url, payload) = {
            let mut inner = state.lock();
            let Some(task) = inner.tasks.get_mut(&id) else {
                return;
            };
            if task.cancelled {
                return;
            }
            task.status = match task.status {
                0 => 1,
                _ if task.will_fail => 2,
                _ => 3,
            };
            task.update_time = unix_now();
            let sent = (task.callback_url.clone(), task.callback_payload(&state.outputs));
            let (status, points, key) = (task.status, task.points, task.key.clone());
            if status >= 2 {
                inner.unfinished = inner.unfinished.saturating_sub(1);
            }
            if status == 2 {
                inner.keys.entry(key).or_default().refunded += points;
            }
            sent
        };
        let Some(url) = url else { continue };
        let body = Bytes::from(payload.to_string());
        match plan {
            CallbackPlan::Normal => send_callback(&state, &url, body).await,
            CallbackPlan::Duplicate => {
                send_callback(&state, &url, body.clone()).await;
                send_callback(&state, &url, body).await;
            }
            CallbackPlan::Dropped => {}
            CallbackPlan::OutOfOrder => match held_back.take() {
                None => held_back = Some(body),
                Some(earlier) => {
                    send_callback(&state, &url, body).await;
                    send_callback(&state, &url, earlier).await;
                }
            },
        }
    }
}

pub(super) async fn send_callback(state: &State, url: &str, body: Bytes) {
    let request = Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()));
    let outcome = match request {
        Ok(request) => {
            match tokio::time::timeout(
                state.config.callback_timeout,
                state.callback_client.request(request),
            )
            .await
            {
                Ok(Ok(response)) if response.status().is_success() => Ok(()),
                Ok(Ok(response)) => Err(format!("receiver answered {}", response.status())),
                Ok(Err(err)) => Err(body::error_chain(&err)),
                Err(_) => Err("timed out".to_owned()),
            }
        }
        Err(err) => Err(format!("invalid callback URL: {err}")),
    };
    let mut inner = state.lock();
    inner.sent_callbacks.push(SentCallback {
        url: url.to_owned(),
        body,
        accepted: outcome.is_ok(),
    });
    match outcome {
        Ok(()) => inner.callbacks_sent += 1,
        Err(reason) => {
            inner.callbacks_failed += 1;
            tracing::debug!(%reason, "stand-in callback failed");
        }
    }
}
