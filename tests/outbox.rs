//! The stores' promises, held by every store: the embedded SQLite one, and (with the
//! `postgres` feature) the PostgreSQL one that replicas share, each test on a database of
//! its own in the real server that `scripts/test-services` starts.
//!
//! Each scenario is written once, against the `Outbox`, `IdempotencyStore` and
//! `TaskStore` traits, and run on both stores.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runway_proxy::idempotency::{Begin, Claim, Finished, IdempotencyStore, StoredAnswer};
use runway_proxy::relay::{Completion, DeliveryState, Enqueued, NewDelivery, Outbox};
use runway_proxy::store::{ArchiveBacklog, ArchiveFinish, ArchiveJobs, ArchiveState, Released};
use runway_proxy::tasks::{
    Checked, Finished as TaskFinished, Limit, NewTask, Reservation, Reserved, Seen, StatusClass, TaskFormat,
    TaskLimits, TaskReport, TaskStore, UsageReport, WatchState,
};

trait Store: Outbox + IdempotencyStore + TaskStore + ArchiveJobs {}
impl<T: Outbox + IdempotencyStore + TaskStore + ArchiveJobs> Store for T {}

fn webhook(task: &str, status: &str, at: u32) -> NewDelivery {
    let terminal = matches!(status, "SUCCEEDED" | "FAILED");
    NewDelivery {
        webhook_id: format!("msg_{task}_{status}_{at}"),
        dedup_key: format!("{task}/{status}/{at}"),
        task_key: task.to_owned(),
        status: Some(status.to_owned()),
        terminal,
        target_url: "http://127.0.0.1:9/hook".to_owned(),
        body: Bytes::from(format!(
            r#"{{"id":"{task}","status":"{status}","at":{at},"raw":"\u00e9 \u0000"}}"#
        )),
        trace: None,
        hold_until: None,
        token: None,
        task_id: None,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const LEASE: Duration = Duration::from_secs(30);

async fn stores_once_and_keeps_the_exact_bytes(store: Arc<dyn Store>) {
    let first = webhook("t1", "RUNNING", 1);
    let Enqueued::Stored(id) = store.enqueue(first.clone()).await.unwrap() else {
        panic!("a new webhook is stored");
    };
    assert_eq!(
        store.enqueue(first.clone()).await.unwrap(),
        Enqueued::Duplicate(id)
    );
    let claimed = store.claim("a".into(), 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let d = &claimed[0];
    assert_eq!(
        (
            d.id,
            &d.webhook_id,
            &d.task_key,
            d.status.as_deref(),
            &d.target_url,
            &d.body
        ),
        (
            id,
            &first.webhook_id,
            &first.task_key,
            Some("RUNNING"),
            &first.target_url,
            &first.body
        )
    );
    assert_eq!((d.state, d.attempts), (DeliveryState::InFlight, 0));
    assert_eq!(
        store.enqueue(first).await.unwrap(),
        Enqueued::Duplicate(id),
        "still a duplicate while in flight"
    );
}

async fn a_terminal_status_supersedes_older_ones(store: Arc<dyn Store>) {
    let Enqueued::Stored(running) = store.enqueue(webhook("t1", "RUNNING", 1)).await.unwrap() else {
        panic!()
    };
    let Enqueued::Stored(done) = store.enqueue(webhook("t1", "SUCCEEDED", 2)).await.unwrap() else {
        panic!()
    };
    let Enqueued::Superseded(late) = store.enqueue(webhook("t1", "RUNNING", 3)).await.unwrap() else {
        panic!("a status arriving after the terminal one is never delivered")
    };
    let Enqueued::Superseded(_) = store.enqueue(webhook("t1", "FAILED", 4)).await.unwrap() else {
        panic!("nor a second terminal status (a late callback after a recovered result)")
    };
    let superseded: Vec<i64> = store
        .list(DeliveryState::Superseded, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(&superseded[..2], [running, late]);
    assert_eq!(superseded.len(), 3);
    let claimed = store.claim("a".into(), 10, LEASE).await.unwrap();
    assert_eq!(claimed.iter().map(|d| d.id).collect::<Vec<_>>(), vec![done]);
}

async fn one_delivery_per_task_in_flight_in_order(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for (task, status, at) in [("t1", "PENDING", 1), ("t1", "RUNNING", 2), ("t2", "RUNNING", 1)] {
        let Enqueued::Stored(id) = store.enqueue(webhook(task, status, at)).await.unwrap() else {
            panic!()
        };
        ids.push(id);
    }
    let first: Vec<i64> = store
        .claim("a".into(), 10, LEASE)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(first, vec![ids[0], ids[2]], "t1's second waits for its first");
    assert!(store.claim("b".into(), 10, LEASE).await.unwrap().is_empty());
    store
        .complete(ids[0], "a".into(), Completion::Delivered)
        .await
        .unwrap();
    let next = store.claim("b".into(), 10, LEASE).await.unwrap();
    assert_eq!(next.iter().map(|d| d.id).collect::<Vec<_>>(), vec![ids[1]]);
    let delivered = store.list(DeliveryState::Delivered, 0, 10).await.unwrap();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].delivered_at.is_some());
    assert_eq!(delivered[0].attempts, 1);
}

async fn an_expired_lease_is_claimed_again_and_the_old_owner_is_ignored(store: Arc<dyn Store>) {
    let Enqueued::Stored(id) = store.enqueue(webhook("t1", "RUNNING", 1)).await.unwrap() else {
        panic!()
    };
    let short = Duration::from_millis(300);
    assert_eq!(store.claim("dead".into(), 10, short).await.unwrap().len(), 1);
    assert!(
        store.claim("live".into(), 10, LEASE).await.unwrap().is_empty(),
        "leased: nobody else takes it"
    );
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let again = store.claim("live".into(), 10, LEASE).await.unwrap();
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), vec![id]);
    // The owner whose lease ran out comes back: its word no longer counts.
    store
        .complete(id, "dead".into(), Completion::Delivered)
        .await
        .unwrap();
    Outbox::release(&*store, id, "dead".into()).await.unwrap();
    assert_eq!(store.depth().await.unwrap().in_flight, 1);
    store
        .complete(id, "live".into(), Completion::Delivered)
        .await
        .unwrap();
    let depth = store.depth().await.unwrap();
    assert_eq!((depth.pending, depth.in_flight, depth.dead), (0, 0, 0));
}

async fn a_retry_waits_for_its_time(store: Arc<dyn Store>) {
    store.enqueue(webhook("t1", "RUNNING", 1)).await.unwrap();
    let [claimed] = store
        .claim("a".into(), 10, LEASE)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    let at = now_ms() + 600;
    let retry = Completion::RetryAt {
        at,
        error: "subscriber answered 503".into(),
    };
    store.complete(claimed.id, "a".into(), retry).await.unwrap();
    assert!(
        store.claim("a".into(), 10, LEASE).await.unwrap().is_empty(),
        "not due yet"
    );
    let due = store.next_due().await.unwrap().expect("something is due later");
    assert!((due - at).abs() < 250, "next due {due}, scheduled {at}");
    let pending = store.list(DeliveryState::Pending, 0, 10).await.unwrap();
    assert_eq!(pending[0].last_error.as_deref(), Some("subscriber answered 503"));
    assert_eq!(pending[0].attempts, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.claim("a".into(), 10, LEASE).await.unwrap().len(), 1);
}

async fn dead_letters_are_listed_and_replayed(store: Arc<dyn Store>) {
    let Enqueued::Stored(id) = store.enqueue(webhook("t1", "SUCCEEDED", 1)).await.unwrap() else {
        panic!()
    };
    store.claim("a".into(), 10, LEASE).await.unwrap();
    assert!(
        !store.replay(id).await.unwrap(),
        "an in-flight delivery is not replayed"
    );
    let dead = Completion::Dead {
        error: "410 Gone".into(),
    };
    store.complete(id, "a".into(), dead).await.unwrap();
    let letters = store.list(DeliveryState::Dead, 0, 10).await.unwrap();
    assert_eq!(letters.iter().map(|d| d.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(letters[0].last_error.as_deref(), Some("410 Gone"));
    assert_eq!(store.depth().await.unwrap().dead, 1);
    assert!(
        store.list(DeliveryState::Dead, id, 10).await.unwrap().is_empty(),
        "paged by id"
    );
    assert!(store.replay(id).await.unwrap());
    assert!(!store.replay(id + 1000).await.unwrap(), "no such delivery");
    let [again] = store
        .claim("b".into(), 10, LEASE)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!((again.id, again.attempts), (id, 0));
}

async fn a_released_claim_is_pending_again(store: Arc<dyn Store>) {
    store.enqueue(webhook("t1", "RUNNING", 1)).await.unwrap();
    let [claimed] = store
        .claim("a".into(), 10, LEASE)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    Outbox::release(&*store, claimed.id, "a".into()).await.unwrap();
    let [again] = store
        .claim("b".into(), 10, LEASE)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        (again.id, again.attempts),
        (claimed.id, 0),
        "released unattempted"
    );
}

async fn idempotency_keys_keep_their_answer(store: Arc<dyn Store>) {
    let (lease, ttl) = (Duration::from_secs(60), Duration::from_secs(3600));
    let begin =
        |key: &str, fingerprint: &str, ttl: Duration| store.begin(Claim::new(key, fingerprint, lease, ttl));
    assert_eq!(begin("k", "f", ttl).await, Ok(Begin::Started));
    assert_eq!(begin("k", "f", ttl).await, Ok(Begin::InFlight));
    assert_eq!(begin("k", "g", ttl).await, Ok(Begin::Mismatch));
    let answer = StoredAnswer {
        status: 200,
        content_type: Some("application/json".into()),
        body: Bytes::from_static(br#"{"code":200,"data":{"task_id":"x"}}"#),
    };
    store
        .finish("k".into(), Finished::Answer(answer.clone()))
        .await
        .unwrap();
    assert_eq!(begin("k", "f", ttl).await, Ok(Begin::Replay(answer)));
    begin("u", "f", ttl).await.unwrap();
    store.finish("u".into(), Finished::Unknown).await.unwrap();
    assert_eq!(begin("u", "f", ttl).await, Ok(Begin::Unknown));
    begin("r", "f", ttl).await.unwrap();
    IdempotencyStore::release(&*store, "r".into()).await.unwrap();
    assert_eq!(begin("r", "f", ttl).await, Ok(Begin::Started), "released");
    assert_eq!(begin("x", "f", Duration::ZERO).await, Ok(Begin::Started));
    assert_eq!(
        begin("x", "g", ttl).await,
        Ok(Begin::Started),
        "expired: new again"
    );
    let short = Duration::from_millis(200);
    assert_eq!(
        store.begin(Claim::new("l", "f", short, ttl)).await,
        Ok(Begin::Started)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        begin("l", "f", ttl).await,
        Ok(Begin::Unknown),
        "in flight past its lease: its process died mid-request"
    );
}

fn task(id: &str, format: TaskFormat) -> NewTask {
    NewTask {
        task_id: id.to_owned(),
        format,
        route: match format {
            TaskFormat::Reverse => "/runway/pro/generate".to_owned(),
            TaskFormat::Official => "/runwayml/v1/image_to_video".to_owned(),
        },
        key_hash: "0123abcd".to_owned(),
        key: "team-a".to_owned(),
        model: Some("gen4_turbo".to_owned()),
        reservation: None,
        sealed_key: Some("sealed".to_owned()),
        subscriber: Some("https://hooks.example.com/runway".to_owned()),
        outcome_unknown: false,
        trace: None,
        callback_token: None,
    }
}

fn report(status: Option<&str>, terminal: bool) -> TaskReport {
    TaskReport {
        status: status.map(str::to_owned),
        terminal,
        points: None,
        refunded: None,
        progress: None,
    }
}

fn check(status: &str, done: bool, again_after: Duration) -> Checked {
    Checked {
        status: Some(status.to_owned()),
        done,
        recovered: done,
        again_after,
        points: None,
        refunded: None,
        progress: None,
        note: None,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

async fn tasks_are_recorded_once_and_checked_when_due(store: Arc<dyn Store>) {
    store
        .record(task("t1", TaskFormat::Official), Duration::ZERO)
        .await
        .unwrap();
    store.record(task("t2", TaskFormat::Reverse), HOUR).await.unwrap();
    let mut again = task("t1", TaskFormat::Reverse);
    again.route = "/elsewhere".into();
    store.record(again, Duration::ZERO).await.unwrap();
    let [claimed] = store
        .claim_due("a".into(), 10, LEASE)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        (claimed.task_id.as_str(), claimed.format, claimed.route.as_str()),
        ("t1", TaskFormat::Official, "/runwayml/v1/image_to_video"),
        "the first record is kept; t2 is not due"
    );
    assert_eq!(claimed.sealed_key.as_deref(), Some("sealed"));
    assert_eq!(
        claimed.subscriber.as_deref(),
        Some("https://hooks.example.com/runway")
    );
    assert_eq!((claimed.state, claimed.checks), (WatchState::Watching, 0));
    assert!(
        store.claim_due("b".into(), 10, LEASE).await.unwrap().is_empty(),
        "leased"
    );
    store
        .checked("t1".into(), "a".into(), check("RUNNING", false, Duration::ZERO))
        .await
        .unwrap();
    let [again] = store
        .claim_due("b".into(), 10, LEASE)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!((again.status.as_deref(), again.checks), (Some("RUNNING"), 1));
    store
        .checked("t1".into(), "b".into(), check("SUCCEEDED", true, Duration::ZERO))
        .await
        .unwrap();
    assert!(
        store.claim_due("a".into(), 10, LEASE).await.unwrap().is_empty(),
        "done"
    );
    let done = store
        .list_tasks(Some(WatchState::Done).into(), 0, 10)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].status.as_deref(), done[0].checks, done[0].recovered),
        (Some("SUCCEEDED"), 2, true)
    );
    let all = store.list_tasks(None.into(), 0, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    assert!(
        store.list_tasks(None.into(), all[0].id, 10).await.unwrap().len() == 1,
        "paged by id"
    );
}

async fn callbacks_push_the_check_back_and_a_terminal_one_ends_the_watch(store: Arc<dyn Store>) {
    store
        .record(task("t1", TaskFormat::Reverse), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        store
            .callback_seen("t1".into(), report(Some("1"), false), HOUR)
            .await
            .unwrap(),
        Seen::Listed
    );
    assert!(
        store.claim_due("a".into(), 10, LEASE).await.unwrap().is_empty(),
        "pushed back"
    );
    let [watched] = store
        .list_tasks(Some(WatchState::Watching).into(), 0, 10)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(watched.status.as_deref(), Some("1"));
    assert!(watched.last_callback_at.is_some());
    let mut succeeded = report(Some("3"), true);
    succeeded.points = Some(320);
    assert_eq!(
        store.callback_seen("t1".into(), succeeded, HOUR).await.unwrap(),
        Seen::Finished(TaskFinished {
            key: "team-a".into(),
            model: Some("gen4_turbo".into()),
            status: StatusClass::Succeeded,
            points: 320,
            refunded: 0,
        }),
        "the callback that ends the task reports it, once"
    );
    let [done] = store
        .list_tasks(Some(WatchState::Done).into(), 0, 10)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!((done.status.as_deref(), done.recovered), (Some("3"), false));
    // A late callback for a finished task changes nothing; an unknown task is not listed.
    assert_eq!(
        store
            .callback_seen("t1".into(), report(Some("1"), false), HOUR)
            .await
            .unwrap(),
        Seen::Listed
    );
    let [done] = store
        .list_tasks(Some(WatchState::Done).into(), 0, 10)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(done.status.as_deref(), Some("3"));
    assert_eq!(
        store
            .callback_seen("nope".into(), report(None, true), HOUR)
            .await
            .unwrap(),
        Seen::NotListed
    );
}

async fn a_lapsed_watch_lease_is_claimed_again_and_the_old_owner_ignored(store: Arc<dyn Store>) {
    store
        .record(task("t1", TaskFormat::Official), Duration::ZERO)
        .await
        .unwrap();
    let mut unknown = task("u1", TaskFormat::Reverse);
    unknown.outcome_unknown = true;
    store.record(unknown, Duration::ZERO).await.unwrap();
    let short = Duration::from_millis(300);
    let claimed = store.claim_due("dead".into(), 10, short).await.unwrap();
    assert_eq!(
        claimed.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        ["t1"],
        "unknown: never checked"
    );
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    assert_eq!(store.claim_due("live".into(), 10, LEASE).await.unwrap().len(), 1);
    store
        .checked(
            "t1".into(),
            "dead".into(),
            check("SUCCEEDED", true, Duration::ZERO),
        )
        .await
        .unwrap();
    assert!(
        store
            .list_tasks(Some(WatchState::Done).into(), 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "the old owner's word"
    );
    let unknown = store
        .list_tasks(Some(WatchState::Unknown).into(), 0, 10)
        .await
        .unwrap();
    assert_eq!(unknown.len(), 1);
    let counts = store.count_tasks().await.unwrap();
    assert_eq!((counts.watching, counts.done, counts.unknown), (1, 0, 1));
}

fn reservation(id: &str, key: &str) -> Reservation {
    Reservation {
        id: id.to_owned(),
        format: TaskFormat::Reverse,
        route: "/runway/pro/generate".to_owned(),
        key_hash: format!("hash-of-{key}"),
        key: key.to_owned(),
        model: Some("gen4_turbo".to_owned()),
        points: None,
    }
}

async fn estimates_count_until_the_bill_replaces_them(store: Arc<dyn Store>) {
    let limits = TaskLimits {
        points_per_key: Some(120),
        ..limits()
    };
    let estimated = |id: &str| Reservation {
        points: Some(50),
        ..reservation(id, "est")
    };
    assert_eq!(
        store.reserve(estimated("r1"), limits).await.unwrap(),
        Reserved::Granted
    );
    assert_eq!(
        store.reserve(estimated("r2"), limits).await.unwrap(),
        Reserved::Granted
    );
    assert_eq!(
        store.reserve(estimated("r3"), limits).await.unwrap(),
        Reserved::Refused {
            limit: Limit::PointsPerKey,
            used: 100
        },
        "a third estimate would not fit whole"
    );
    // The first becomes a task, and CometAPI reports what it really cost: 10.
    let mut task = keyed("billed", "est", "gen4_turbo");
    task.reservation = Some("r1".into());
    store.record(task, HOUR).await.unwrap();
    store
        .callback_seen("billed".into(), ended("3", 10, 0), HOUR)
        .await
        .unwrap();
    let spent: i64 = store
        .spend(Some("est".into()), 0)
        .await
        .unwrap()
        .iter()
        .map(|s| s.net_points)
        .sum();
    assert_eq!(
        spent, 60,
        "the bill replaced its estimate; the other still counts at 50"
    );
    assert_eq!(
        store.reserve(estimated("r4"), limits).await.unwrap(),
        Reserved::Granted
    );
}

fn keyed(id: &str, key: &str, model: &str) -> NewTask {
    let mut task = task(id, TaskFormat::Reverse);
    task.key = key.to_owned();
    task.key_hash = format!("hash-of-{key}");
    task.model = Some(model.to_owned());
    task
}

fn limits() -> TaskLimits {
    TaskLimits {
        window: Duration::from_secs(24 * 3600),
        unknown_for: HOUR,
        ..TaskLimits::default()
    }
}

fn ended(status: &str, points: i64, refunded: i64) -> TaskReport {
    TaskReport {
        status: Some(status.to_owned()),
        terminal: true,
        points: Some(points),
        refunded: Some(refunded),
        progress: None,
    }
}

/// Tasks in flight are counted from the reservation, through the task it turns into,
/// until the task ends; a released reservation and a finished task free their slot.
async fn tasks_in_flight_are_counted_from_reservation_to_the_end(store: Arc<dyn Store>) {
    let slots = TaskLimits {
        in_flight: Some(2),
        in_flight_per_key: Some(1),
        ..limits()
    };
    let reserve = |id: &str, key: &str| store.reserve(reservation(id, key), slots);
    assert_eq!(reserve("r1", "a").await.unwrap(), Reserved::Granted);
    assert_eq!(
        reserve("r2", "a").await.unwrap(),
        Reserved::Refused {
            limit: Limit::InFlightPerKey,
            used: 1
        }
    );
    assert_eq!(reserve("r3", "b").await.unwrap(), Reserved::Granted);
    assert_eq!(
        reserve("r4", "c").await.unwrap(),
        Reserved::Refused {
            limit: Limit::InFlight,
            used: 2
        }
    );
    store.cancel_reservation("r3".into()).await.unwrap();
    assert_eq!(reserve("r4", "c").await.unwrap(), Reserved::Granted, "released");

    // The reservation becomes the task, which goes on counting.
    let mut accepted = keyed("t1", "a", "gen4_turbo");
    accepted.reservation = Some("r1".into());
    store.record(accepted, HOUR).await.unwrap();
    store.cancel_reservation("r1".into()).await.unwrap();
    let t1 = store
        .task("t1".into())
        .await
        .unwrap()
        .expect("the reservation became t1");
    assert_eq!((t1.state, t1.key.as_str()), (WatchState::Watching, "a"));
    assert_eq!(store.task("r1".into()).await.unwrap(), None);
    assert_eq!(
        reserve("r5", "a").await.unwrap(),
        Reserved::Refused {
            limit: Limit::InFlightPerKey,
            used: 1
        }
    );
    assert!(matches!(
        store
            .callback_seen("t1".into(), ended("3", 320, 0), HOUR)
            .await
            .unwrap(),
        Seen::Finished(_)
    ));
    assert_eq!(reserve("r5", "a").await.unwrap(), Reserved::Granted, "t1 ended");

    // A submission whose outcome is unknown counts for `unknown_for`.
    let mut unknown = keyed("u1", "d", "gen4_turbo");
    unknown.outcome_unknown = true;
    store.record(unknown, HOUR).await.unwrap();
    let per_key = TaskLimits {
        in_flight_per_key: Some(1),
        ..limits()
    };
    assert_eq!(
        store.reserve(reservation("r6", "d"), per_key).await.unwrap(),
        Reserved::Refused {
            limit: Limit::InFlightPerKey,
            used: 1
        }
    );
    let timed_out = TaskLimits {
        unknown_for: Duration::ZERO,
        ..per_key
    };
    assert_eq!(
        store.reserve(reservation("r6", "d"), timed_out).await.unwrap(),
        Reserved::Granted
    );
    let counts = store.count_tasks().await.unwrap();
    assert_eq!(counts.pending, 3, "r4, r5 and r6");
}

/// Budgets count tasks and points charged less refunded over the rolling window, per
/// key and in all; what a callback or a check reports when the task ends is what counts.
async fn budgets_count_net_points_over_the_window(store: Arc<dyn Store>) {
    store.record(keyed("t1", "a", "gen4_turbo"), HOUR).await.unwrap();
    store
        .record(keyed("t2", "a", "gen3a_turbo"), Duration::ZERO)
        .await
        .unwrap();
    store
        .callback_seen("t1".into(), ended("3", 320, 0), HOUR)
        .await
        .unwrap();
    // t2 fails, as the watcher finds: charged, then refunded in full.
    let [due] = store
        .claim_due("w".into(), 10, LEASE)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(due.task_id, "t2");
    let finished = store
        .checked(
            "t2".into(),
            "w".into(),
            Checked {
                points: Some(160),
                refunded: Some(160),
                ..check("FAILED", true, Duration::ZERO)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        finished,
        Some(TaskFinished {
            key: "a".into(),
            model: Some("gen3a_turbo".into()),
            status: StatusClass::Failed,
            points: 160,
            refunded: 160,
        })
    );
    let spent = store.spend(Some("a".into()), 0).await.unwrap();
    assert_eq!(
        spent.iter().map(|s| s.net_points).collect::<Vec<_>>(),
        [320, 0],
        "oldest first, net of the refund"
    );
    assert!(spent[0].submitted_at <= spent[1].submitted_at);
    assert!(store.spend(Some("b".into()), 0).await.unwrap().is_empty());

    let try_with = |key: &'static str, limits: TaskLimits| {
        let store = Arc::clone(&store);
        async move {
            let got = store.reserve(reservation("probe", key), limits).await.unwrap();
            store.cancel_reservation("probe".into()).await.unwrap();
            got
        }
    };
    let points = |cap| TaskLimits {
        points_per_key: Some(cap),
        ..limits()
    };
    assert_eq!(
        try_with("a", points(320)).await,
        Reserved::Refused {
            limit: Limit::PointsPerKey,
            used: 320
        },
        "spent: the refund gave 160 back"
    );
    assert_eq!(
        try_with("a", points(321)).await,
        Reserved::Granted,
        "not spent yet: the task that crosses the line is allowed"
    );
    assert_eq!(try_with("b", points(1)).await, Reserved::Granted, "per key");
    let tasks = TaskLimits {
        tasks_per_key: Some(2),
        ..limits()
    };
    assert_eq!(
        try_with("a", tasks).await,
        Reserved::Refused {
            limit: Limit::TasksPerKey,
            used: 2
        }
    );
    assert_eq!(try_with("b", tasks).await, Reserved::Granted);
    let in_all = TaskLimits {
        tasks: Some(2),
        points: Some(1_000),
        ..limits()
    };
    assert_eq!(
        try_with("b", in_all).await,
        Reserved::Refused {
            limit: Limit::Tasks,
            used: 2
        },
        "b pays for a's tasks in the global budget"
    );
    let points_in_all = TaskLimits {
        points: Some(320),
        ..limits()
    };
    assert_eq!(
        try_with("b", points_in_all).await,
        Reserved::Refused {
            limit: Limit::Points,
            used: 320
        }
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    let short_window = TaskLimits {
        window: Duration::from_millis(50),
        ..points(1)
    };
    assert_eq!(
        try_with("a", short_window).await,
        Reserved::Granted,
        "out of the window"
    );
}

/// `usage` sums the ledger by key, model and ending, leaves reservations out, finds a
/// key by label or hash; `prune` forgets what ended before the retention.
async fn usage_sums_the_ledger_and_prune_forgets_what_ended(store: Arc<dyn Store>) {
    for (id, key, model) in [
        ("s1", "a", "gen4_turbo"),
        ("s2", "a", "gen4_turbo"),
        ("f1", "a", "gen3a_turbo"),
        ("s3", "b", "gen4_turbo"),
        ("w1", "b", "gen4_turbo"),
    ] {
        store.record(keyed(id, key, model), HOUR).await.unwrap();
    }
    let mut unknown = keyed("u1", "b", "gen4_turbo");
    unknown.outcome_unknown = true;
    store.record(unknown, HOUR).await.unwrap();
    for (id, report) in [
        ("s1", ended("3", 320, 0)),
        ("s2", ended("3", 160, 0)),
        ("f1", ended("2", 100, 100)),
        ("s3", ended("3", 320, 0)),
    ] {
        store.callback_seen(id.into(), report, HOUR).await.unwrap();
    }
    let mut w1 = report(Some("1"), false);
    w1.points = Some(320);
    store.callback_seen("w1".into(), w1, HOUR).await.unwrap();
    store.reserve(reservation("r1", "a"), limits()).await.unwrap();

    let usage = |key: Option<&str>| {
        let store = Arc::clone(&store);
        let key = key.map(str::to_owned);
        async move {
            let rows = store.usage(key, 0, now_ms() + 1_000).await.unwrap();
            UsageReport::of(&rows)
        }
    };
    let all = usage(None).await;
    assert_eq!(
        (
            all.total.tasks,
            all.total.succeeded,
            all.total.failed,
            all.total.unfinished,
            all.total.unknown
        ),
        (6, 3, 1, 1, 1),
        "the reservation is not a task"
    );
    assert_eq!(
        (all.total.points, all.total.refunded, all.total.net_points),
        (1_220, 100, 1_120)
    );
    let a = &all.keys["a"];
    assert_eq!((a.tasks, a.points, a.refunded, a.net_points), (3, 580, 100, 480));
    assert_eq!(all.keys["b"].tasks, 3);
    assert_eq!(all.models["gen4_turbo"].tasks, 5);
    assert_eq!(all.models["gen3a_turbo"].net_points, 0);
    assert_eq!(usage(Some("a")).await.total, a.clone(), "by label");
    assert_eq!(usage(Some("hash-of-a")).await.total, a.clone(), "by hash");
    assert_eq!(usage(Some("nobody")).await.total.tasks, 0);
    let later = store
        .usage(None, now_ms() + 1_000, now_ms() + 2_000)
        .await
        .unwrap();
    assert!(later.is_empty(), "from..to bounds the submission time");

    // Ended, unknown and reserved records go; the task still running stays.
    assert_eq!(store.prune(now_ms() + 1).await.unwrap(), 6);
    let left = store.list_tasks(None.into(), 0, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        ["w1"]
    );
    assert_eq!(store.prune(0).await.unwrap(), 0, "nothing older");
}

/// Watchers racing for due tasks (several replicas' included): each task is claimed by
/// exactly one of them while its lease holds.
async fn racing_watchers_claim_each_task_once(stores: Vec<Arc<dyn Store>>) {
    for n in 0..40 {
        stores[0]
            .record(task(&format!("t{n}"), TaskFormat::Official), Duration::ZERO)
            .await
            .unwrap();
    }
    let claims = stores.iter().cycle().take(6).enumerate().map(|(n, store)| {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..10 {
                let claimed = store.claim_due(format!("w{n}"), 3, LEASE).await.unwrap();
                mine.extend(claimed.into_iter().map(|t| t.task_id));
            }
            mine
        })
    });
    let mut all: Vec<String> = Vec::new();
    for claim in futures_util::future::join_all(claims).await {
        all.extend(claim.unwrap());
    }
    all.sort();
    let claimed = all.len();
    all.dedup();
    assert_eq!(claimed, all.len(), "a task was claimed twice");
    assert_eq!(all.len(), 40, "every due task was claimed");
}

/// Claimers racing on the same store (several workers, or several replicas each with
/// its own connection to it): every delivery is claimed exactly once, a task never has
/// two deliveries in flight, and a task's deliveries go in the order they were stored.
async fn racing_claimers_share_nothing(stores: Vec<Arc<dyn Store>>) {
    const TASKS: u32 = 20;
    const PER_TASK: u32 = 6;
    for at in 1..=PER_TASK {
        for task in 0..TASKS {
            stores[0]
                .enqueue(webhook(&format!("t{task}"), "RUNNING", at))
                .await
                .unwrap();
        }
    }
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, Vec<i64>>>> = Arc::default();
    let mut claimers = Vec::new();
    for (n, store) in stores.iter().cycle().take(6).enumerate() {
        let (store, in_flight, seen) = (Arc::clone(store), Arc::clone(&in_flight), Arc::clone(&seen));
        claimers.push(tokio::spawn(async move {
            let owner = format!("claimer-{n}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut idle = 0;
            while idle < 20 && tokio::time::Instant::now() < deadline {
                let claimed = store.claim(owner.clone(), 4, LEASE).await.unwrap();
                if claimed.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                idle = 0;
                for d in &claimed {
                    assert!(
                        in_flight.lock().unwrap().insert(d.task_key.clone()),
                        "two deliveries of {} in flight at once",
                        d.task_key
                    );
                    seen.lock()
                        .unwrap()
                        .entry(d.task_key.clone())
                        .or_default()
                        .push(d.id);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                for d in claimed {
                    in_flight.lock().unwrap().remove(&d.task_key);
                    store
                        .complete(d.id, owner.clone(), Completion::Delivered)
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for claimer in claimers {
        claimer.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), TASKS as usize);
    for (task, ids) in seen.iter() {
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, &sorted, "{task}: claimed once each, in order");
        assert_eq!(ids.len(), PER_TASK as usize, "{task}: every delivery claimed");
    }
}

/// A task's submission span and its webhooks' are kept, for the links of the callback's
/// receipt and of each delivery attempt.
async fn trace_contexts_are_kept_with_tasks_and_deliveries(store: Arc<dyn Store>) {
    let traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut with = task("traced", TaskFormat::Reverse);
    with.trace = Some(traced.to_owned());
    store.record(with, Duration::from_secs(60)).await.unwrap();
    store
        .record(task("untraced", TaskFormat::Reverse), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.trace_of("traced".into()).await.unwrap().as_deref(),
        Some(traced)
    );
    assert_eq!(store.trace_of("untraced".into()).await.unwrap(), None);
    assert_eq!(store.trace_of("unknown".into()).await.unwrap(), None);
    // A reservation that becomes the task takes the trace too.
    store
        .reserve(reservation("pending-1", "team-a"), limits())
        .await
        .unwrap();
    let mut reserved = keyed("from-reservation", "team-a", "gen4");
    reserved.reservation = Some("pending-1".to_owned());
    reserved.trace = Some(traced.to_owned());
    store.record(reserved, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        store
            .trace_of("from-reservation".into())
            .await
            .unwrap()
            .as_deref(),
        Some(traced)
    );

    let mut delivery = webhook("traced", "SUCCEEDED", 1);
    delivery.trace = Some(traced.to_owned());
    store.enqueue(delivery).await.unwrap();
    store.enqueue(webhook("untraced", "SUCCEEDED", 1)).await.unwrap();
    let claimed = store.claim("w".into(), 10, LEASE).await.unwrap();
    let trace_of = |task: &str| {
        claimed
            .iter()
            .find(|d| d.task_key == task)
            .map(|d| d.trace.clone())
            .expect("claimed")
    };
    assert_eq!(trace_of("traced").as_deref(), Some(traced));
    assert_eq!(trace_of("untraced"), None);
}

fn through(token: i64, task: &str, status: &str, at: u32) -> NewDelivery {
    let mut delivery = webhook(task, status, at);
    delivery.token = Some(token);
    delivery.task_id = Some(task.to_owned());
    delivery
}

async fn a_token_belongs_to_the_first_task_recorded_for_it(store: Arc<dyn Store>) {
    // Bound at submission: the first webhook, naming another task, is refused.
    let mut submitted = task("bound-task", TaskFormat::Reverse);
    submitted.callback_token = Some(0x50b_0001);
    store.record(submitted, LEASE).await.unwrap();
    let forged = through(0x50b_0001, "other-task", "SUCCEEDED", 1);
    assert_eq!(store.enqueue(forged).await.unwrap(), Enqueued::Refused);
    let mut unnamed = through(0x50b_0001, "x", "SUCCEEDED", 1);
    unnamed.task_id = None;
    assert_eq!(
        store.enqueue(unnamed).await.unwrap(),
        Enqueued::Refused,
        "a bound token must name its task"
    );
    let genuine = through(0x50b_0001, "bound-task", "SUCCEEDED", 1);
    assert!(matches!(
        store.enqueue(genuine).await.unwrap(),
        Enqueued::Stored(_)
    ));

    // Not bound at submission (an outcome-unknown one, or no watch list): its first
    // webhook binds it.
    let first = through(0x50b_0002, "task-a", "RUNNING", 1);
    assert!(matches!(store.enqueue(first).await.unwrap(), Enqueued::Stored(_)));
    let other = through(0x50b_0002, "task-b", "SUCCEEDED", 2);
    assert_eq!(store.enqueue(other).await.unwrap(), Enqueued::Refused);
    let later = through(0x50b_0002, "task-a", "SUCCEEDED", 2);
    assert!(matches!(store.enqueue(later).await.unwrap(), Enqueued::Stored(_)));
    // Events the proxy makes itself come through no token.
    assert!(matches!(
        store.enqueue(webhook("task-c", "SUCCEEDED", 3)).await.unwrap(),
        Enqueued::Stored(_)
    ));
    let pending = store.list(DeliveryState::Pending, 0, 100).await.unwrap();
    assert!(
        pending
            .iter()
            .all(|d| d.task_key != "other-task" && d.task_key != "task-b")
    );
}

async fn archive_jobs_hold_their_delivery_until_finished(store: Arc<dyn Store>) {
    let mut held = webhook("archived-task", "SUCCEEDED", 1);
    held.hold_until = Some(now_ms() + 60_000);
    let Enqueued::Stored(id) = store.enqueue(held).await.unwrap() else {
        panic!("stored");
    };
    assert!(
        store.claim("w".into(), 10, LEASE).await.unwrap().is_empty(),
        "held back"
    );
    assert_eq!(
        store.list(DeliveryState::Archiving, 0, 10).await.unwrap()[0].id,
        id
    );
    assert_eq!(
        store.archive_backlog().await.unwrap(),
        ArchiveBacklog { open: 1, holding: 1 }
    );

    let jobs = store.claim_archive("a1".into(), 10, LEASE).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].holding);
    assert_eq!(jobs[0].delivery_id, id);
    assert!(
        store
            .claim_archive("a2".into(), 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // A transient failure: the job waits, the delivery is still held.
    let retry = ArchiveFinish::RetryAt {
        at: now_ms(),
        error: "503".into(),
    };
    assert_eq!(
        store
            .finish_archive(jobs[0].id, "a1".into(), retry)
            .await
            .unwrap(),
        Released::Nothing
    );
    let jobs = store.claim_archive("a2".into(), 10, LEASE).await.unwrap();
    assert_eq!(jobs[0].attempts, 1);
    // Another worker's finish is ignored; the holder's puts the delivery in line.
    let archived = ArchiveFinish::Archived {
        body: Bytes::from_static(b"{\"archived\":true}"),
        result: "[]".into(),
    };
    assert_eq!(
        store
            .finish_archive(jobs[0].id, "a1".into(), archived.clone())
            .await
            .unwrap(),
        Released::Nothing
    );
    assert_eq!(
        store
            .finish_archive(jobs[0].id, "a2".into(), archived)
            .await
            .unwrap(),
        Released::Held
    );
    let claimed = store.claim("w".into(), 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(&claimed[0].body[..], b"{\"archived\":true}");
    let job = store.archive_of("archived-task".into()).await.unwrap().unwrap();
    assert_eq!(job.state, ArchiveState::Archived);

    // Let go at the deadline, archived later: one more delivery announces it, once.
    let mut late = webhook("late-task", "SUCCEEDED", 1);
    late.hold_until = Some(now_ms() + 60_000);
    store.enqueue(late).await.unwrap();
    let job = store
        .claim_archive("a1".into(), 10, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert!(
        store
            .release_held(job.id, "a1".into(), Bytes::from_static(b"{\"failed\":1}"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .release_held(job.id, "a1".into(), Bytes::from_static(b"{}"))
            .await
            .unwrap()
    );
    let sent = store.claim("w".into(), 10, LEASE).await.unwrap();
    assert_eq!(&sent[0].body[..], b"{\"failed\":1}");
    store
        .complete(sent[0].id, "w".into(), Completion::Delivered)
        .await
        .unwrap();
    let done = ArchiveFinish::Archived {
        body: Bytes::from_static(b"{\"late\":1}"),
        result: "[]".into(),
    };
    assert_eq!(
        store.finish_archive(job.id, "a1".into(), done).await.unwrap(),
        Released::Announcement
    );
    let announced = store.claim("w".into(), 10, LEASE).await.unwrap();
    assert_eq!(announced.len(), 1);
    assert_eq!(
        announced[0].webhook_id,
        format!("{}_archived", sent[0].webhook_id)
    );
    assert_eq!(&announced[0].body[..], b"{\"late\":1}");
    assert_eq!(store.archive_backlog().await.unwrap(), ArchiveBacklog::default());

    // Given up while held: the delivery goes out with the body that says so.
    let mut refused = webhook("refused-task", "SUCCEEDED", 1);
    refused.hold_until = Some(now_ms() + 60_000);
    store.enqueue(refused).await.unwrap();
    let job = store
        .claim_archive("a1".into(), 10, LEASE)
        .await
        .unwrap()
        .remove(0);
    let failed = ArchiveFinish::Failed {
        error: "too large".into(),
        body: Bytes::from_static(b"{\"why\":1}"),
    };
    assert_eq!(
        store.finish_archive(job.id, "a1".into(), failed).await.unwrap(),
        Released::Held
    );
    let job = store.archive_of("refused-task".into()).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.last_error.as_deref()),
        (ArchiveState::Failed, Some("too large"))
    );
}

macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = runway_proxy::relay::SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).unwrap();
                    super::$scenario(Arc::new(store)).await;
                }
            )*

            #[tokio::test]
            async fn racing_claimers_share_nothing() {
                let dir = tempfile::tempdir().unwrap();
                let store = runway_proxy::relay::SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).unwrap();
                super::racing_claimers_share_nothing(vec![Arc::new(store)]).await;
            }

            #[tokio::test]
            async fn racing_watchers_claim_each_task_once() {
                let dir = tempfile::tempdir().unwrap();
                let store = runway_proxy::relay::SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).unwrap();
                super::racing_watchers_claim_each_task_once(vec![Arc::new(store)]).await;
            }
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            use super::*;
            use runway_proxy::relay::{DatabaseSettings, PostgresOutbox};

            pub(super) async fn connect(url: &str) -> PostgresOutbox {
                PostgresOutbox::connect(&DatabaseSettings::new(url)).await.unwrap()
            }

            $(
                #[tokio::test]
                async fn $scenario() {
                    let url = common::services::fresh_database().await;
                    super::$scenario(Arc::new(connect(&url).await)).await;
                }
            )*

            /// Three replicas' stores on one database.
            #[tokio::test]
            async fn racing_claimers_share_nothing() {
                let url = common::services::fresh_database().await;
                let mut stores: Vec<Arc<dyn Store>> = Vec::new();
                for _ in 0..3 {
                    stores.push(Arc::new(connect(&url).await));
                }
                super::racing_claimers_share_nothing(stores).await;
            }

            /// Three replicas' stores on one database.
            #[tokio::test]
            async fn racing_watchers_claim_each_task_once() {
                let url = common::services::fresh_database().await;
                let mut stores: Vec<Arc<dyn Store>> = Vec::new();
                for _ in 0..3 {
                    stores.push(Arc::new(connect(&url).await));
                }
                super::racing_watchers_claim_each_task_once(stores).await;
            }
        }
    };
}

on_every_store!(
    stores_once_and_keeps_the_exact_bytes,
    a_terminal_status_supersedes_older_ones,
    one_delivery_per_task_in_flight_in_order,
    an_expired_lease_is_claimed_again_and_the_old_owner_is_ignored,
    a_retry_waits_for_its_time,
    dead_letters_are_listed_and_replayed,
    a_released_claim_is_pending_again,
    idempotency_keys_keep_their_answer,
    tasks_are_recorded_once_and_checked_when_due,
    callbacks_push_the_check_back_and_a_terminal_one_ends_the_watch,
    a_lapsed_watch_lease_is_claimed_again_and_the_old_owner_ignored,
    tasks_in_flight_are_counted_from_reservation_to_the_end,
    budgets_count_net_points_over_the_window,
    usage_sums_the_ledger_and_prune_forgets_what_ended,
    trace_contexts_are_kept_with_tasks_and_deliveries,
    a_token_belongs_to_the_first_task_recorded_for_it,
    archive_jobs_hold_their_delivery_until_finished,
    estimates_count_until_the_bill_replaces_them,
);

#[cfg(feature = "postgres")]
mod postgres_schema {
    use super::*;
    use runway_proxy::relay::{DatabaseSettings, PostgresOutbox};

    async fn sql(url: &str, statement: &str) -> Vec<tokio_postgres::Row> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.query(statement, &[]).await.unwrap()
    }

    /// Replicas starting together migrate once, and agree.
    #[tokio::test]
    async fn replicas_starting_together_migrate_once() {
        let url = common::services::fresh_database().await;
        let settings = DatabaseSettings::new(url.clone());
        let starts = (0..4).map(|_| PostgresOutbox::connect(&settings));
        for started in futures_util::future::join_all(starts).await {
            started.unwrap();
        }
        let versions = sql(&url, "SELECT version FROM runway_proxy_schema ORDER BY version").await;
        let versions: Vec<i32> = versions.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            versions,
            [1, 2, 3, 4, 5, 6, 7, 8, 9],
            "each migration once, in order"
        );
        // And a restart finds the schema as it left it.
        PostgresOutbox::connect(&settings).await.unwrap();
    }

    #[tokio::test]
    async fn a_schema_newer_than_this_build_is_refused() {
        let url = common::services::fresh_database().await;
        let settings = DatabaseSettings::new(url.clone());
        PostgresOutbox::connect(&settings).await.unwrap();
        sql(&url, "INSERT INTO runway_proxy_schema (version) VALUES (99)").await;
        let err = PostgresOutbox::connect(&settings).await.unwrap_err();
        assert!(err.to_string().contains("version 99, newer"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_fast_without_the_password() {
        let dead = common::dead_address().await;
        let mut settings = DatabaseSettings::new(format!("postgres://runway:hunter2@{dead}/runway"));
        settings.timeout = Duration::from_secs(1);
        let started = std::time::Instant::now();
        let err = PostgresOutbox::connect(&settings).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by the timeout"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

/// A SQLite file made before the ledger existed opens with its tasks intact: the new
/// columns are added in place, each task is labelled by its key hash, and the guard's
/// reservations count it.
#[tokio::test]
async fn a_sqlite_file_from_before_the_ledger_gains_it_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.sqlite3");
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE tasks (
                 id INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL UNIQUE,
                 format TEXT NOT NULL, route TEXT NOT NULL, key_hash TEXT NOT NULL,
                 sealed_key TEXT, subscriber TEXT, state TEXT NOT NULL, status TEXT,
                 submitted_at INTEGER NOT NULL, last_callback_at INTEGER,
                 next_check_at INTEGER NOT NULL, checks INTEGER NOT NULL DEFAULT 0,
                 recovered INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_until INTEGER,
                 updated_at INTEGER NOT NULL);
             CREATE INDEX tasks_due ON tasks (state, next_check_at);
             CREATE INDEX tasks_state ON tasks (state, id);",
        )
        .unwrap();
        old.execute(
            "INSERT INTO tasks (task_id, format, route, key_hash, state, submitted_at, next_check_at, updated_at)
             VALUES ('old-1', 'reverse', '/runway/pro/generate', 'hash-of-a', 'watching', ?1, ?1, ?1)",
            [now_ms()],
        )
        .unwrap();
    }
    let store = runway_proxy::relay::SqliteOutbox::open(&path).unwrap();
    let old = store.task("old-1".into()).await.unwrap().expect("kept");
    assert_eq!(
        (old.key.as_str(), old.model, old.points),
        ("hash-of-a", None, None)
    );
    let slots = TaskLimits {
        in_flight_per_key: Some(1),
        ..limits()
    };
    assert_eq!(
        store
            .reserve(reservation("r1", "hash-of-a"), slots)
            .await
            .unwrap(),
        Reserved::Refused {
            limit: Limit::InFlightPerKey,
            used: 1
        },
        "the old task counts"
    );
    drop(store);
    // And opening it again changes nothing.
    let store = runway_proxy::relay::SqliteOutbox::open(&path).unwrap();
    assert_eq!(store.list_tasks(None.into(), 0, 10).await.unwrap().len(), 1);
}
