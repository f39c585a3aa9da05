//! Idempotency records in the outbox's SQLite database: durable like the webhooks, written
//! by the same thread with the same group commit.

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::statements::ExecuteCached;
use super::{SqliteOutbox, now_ms};
use crate::store::StoreFuture;
use crate::store::idempotency::{Begin, Claim, Finished, IdempotencyStore, StoredAnswer};

/// Deletes up to 64 expired records; run at every lookup, the table stays small without
/// a sweeper. The count is a literal: a bound `LIMIT ?` makes SQLite plan the statement
/// again at every call.
pub(super) const PURGE_EXPIRED: &str =
    "DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency WHERE expires_at <= ?1 LIMIT 64)";

pub(super) fn begin(tx: &Connection, claim: &Claim) -> rusqlite::Result<Begin> {
    let (key, fingerprint) = (&claim.key, &claim.fingerprint);
    let (lease, ttl) = (claim.lease, claim.ttl);
    let now = now_ms();
    tx.execute_cached(PURGE_EXPIRED, params![now])?;
    type Row = (
        String,
        String,
        Option<u16>,
        Option<String>,
        Option<Vec<u8>>,
        i64,
        i64,
    );
    let found: Option<Row> = tx
        .prepare_cached(
            "SELECT fingerprint, state, status, content_type, body, lease_until, expires_at FROM idempotency WHERE key = ?1",
        )?
        .query_row(params![key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .optional()?;
    match found {
        Some((stored, state, status, content_type, body, lease_until, expires_at)) if expires_at > now => {
            if stored != *fingerprint {
                return Ok(Begin::Mismatch);
            }
            Ok(match state.as_str() {
                "in_flight" if lease_until > now => Begin::InFlight,
                "done" => Begin::Replay(StoredAnswer {
                    status: status.unwrap_or(200),
                    content_type,
                    body: Bytes::from(body.unwrap_or_default()),
                }),
                // Unknown, or in flight past its lease (the process died mid-request).
                _ => {
                    tx.execute_cached(
                        "UPDATE idempotency SET state = 'unknown' WHERE key = ?1",
                        params![key],
                    )?;
                    Begin::Unknown
                }
            })
        }
        _ => {
            tx.execute_cached(
                "INSERT OR REPLACE INTO idempotency (key, fingerprint, state, lease_until, expires_at)
                 VALUES (?1, ?2, 'in_flight', ?3, ?4)",
                params![
                    key,
                    fingerprint,
                    now + lease.as_millis() as i64,
                    now + ttl.as_millis() as i64
                ],
            )?;
            Ok(Begin::Started)
        }
    }
}

impl IdempotencyStore for SqliteOutbox {
    fn begin(&self, claim: Claim) -> StoreFuture<'_, Begin> {
        Box::pin(async move { self.run(move |tx| begin(tx, &claim)).await })
    }

    fn finish(&self, key: String, finished: Finished) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.run(move |tx| {
                match finished {
                    Finished::Answer(answer) => tx.execute_cached(
                        "UPDATE idempotency SET state = 'done', status = ?2, content_type = ?3, body = ?4 WHERE key = ?1",
                        params![key, answer.status, answer.content_type, answer.body.as_ref()],
                    )?,
                    Finished::Unknown => {
                        tx.execute_cached("UPDATE idempotency SET state = 'unknown' WHERE key = ?1", params![key])?
                    }
                };
                Ok(())
            })
            .await
        })
    }

    fn release(&self, key: String) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.run(move |tx| {
                tx.execute_cached("DELETE FROM idempotency WHERE key = ?1", params![key])
                    .map(drop)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite3");
        let (lease, ttl) = (Duration::from_secs(60), Duration::from_secs(3600));
        {
            let store = SqliteOutbox::open(&path).unwrap();
            assert_eq!(
                store.begin(Claim::new("k", "f", lease, ttl)).await,
                Ok(Begin::Started)
            );
            assert_eq!(
                store.begin(Claim::new("k", "f", lease, ttl)).await,
                Ok(Begin::InFlight)
            );
            assert_eq!(
                store.begin(Claim::new("k", "g", lease, ttl)).await,
                Ok(Begin::Mismatch)
            );
            let answer = StoredAnswer {
                status: 200,
                content_type: Some("application/json".into()),
                body: Bytes::from_static(br#"{"code":200}"#),
            };
            store.finish("k".into(), Finished::Answer(answer)).await.unwrap();
            store.begin(Claim::new("u", "f", lease, ttl)).await.unwrap();
            store.finish("u".into(), Finished::Unknown).await.unwrap();
            store.begin(Claim::new("r", "f", lease, ttl)).await.unwrap();
            store.release("r".into()).await.unwrap();
        }
        let store = SqliteOutbox::open(&path).unwrap();
        let Ok(Begin::Replay(answer)) = store.begin(Claim::new("k", "f", lease, ttl)).await else {
            panic!("the answer is kept across a restart");
        };
        assert_eq!(answer.body, r#"{"code":200}"#);
        assert_eq!(
            store.begin(Claim::new("u", "f", lease, ttl)).await,
            Ok(Begin::Unknown)
        );
        assert_eq!(
            store.begin(Claim::new("r", "f", lease, ttl)).await,
            Ok(Begin::Started),
            "released"
        );
        let expired = store.begin(Claim::new("x", "f", lease, Duration::ZERO)).await;
        assert_eq!(expired, Ok(Begin::Started));
        assert_eq!(
            store.begin(Claim::new("x", "f", lease, ttl)).await,
            Ok(Begin::Started),
            "an expired key is new again"
        );
    }
}
