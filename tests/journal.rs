//! Tasks' journals, held by every store (SQLite, and PostgreSQL with the `postgres`
//! feature): each callback, each check (alike checks folded into one entry), each failed
//! delivery attempt of the task's events (a delivered one is on its delivery), a
//! cancellation; progress kept on the task; the watch list filtered by key; and the
//! journal pruned with the ledger.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runway_proxy::relay::{Completion, Outbox};
use runway_proxy::store::{event_delivery, task_key};
use runway_proxy::tasks::{
    Checked, JournalKind, NewTask, TaskFilter, TaskFormat, TaskReport, TaskStore, WatchState,
};

trait Store: Outbox + TaskStore {}
impl<T: Outbox + TaskStore> Store for T {}

const SUBSCRIBER: &str = "https://hooks.example.com/runway?secret=s3";
const LEASE: Duration = Duration::from_secs(30);

fn task(id: &str, key: &str, key_hash: &str) -> NewTask {
    NewTask {
        task_id: id.to_owned(),
        format: TaskFormat::Official,
        route: "/runwayml/v1/image_to_video".to_owned(),
        key_hash: key_hash.to_owned(),
        key: key.to_owned(),
        model: Some("gen4_turbo".to_owned()),
        reservation: None,
        sealed_key: Some("sealed".to_owned()),
        subscriber: Some(SUBSCRIBER.to_owned()),
        outcome_unknown: false,
        trace: None,
        callback_token: None,
    }
}

fn check(status: Option<&str>, progress: Option<u8>, note: Option<&str>) -> Checked {
    Checked {
        status: status.map(str::to_owned),
        done: false,
        recovered: false,
        again_after: Duration::ZERO,
        points: None,
        refunded: None,
        progress,
        note: note.map(str::to_owned),
    }
}

/// Claim `id` for a check (it is due at once) and record `checked`.
async fn check_once(store: &dyn Store, id: &str, checked: Checked) {
    let claimed = store.claim_due("w".into(), 10, LEASE).await.unwrap();
    assert!(claimed.iter().any(|t| t.task_id == id), "{id} is due");
    store.checked(id.into(), "w".into(), checked).await.unwrap();
}

async fn journals_follow_a_task(store: Arc<dyn Store>) {
    store
        .record(task("j1", "team-a", "aaaa1111"), Duration::ZERO)
        .await
        .unwrap();
    store
        .record(task("j2", "team-b", "bbbb2222"), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        store.journal("j1".into()).await.unwrap().is_empty(),
        "the submission is the record itself"
    );

    let running = TaskReport {
        status: Some("RUNNING".into()),
        progress: Some(40),
        ..TaskReport::default()
    };
    store
        .callback_seen("j1".into(), running, Duration::ZERO)
        .await
        .unwrap();
    // Three polls find the same: one entry, three repeats. Then a failed one, then progress.
    for _ in 0..3 {
        check_once(store.as_ref(), "j1", check(Some("RUNNING"), Some(40), None)).await;
    }
    check_once(
        store.as_ref(),
        "j1",
        check(None, None, Some("failed: the upstream answered 502")),
    )
    .await;
    check_once(store.as_ref(), "j1", check(Some("RUNNING"), Some(75), None)).await;
    let task = store.task("j1".into()).await.unwrap().unwrap();
    assert_eq!(task.progress, Some(75), "the last progress reported");

    // Its final event, delivered on the second attempt.
    let body = Bytes::from_static(br#"{"id":"j1","status":"SUCCEEDED","output":["v.mp4"]}"#);
    let delivery = event_delivery(SUBSCRIBER, body);
    assert_eq!(delivery.task_key, task_key(SUBSCRIBER, "j1"));
    store.enqueue(delivery).await.unwrap();
    let claimed = store.claim("d".into(), 10, LEASE).await.unwrap();
    let id = claimed[0].id;
    let retry = Completion::RetryAt {
        at: 0,
        error: "HTTP 503".into(),
    };
    store.complete(id, "d".into(), retry).await.unwrap();
    let claimed = store.claim("d".into(), 10, LEASE).await.unwrap();
    assert_eq!(claimed[0].id, id, "due again at once");
    store
        .complete(id, "d".into(), Completion::Delivered)
        .await
        .unwrap();

    let journal = store.journal("j1".into()).await.unwrap();
    let seen: Vec<_> = journal
        .iter()
        .map(|e| {
            (
                e.kind,
                e.status.as_deref(),
                e.progress,
                e.detail.as_deref(),
                e.repeats,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (JournalKind::Callback, Some("RUNNING"), Some(40), None, 1),
            (JournalKind::Check, Some("RUNNING"), Some(40), None, 3),
            (
                JournalKind::Check,
                None,
                None,
                Some("failed: the upstream answered 502"),
                1
            ),
            (JournalKind::Check, Some("RUNNING"), Some(75), None, 1),
            (
                JournalKind::Delivery,
                Some("SUCCEEDED"),
                None,
                Some("failed, will retry: HTTP 503"),
                1
            ),
        ],
        "a delivered attempt is on its delivery, not in the journal"
    );
    let deliveries = store
        .deliveries_of_task(task_key(SUBSCRIBER, "j1"), 10)
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        (deliveries[0].attempts, deliveries[0].delivered_at.is_some()),
        (2, true)
    );
    assert!(
        store
            .deliveries_of_task(task_key(SUBSCRIBER, "j2"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(journal.windows(2).all(|w| w[0].at <= w[1].at), "oldest first");
    assert!(journal[1].last_at >= journal[1].at);

    // A cancellation is journaled too; a second one changes nothing.
    store.cancelled("j2".into()).await.unwrap().unwrap();
    assert!(store.cancelled("j2".into()).await.unwrap().is_none());
    let cancelled = store.journal("j2".into()).await.unwrap();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(
        (cancelled[0].kind, cancelled[0].status.as_deref()),
        (JournalKind::Cancelled, Some("CANCELLED"))
    );
    assert!(store.journal("nobody".into()).await.unwrap().is_empty());

    // The watch list by key: its label or its hash, with or without a state.
    let ids = |tasks: Vec<runway_proxy::tasks::WatchedTask>| -> Vec<String> {
        tasks.into_iter().map(|t| t.task_id).collect()
    };
    let by_label = store
        .list_tasks(TaskFilter::default().key("team-b"), 0, 10)
        .await
        .unwrap();
    assert_eq!(ids(by_label), ["j2"]);
    let by_hash = store
        .list_tasks(TaskFilter::default().key("aaaa1111"), 0, 10)
        .await
        .unwrap();
    assert_eq!(ids(by_hash), ["j1"]);
    let filter = TaskFilter::from(Some(WatchState::Watching)).key("team-b");
    assert!(
        store.list_tasks(filter, 0, 10).await.unwrap().is_empty(),
        "j2 is done"
    );
    assert_eq!(store.list_tasks(None.into(), 0, 10).await.unwrap().len(), 2);

    // Pruned with the ledger: what is older than the cut goes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cut = runway_proxy::duration::unix_millis();
    store.prune(cut).await.unwrap();
    assert!(store.journal("j1".into()).await.unwrap().is_empty());
    assert!(store.journal("j2".into()).await.unwrap().is_empty());
}

mod sqlite {
    use super::*;

    #[tokio::test]
    async fn journals_follow_a_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = runway_proxy::relay::SqliteOutbox::open(&dir.path().join("outbox.sqlite3")).unwrap();
        super::journals_follow_a_task(Arc::new(store)).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use runway_proxy::relay::{DatabaseSettings, PostgresOutbox};

    #[tokio::test]
    async fn journals_follow_a_task() {
        let url = common::services::fresh_database().await;
        let store = PostgresOutbox::connect(&DatabaseSettings::new(&url))
            .await
            .unwrap();
        super::journals_follow_a_task(Arc::new(store)).await;
    }
}
