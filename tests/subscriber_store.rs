//! The stores' promises about subscribers, held by both: the embedded SQLite store and
//! (with the `postgres` feature) the PostgreSQL one replicas share, in the real server
//! `scripts/test-services` starts. Caps and round-robin claims, the circuit breaker's
//! pause, probes and resume, operators' pause and resume, bulk replay and expiry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runway_proxy::relay::{Completion, DeliveryState, Enqueued, NewDelivery, Outbox};
use runway_proxy::store::{
    Breaker, Fairness, Health, PauseReason, Rate, ReplayFilter, Signal, SubscriberState, Transition,
    subscriber_id,
};

const LEASE: Duration = Duration::from_secs(30);

fn webhook(subscriber: &str, task: &str) -> NewDelivery {
    NewDelivery {
        webhook_id: format!("msg_{subscriber}_{task}"),
        dedup_key: format!("{subscriber}/{task}"),
        task_key: format!("{subscriber}/{task}"),
        status: Some("SUCCEEDED".to_owned()),
        terminal: true,
        target_url: url(subscriber),
        body: Bytes::from(format!(r#"{{"id":"{task}","status":"SUCCEEDED"}}"#)),
        trace: None,
        hold_until: None,
        token: None,
        task_id: None,
    }
}

fn url(subscriber: &str) -> String {
    format!("http://127.0.0.1:9/{subscriber}?secret=s3cr3t")
}

async fn store_all(store: &dyn Outbox, subscriber: &str, tasks: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for n in 0..tasks {
        match store
            .enqueue(webhook(subscriber, &format!("t{n}")))
            .await
            .unwrap()
        {
            Enqueued::Stored(id) => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    ids
}

fn capped(max_in_flight: u32) -> Fairness {
    Fairness {
        max_in_flight,
        rate: None,
    }
}

fn health(signal: Signal, pause_after: u32, probe_interval: Duration) -> Health {
    Health {
        signal,
        breaker: Breaker {
            pause_after,
            probe_interval,
        },
    }
}

fn retry_now(error: &str) -> Completion {
    Completion::RetryAt {
        at: 0,
        error: error.to_owned(),
    }
}

async fn nothing_claimed(store: &dyn Outbox) -> bool {
    store
        .claim_within("a".into(), 10, LEASE, capped(8))
        .await
        .unwrap()
        .is_empty()
}

fn count_of<'a>(
    claimed: impl IntoIterator<Item = &'a runway_proxy::relay::Delivery>,
    subscriber: &str,
) -> usize {
    let id = subscriber_id(&url(subscriber));
    claimed.into_iter().filter(|d| d.subscriber == id).count()
}

async fn a_subscriber_gets_at_most_its_cap_and_slots_go_round_robin(stores: Vec<Arc<dyn Outbox>>) {
    let store = &stores[0];
    store_all(store.as_ref(), "slow", 10).await;
    store_all(store.as_ref(), "fast", 3).await;
    // Every subscriber's first, then every one's second: three each, not six of one.
    let first = store.claim_within("a".into(), 6, LEASE, capped(4)).await.unwrap();
    assert_eq!((count_of(&first, "slow"), count_of(&first, "fast")), (3, 3));
    assert!(first.iter().all(|d| d.subscriber.len() == 16 && !d.probe));
    // "slow" has room for one more under its cap of 4, whichever replica asks.
    let other = stores.last().unwrap();
    let second = other.claim_within("b".into(), 6, LEASE, capped(4)).await.unwrap();
    assert_eq!((count_of(&second, "slow"), count_of(&second, "fast")), (1, 0));
    assert!(
        store
            .claim_within("a".into(), 6, LEASE, capped(4))
            .await
            .unwrap()
            .is_empty()
    );
    // A completion frees its slot.
    store
        .complete(first[0].id, "a".into(), Completion::Delivered)
        .await
        .unwrap();
    let third = store.claim_within("a".into(), 6, LEASE, capped(4)).await.unwrap();
    assert_eq!(third.len(), 1);
    let listed = store.subscribers(String::new(), 10).await.unwrap();
    let slow = listed
        .iter()
        .find(|s| s.id == subscriber_id(&url("slow")))
        .unwrap();
    assert_eq!(
        (slow.backlog, slow.in_flight, slow.state),
        (5, 4, SubscriberState::Active)
    );
    assert_eq!(
        slow.url,
        url("slow"),
        "the store keeps the URL; the admin API redacts it"
    );
}

async fn a_rate_spaces_a_subscribers_attempts(stores: Vec<Arc<dyn Outbox>>) {
    let store = &stores[0];
    store_all(store.as_ref(), "limited", 5).await;
    let fairness = Fairness {
        max_in_flight: 100,
        rate: Some(Rate {
            interval: Duration::from_millis(400),
            burst: 2,
        }),
    };
    let burst = store.claim_within("a".into(), 10, LEASE, fairness).await.unwrap();
    assert_eq!(burst.len(), 2, "a burst of 2");
    assert!(
        store
            .claim_within("a".into(), 10, LEASE, fairness)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let next = store.claim_within("a".into(), 10, LEASE, fairness).await.unwrap();
    assert_eq!(next.len(), 1, "then one per interval");
}

async fn the_breaker_pauses_probes_and_resumes(stores: Vec<Arc<dyn Outbox>>) {
    let store = &stores[0];
    let probe_every = Duration::from_millis(300);
    let ids = store_all(store.as_ref(), "down", 6).await;
    let claimed = store.claim_within("a".into(), 3, LEASE, capped(8)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let mut transitions = Vec::new();
    for delivery in &claimed {
        let transition = store
            .finish_attempt(
                delivery.id,
                "a".into(),
                Some(delivery.subscriber.clone()),
                retry_now("subscriber answered 503 Service Unavailable"),
                health(Signal::Failing, 3, probe_every),
            )
            .await
            .unwrap();
        transitions.push(transition);
    }
    assert_eq!(
        transitions,
        [
            Transition::Unchanged,
            Transition::Unchanged,
            Transition::Paused(PauseReason::Failures)
        ]
    );
    // Paused: nothing is claimed, due or not, until the probe is due.
    assert!(nothing_claimed(store.as_ref()).await);
    let report = &store.subscribers(String::new(), 10).await.unwrap()[0];
    assert_eq!(
        (report.state, report.paused_reason, report.consecutive_failures),
        (SubscriberState::Paused, Some(PauseReason::Failures), 3)
    );
    assert_eq!(report.failure_rate, Some(1.0));
    tokio::time::sleep(probe_every + Duration::from_millis(50)).await;
    let probe = store
        .claim_within("a".into(), 10, LEASE, capped(8))
        .await
        .unwrap();
    assert_eq!(probe.len(), 1, "one probe");
    assert!(probe[0].probe);
    assert_eq!(probe[0].id, ids[0], "the first waiting delivery");
    assert_eq!(
        store.subscribers(String::new(), 10).await.unwrap()[0].state,
        SubscriberState::Probing
    );
    assert!(
        stores
            .last()
            .unwrap()
            .claim_within("b".into(), 10, LEASE, capped(8))
            .await
            .unwrap()
            .is_empty(),
        "one probe at a time, whichever replica asks"
    );
    // A failed probe spends none of its delivery's attempts.
    let attempts_before = probe[0].attempts;
    let failed = store
        .finish_attempt(
            probe[0].id,
            "a".into(),
            None,
            retry_now("subscriber timed out after 15s"),
            health(Signal::Failing, 3, probe_every),
        )
        .await
        .unwrap();
    assert_eq!(failed, Transition::Unchanged);
    assert!(nothing_claimed(store.as_ref()).await);
    tokio::time::sleep(probe_every + Duration::from_millis(50)).await;
    let probe = store
        .claim_within("a".into(), 10, LEASE, capped(8))
        .await
        .unwrap();
    assert_eq!(probe.len(), 1);
    assert_eq!(
        probe[0].attempts, attempts_before,
        "the failed probe was not an attempt"
    );
    let resumed = store
        .finish_attempt(
            probe[0].id,
            "a".into(),
            None,
            Completion::Delivered,
            health(Signal::Healthy, 3, probe_every),
        )
        .await
        .unwrap();
    assert_eq!(resumed, Transition::Resumed);
    // Resumed: the whole backlog is due now (not at the retry times the failures left).
    let drained = store
        .claim_within("a".into(), 10, LEASE, capped(8))
        .await
        .unwrap();
    assert_eq!(drained.len(), 5);
    let report = &store.subscribers(String::new(), 10).await.unwrap()[0];
    assert_eq!(
        (report.state, report.consecutive_failures),
        (SubscriberState::Active, 0)
    );
    assert!(report.last_success_at.is_some());
}

async fn gone_repeatedly_or_asking_pauses_until_resumed(stores: Vec<Arc<dyn Outbox>>) {
    let store = &stores[0];
    store_all(store.as_ref(), "gone", 5).await;
    let claimed = store.claim_within("a".into(), 3, LEASE, capped(8)).await.unwrap();
    let mut last = Transition::Unchanged;
    for delivery in &claimed {
        last = store
            .finish_attempt(
                delivery.id,
                "a".into(),
                None,
                Completion::Dead {
                    error: "subscriber answered 410 Gone".into(),
                },
                health(Signal::Gone, 100, Duration::from_millis(10)),
            )
            .await
            .unwrap();
    }
    assert_eq!(last, Transition::Paused(PauseReason::Gone));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(nothing_claimed(store.as_ref()).await, "no probes: it said stop");
    let id = subscriber_id(&url("gone"));
    assert!(store.resume_subscriber(id.clone()).await.unwrap());
    assert_eq!(
        store
            .claim_within("a".into(), 10, LEASE, capped(8))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(!store.resume_subscriber("0000000000000000".into()).await.unwrap());
    // An operator's pause holds until an operator's resume.
    store_all(store.as_ref(), "asked", 2).await;
    let asked = store.claim_within("a".into(), 1, LEASE, capped(8)).await.unwrap();
    let paused = store
        .finish_attempt(
            asked[0].id,
            "a".into(),
            None,
            Completion::Delivered,
            health(Signal::AskedToPause, 100, Duration::from_millis(10)),
        )
        .await
        .unwrap();
    assert_eq!(paused, Transition::Paused(PauseReason::Asked));
    assert!(nothing_claimed(store.as_ref()).await);
    let asked_id = subscriber_id(&url("asked"));
    assert!(store.pause_subscriber(asked_id.clone()).await.unwrap());
    let listed = store.subscribers(String::new(), 10).await.unwrap();
    let report = listed.iter().find(|s| s.id == asked_id).unwrap();
    assert_eq!(report.paused_reason, Some(PauseReason::Operator));
    assert!(store.resume_subscriber(asked_id).await.unwrap());
    assert_eq!(
        store
            .claim_within("a".into(), 10, LEASE, capped(8))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn bulk_replay_requeues_matching_dead_letters_once(stores: Vec<Arc<dyn Outbox>>) {
    let store = &stores[0];
    store_all(store.as_ref(), "one", 3).await;
    store_all(store.as_ref(), "two", 2).await;
    let claimed = store.claim("a".into(), 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 5);
    let before = runway_proxy::duration::unix_millis();
    for delivery in &claimed {
        store
            .complete(
                delivery.id,
                "a".into(),
                Completion::Dead {
                    error: "subscriber answered 404 Not Found (after 8 attempts)".into(),
                },
            )
            .await
            .unwrap();
    }
    let in_the_future = ReplayFilter {
        since: before + 60_000,
        subscriber: None,
    };
    assert_eq!(store.replay_dead(in_the_future).await.unwrap(), 0);
    let one = ReplayFilter {
        since: before - 1000,
        subscriber: Some(subscriber_id(&url("one"))),
    };
    assert_eq!(store.replay_dead(one.clone()).await.unwrap(), 3);
    assert_eq!(store.replay_dead(one).await.unwrap(), 0, "each dead letter once");
    let again = store.claim("a".into(), 10, LEASE).await.unwrap();
    assert_eq!(count_of(&again, "one"), 3);
    assert!(again.iter().all(|d| d.attempts == 0));
    let all = ReplayFilter {
        since: 0,
        subscriber: None,
    };
    assert_eq!(store.replay_dead(all).await.unwrap(), 2);
    assert_eq!(store.list(DeliveryState::Dead, 0, 10).await.unwrap().len(), 0);
}

async fn webhooks_past_their_age_become_dead_letters(stores: Vec<Arc<dyn Outbox>>) {
    let store = &stores[0];
    store_all(store.as_ref(), "paused", 2).await;
    assert!(
        store
            .pause_subscriber(subscriber_id(&url("paused")))
            .await
            .unwrap()
    );
    assert_eq!(store.expire(Duration::from_secs(60)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(store.expire(Duration::from_millis(10)).await.unwrap(), 2);
    let dead = store.list(DeliveryState::Dead, 0, 10).await.unwrap();
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("delivery.max_age")),
        "{dead:?}"
    );
    // A replay queues it again, and its age counts from then.
    let replayed = store
        .replay_dead(ReplayFilter {
            since: 0,
            subscriber: None,
        })
        .await
        .unwrap();
    assert_eq!(replayed, 2);
    assert_eq!(store.expire(Duration::from_secs(5)).await.unwrap(), 0);
}

macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("outbox.sqlite3");
                    let store = runway_proxy::relay::SqliteOutbox::open(&path).unwrap();
                    super::$scenario(vec![std::sync::Arc::new(store)]).await;
                }
            )*
        }

        /// Two replicas' stores on one database: whichever claims, the caps, the probe
        /// and the round-robin are one.
        #[cfg(feature = "postgres")]
        mod postgres {
            use runway_proxy::relay::{DatabaseSettings, Outbox, PostgresOutbox};
            $(
                #[tokio::test]
                async fn $scenario() {
                    let url = super::common::services::fresh_database().await;
                    let mut stores: Vec<std::sync::Arc<dyn Outbox>> = Vec::new();
                    for _ in 0..2 {
                        let store = PostgresOutbox::connect(&DatabaseSettings::new(&url)).await.unwrap();
                        stores.push(std::sync::Arc::new(store));
                    }
                    super::$scenario(stores).await;
                }
            )*
        }
    };
}

on_every_store!(
    a_subscriber_gets_at_most_its_cap_and_slots_go_round_robin,
    a_rate_spaces_a_subscribers_attempts,
    the_breaker_pauses_probes_and_resumes,
    gone_repeatedly_or_asking_pauses_until_resumed,
    bulk_replay_requeues_matching_dead_letters_once,
    webhooks_past_their_age_become_dead_letters,
);
