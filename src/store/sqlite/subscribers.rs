//! Deliveries claimed subscriber by subscriber, and each attempt's verdict on its
//! subscriber, in the outbox's SQLite database (see `store::subscribers`).

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::statements::ExecuteCached;
use super::{COLUMNS, now_ms, row_to_delivery};
use crate::store::subscribers::{
    drain_now, flags, for_sqlite, health_update, operator_pause, operator_resume,
};
use crate::store::{
    Completion, Delivery, Fairness, Health, JournalKind, ReplayFilter, SubscriberReport, Transition,
    subscriber_id,
};

/// The id of the subscriber at `url`, its row made if it is new.
pub(super) fn known(tx: &Connection, url: &str, now: i64) -> rusqlite::Result<String> {
    let id = subscriber_id(url);
    tx.execute_cached(
        "INSERT OR IGNORE INTO subscribers (id, url, created_at) VALUES (?1, ?2, ?3)",
        params![id, url, now],
    )?;
    Ok(id)
}

// A row is claimable when no other row of its task is in flight, and no older row of its
// task is still waiting (a task's deliveries go one at a time, in order). Each statement
// is read only as far as the claim needs, not `LIMIT ?`: a bound LIMIT makes SQLite plan
// the statement again at every call.
macro_rules! task_is_free {
    () => {
        " AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.task_key = d.task_key AND o.id <> d.id
                          AND o.state = 'in_flight' AND o.lease_until > ?1)
          AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.task_key = d.task_key AND o.id < d.id
                          AND o.state IN ('pending', 'in_flight'))"
    };
}

/// Subscribers with work that may be served now, least recently served first: the active
/// ones with a delivery due (or a claim whose lease ran out), and the ones paused for
/// failures whose probe is due. One statement, each subscriber one index probe: a claim
/// costs the subscribers with work, not every subscriber ever seen.
pub(super) const SERVE_ORDER: &str = "SELECT s.id, s.state = 'paused', s.rate_tat FROM subscribers s
     WHERE (s.state = 'active'
            AND (EXISTS (SELECT 1 FROM deliveries d WHERE d.subscriber = s.id AND d.state = 'pending'
                         AND d.next_attempt_at <= ?1)
                 OR EXISTS (SELECT 1 FROM deliveries d WHERE d.subscriber = s.id AND d.state = 'in_flight'
                            AND d.lease_until <= ?1)))
        OR (s.state = 'paused' AND s.reason = 'failures' AND s.next_probe_at <= ?1
            AND (s.probe_until IS NULL OR s.probe_until <= ?1)
            AND EXISTS (SELECT 1 FROM deliveries d WHERE d.subscriber = s.id AND d.state = 'pending'))
     ORDER BY s.served_at, s.id";
/// A subscriber's live claims, whoever holds them.
const IN_FLIGHT: &str =
    "SELECT COUNT(*) FROM deliveries WHERE subscriber = ?2 AND state = 'in_flight' AND lease_until > ?1";
/// A subscriber's claims whose lease ran out, oldest lease first.
pub(super) const EXPIRED: &str = concat!(
    "SELECT d.id, d.task_key FROM deliveries d
     WHERE d.subscriber = ?2 AND d.state = 'in_flight' AND d.lease_until <= ?1",
    task_is_free!(),
    " ORDER BY d.lease_until"
);
/// A subscriber's pending deliveries whose time has come, in order.
pub(super) const DUE: &str = concat!(
    "SELECT d.id, d.task_key FROM deliveries d
     WHERE d.subscriber = ?2 AND d.state = 'pending' AND d.next_attempt_at <= ?1",
    task_is_free!(),
    " ORDER BY d.next_attempt_at, d.id"
);
/// A paused subscriber's probe: its first waiting delivery, due or not (it waits because
/// the subscriber is paused, not for its schedule).
const PROBE: &str = concat!(
    "SELECT d.id, d.task_key FROM deliveries d WHERE d.subscriber = ?2 AND d.state = 'pending'",
    task_is_free!(),
    " ORDER BY d.id"
);

/// One subscriber's share of a claim.
struct Share {
    subscriber: String,
    probe: bool,
    rate_tat: i64,
    picked: Vec<i64>,
    taken: usize,
}

pub(super) fn claim(
    tx: &Connection,
    owner: &str,
    max: usize,
    lease: Duration,
    fairness: Fairness,
) -> rusqlite::Result<Vec<Delivery>> {
    let now = now_ms();
    let order: Vec<(String, bool, i64)> = tx
        .prepare_cached(SERVE_ORDER)?
        .query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut shares: Vec<Share> = Vec::new();
    let mut tasks = HashSet::new();
    for (subscriber, probe, rate_tat) in order {
        // Enough subscribers to fill every slot in the first round: the rest wait their turn
        // (they were served more recently).
        if shares.len() >= max {
            break;
        }
        let room = if probe {
            1
        } else {
            let in_flight: i64 = tx
                .prepare_cached(IN_FLIGHT)?
                .query_row(params![now, subscriber], |r| r.get(0))?;
            let mut room = i64::from(fairness.max_in_flight) - in_flight;
            if let Some(rate) = fairness.rate {
                room = room.min(rate.allowance(rate_tat, now));
            }
            usize::try_from(room).unwrap_or(0).min(max)
        };
        if room == 0 {
            continue;
        }
        let mut picked = Vec::new();
        for sql in [EXPIRED, if probe { PROBE } else { DUE }] {
            let mut statement = tx.prepare_cached(sql)?;
            let mut rows = statement.query(params![now, subscriber])?;
            while picked.len() < room {
                let Some(row) = rows.next()? else { break };
                let (id, task): (i64, String) = (row.get(0)?, row.get(1)?);
                if tasks.insert(task) {
                    picked.push(id);
                }
            }
        }
        if !picked.is_empty() {
            shares.push(Share {
                subscriber,
                probe,
                rate_tat,
                picked,
                taken: 0,
            });
        }
    }
    // Round-robin: each subscriber's first, then each one's second, and so on.
    let mut chosen = Vec::with_capacity(max);
    for round in 0.. {
        let before = chosen.len();
        for share in &mut shares {
            if chosen.len() == max {
                break;
            }
            if let Some(&id) = share.picked.get(round) {
                chosen.push((id, share.probe));
                share.taken += 1;
            }
        }
        if chosen.len() == before || chosen.len() == max {
            break;
        }
    }
    let lease_until = now + lease.as_millis() as i64;
    let mut claimed = Vec::with_capacity(chosen.len());
    let mut update = tx.prepare_cached(
        "UPDATE deliveries SET state = 'in_flight', lease_owner = ?2, lease_until = ?3, updated_at = ?4 WHERE id = ?1",
    )?;
    let mut read = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM deliveries WHERE id = ?1"))?;
    for (id, probe) in chosen {
        update.execute(params![id, owner, lease_until, now])?;
        let mut delivery = read.query_row(params![id], row_to_delivery)?;
        delivery.probe = probe;
        claimed.push(delivery);
    }
    let mut served = tx.prepare_cached(
        "UPDATE subscribers SET served_at = ?2, rate_tat = ?3,
                probe_id = CASE WHEN ?4 IS NULL THEN probe_id ELSE ?4 END,
                probe_until = CASE WHEN ?4 IS NULL THEN probe_until ELSE ?5 END
         WHERE id = ?1",
    )?;
    for share in shares.iter().filter(|share| share.taken > 0) {
        let rate_tat = fairness.rate.map_or(share.rate_tat, |rate| {
            rate.advance(share.rate_tat, now, share.taken as i64)
        });
        let probe = share.probe.then(|| share.picked[0]);
        served.execute(params![share.subscriber, now, rate_tat, probe, lease_until])?;
    }
    claimed.sort_by_key(|d| d.id);
    Ok(claimed)
}

static HEALTH: LazyLock<String> = LazyLock::new(|| for_sqlite(&health_update("subscribers")));
static DRAIN: LazyLock<String> = LazyLock::new(|| for_sqlite(&drain_now("deliveries")));
static PAUSE: LazyLock<String> = LazyLock::new(|| for_sqlite(&operator_pause("subscribers")));
static RESUME: LazyLock<String> = LazyLock::new(|| for_sqlite(&operator_resume("subscribers")));

pub(super) fn finish(
    tx: &Connection,
    id: i64,
    owner: &str,
    completion: Completion,
    health: Health,
) -> rusqlite::Result<Transition> {
    let now = now_ms();
    let Some((subscriber, probe, task_key, status)) = tx
        .prepare_cached(
            "SELECT d.subscriber, s.probe_id IS NOT NULL AND s.probe_id = d.id, d.task_key, d.status
             FROM deliveries d LEFT JOIN subscribers s ON s.id = d.subscriber
             WHERE d.id = ?1 AND d.lease_owner = ?2 AND d.state = 'in_flight'",
        )?
        .query_row(params![id, owner], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?
    else {
        // Its lease ran out and someone else holds it now: theirs to record.
        return Ok(Transition::Unchanged);
    };
    let (state, next, error, delivered) = match &completion {
        Completion::Delivered => ("delivered", now, None, Some(now)),
        Completion::RetryAt { at, error } => ("pending", *at, Some(error.clone()), None),
        Completion::Dead { error } => ("dead", now, Some(error.clone()), None),
    };
    // A failed probe is not one of the delivery's attempts: it waits, as paused ones do.
    let spent = i64::from(!(probe && state == "pending"));
    let next = if spent == 0 { now } else { next };
    tx.execute_cached(
        "UPDATE deliveries SET state = ?3, attempts = attempts + ?8, next_attempt_at = ?4, last_error = ?5,
                delivered_at = ?6, lease_owner = NULL, lease_until = NULL, updated_at = ?7
         WHERE id = ?1",
        params![id, owner, state, next, error, delivered, now, spent],
    )?;
    // A delivered attempt is on the delivery itself (`delivered_at`): only failures are
    // journaled, so the relay's everyday path writes nothing more.
    if let Some(task_id) = crate::store::task_id_of(&task_key).filter(|_| delivered.is_none()) {
        let detail = crate::store::journal::delivery_detail(&completion, spent == 1);
        super::journal::write(
            tx,
            task_id,
            now,
            JournalKind::Delivery,
            status.as_deref(),
            None,
            Some(&detail),
        )?;
    }
    let Some(subscriber) = subscriber else {
        return Ok(Transition::Unchanged);
    };
    let [healthy, failing, gone, asked] = flags(health.signal);
    let transition: Option<Option<String>> = tx
        .prepare_cached(&HEALTH)?
        .query_row(
            params![
                subscriber,
                id,
                healthy,
                failing,
                gone,
                asked,
                i64::from(health.breaker.pause_after),
                health.breaker.probe_interval.as_millis() as i64,
                now,
                error
            ],
            |r| r.get(0),
        )
        .optional()?;
    let transition = Transition::parse(transition.flatten().as_deref());
    if transition == Transition::Resumed {
        tx.execute_cached(&DRAIN, params![subscriber, now])?;
    }
    Ok(transition)
}

/// The report's columns, in [`SubscriberReport::from_columns`]'s order.
const REPORT: &str = "SELECT s.id, s.url, s.state, s.reason, s.paused_at, s.next_probe_at, s.probe_until,
        s.failures, s.last_success_at, s.last_error, s.last_error_at, s.window_start, s.window_attempts,
        s.window_failures, s.prev_attempts, s.prev_failures,
        (SELECT COUNT(*) FROM deliveries d WHERE d.subscriber = s.id AND d.state = 'pending'),
        (SELECT COUNT(*) FROM deliveries d WHERE d.subscriber = s.id AND d.state = 'in_flight'),
        (SELECT COUNT(*) FROM deliveries d WHERE d.subscriber = s.id AND d.state = 'dead')
     FROM subscribers s WHERE s.id > ?1 ORDER BY s.id LIMIT ?2";

pub(super) fn list(tx: &Connection, after: &str, limit: usize) -> rusqlite::Result<Vec<SubscriberReport>> {
    let now = now_ms();
    tx.prepare_cached(REPORT)?
        .query_map(params![after, limit as i64], |row| {
            SubscriberReport::from_columns(row, now)
        })?
        .collect()
}

pub(super) fn pause(tx: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(tx.execute_cached(&PAUSE, params![id, now_ms()])? > 0)
}

pub(super) fn resume(tx: &Connection, id: &str) -> rusqlite::Result<bool> {
    let resumed = tx.execute_cached(&RESUME, params![id])? > 0;
    if resumed {
        tx.execute_cached(&DRAIN, params![id, now_ms()])?;
    }
    Ok(resumed)
}

pub(super) fn replay_dead(tx: &Connection, filter: &ReplayFilter) -> rusqlite::Result<u64> {
    let now = now_ms();
    let replayed = tx.execute_cached(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?1, last_error = NULL,
                updated_at = ?1, queued_at = ?1
         WHERE state = 'dead' AND updated_at >= ?2 AND (?3 IS NULL OR subscriber = ?3)",
        params![now, filter.since, filter.subscriber],
    )?;
    Ok(replayed as u64)
}

pub(super) fn expire(tx: &Connection, max_age: Duration) -> rusqlite::Result<u64> {
    let now = now_ms();
    let error = format!(
        "waited longer than delivery.max_age ({}) to be delivered",
        crate::duration::format(max_age)
    );
    let expired = tx.execute_cached(
        "UPDATE deliveries SET state = 'dead', last_error = ?3, updated_at = ?1
         WHERE state = 'pending' AND COALESCE(queued_at, created_at) < ?2",
        params![now, now - max_age.as_millis() as i64, error],
    )?;
    Ok(expired as u64)
}
