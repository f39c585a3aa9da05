//! Idempotency records in the outbox's PostgreSQL database, shared by every replica: a
//! retry of a submission that reaches another replica still finds its key.

use bytes::Bytes;

use super::{PostgresOutbox, pool_error};
use crate::store::idempotency::{Begin, Claim, Finished, IdempotencyStore, StoredAnswer};
use crate::store::{Error, StoreFuture};

use crate::duration::millis;

impl PostgresOutbox {
    /// Run one statement of the idempotency records on the outbox's runtime.
    async fn idempotency_statement(
        &self,
        sql: &'static str,
        key: String,
        finished: Option<Finished>,
    ) -> Result<(), Error> {
        let pool = self.pool();
        self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let statement = client.prepare_cached(sql).await.map_err(super::db_error)?;
            let done = match finished {
                Some(Finished::Answer(answer)) => {
                    let status = i32::from(answer.status);
                    client
                        .execute(
                            &statement,
                            &[&key, &status, &answer.content_type, &answer.body.as_ref()],
                        )
                        .await
                }
                _ => client.execute(&statement, &[&key]).await,
            };
            done.map(drop).map_err(super::db_error)
        })
        .await
    }
}

impl IdempotencyStore for PostgresOutbox {
    fn begin(&self, claim: Claim) -> StoreFuture<'_, Begin> {
        let pool = self.pool();
        Box::pin(async move {
            self.call(async move {
                let client = pool.get().await.map_err(pool_error)?;
                let begin = client
                    .prepare_cached(
                        "SELECT o_outcome, o_status, o_content_type, o_body
                         FROM runway_proxy_idempotency_begin($1, $2, $3, $4)",
                    )
                    .await
                    .map_err(super::db_error)?;
                let row = client
                    .query_one(
                        &begin,
                        &[
                            &claim.key,
                            &claim.fingerprint,
                            &millis(claim.lease),
                            &millis(claim.ttl),
                        ],
                    )
                    .await
                    .map_err(super::db_error)?;
                let outcome: String = row.try_get(0).map_err(super::db_error)?;
                Ok(match outcome.as_str() {
                    "started" => Begin::Started,
                    "in_flight" => Begin::InFlight,
                    "mismatch" => Begin::Mismatch,
                    "replay" => {
                        let status: Option<i32> = row.try_get(1).map_err(super::db_error)?;
                        let body: Option<Vec<u8>> = row.try_get(3).map_err(super::db_error)?;
                        Begin::Replay(StoredAnswer {
                            status: status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
                            content_type: row.try_get(2).map_err(super::db_error)?,
                            body: Bytes::from(body.unwrap_or_default()),
                        })
                    }
                    _ => Begin::Unknown,
                })
            })
            .await
        })
    }

    fn finish(&self, key: String, finished: Finished) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            match finished {
                Finished::Answer(_) => {
                    self.idempotency_statement(
                        "UPDATE runway_proxy_idempotency
                         SET state = 'done', status = $2, content_type = $3, body = $4 WHERE key = $1",
                        key,
                        Some(finished),
                    )
                    .await
                }
                Finished::Unknown => {
                    self.idempotency_statement(
                        "UPDATE runway_proxy_idempotency SET state = 'unknown' WHERE key = $1",
                        key,
                        None,
                    )
                    .await
                }
            }
        })
    }

    fn release(&self, key: String) -> StoreFuture<'_, ()> {
        Box::pin(self.idempotency_statement("DELETE FROM runway_proxy_idempotency WHERE key = $1", key, None))
    }
}
