//! Subscribers on PostgreSQL: migration 8 (their records and the fair claim), and the
//! admin operations on them. Replicas claim through `runway_proxy_claim`, which locks
//! each subscriber's record while it counts that subscriber's claims in flight: the cap
//! holds across replicas.

use std::sync::LazyLock;
use std::time::Duration;

use super::{PostgresOutbox, db_error, pool_error};
use crate::store::subscribers::{drain_now, health_update, operator_pause, operator_resume};
use crate::store::{ReplayFilter, StoreFuture, SubscriberReport};

pub(super) const V8: &str = r#"
-- Each delivery's subscriber (16 hex digits of the SHA-256 of its URL, as the proxy
-- computes it), and when a replay queued it again (delivery.max_age counts from then).
ALTER TABLE runway_proxy_deliveries ADD COLUMN subscriber text, ADD COLUMN queued_at bigint;
UPDATE runway_proxy_deliveries
SET subscriber = encode(substring(sha256(convert_to(target_url, 'UTF8')) FROM 1 FOR 8), 'hex')
WHERE state IN ('pending', 'in_flight', 'dead', 'archiving');

-- One row per subscriber: its breaker, its place in the round-robin, its rate allowance
-- and its last two hours of attempts.
CREATE TABLE runway_proxy_subscribers (
    id              text    PRIMARY KEY,
    url             text    NOT NULL,
    state           text    NOT NULL DEFAULT 'active',
    reason          text,
    transition      text,
    paused_at       bigint,
    next_probe_at   bigint,
    probe_id        bigint,
    probe_until     bigint,
    failures        integer NOT NULL DEFAULT 0,
    gone            integer NOT NULL DEFAULT 0,
    served_at       bigint  NOT NULL DEFAULT 0,
    rate_tat        bigint  NOT NULL DEFAULT 0,
    last_success_at bigint,
    last_error      text,
    last_error_at   bigint,
    window_start    bigint  NOT NULL DEFAULT 0,
    window_attempts bigint  NOT NULL DEFAULT 0,
    window_failures bigint  NOT NULL DEFAULT 0,
    prev_attempts   bigint  NOT NULL DEFAULT 0,
    prev_failures   bigint  NOT NULL DEFAULT 0,
    created_at      bigint  NOT NULL
);
INSERT INTO runway_proxy_subscribers (id, url, created_at)
SELECT DISTINCT ON (subscriber) subscriber, target_url, runway_proxy_now_ms()
FROM runway_proxy_deliveries WHERE subscriber IS NOT NULL
ON CONFLICT (id) DO NOTHING;

CREATE INDEX runway_proxy_deliveries_subscriber_due ON runway_proxy_deliveries (subscriber, next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX runway_proxy_deliveries_subscriber_leased ON runway_proxy_deliveries (subscriber, lease_until)
    WHERE state = 'in_flight';
CREATE INDEX runway_proxy_deliveries_subscriber_dead ON runway_proxy_deliveries (subscriber, updated_at)
    WHERE state = 'dead';

-- Claim up to p_max deliveries, subscriber by subscriber, least recently served first:
-- each gets at most p_cap in flight (every replica's live claims counted, under the lock
-- of its record: two replicas never count the same subscriber at once), at most its rate
-- (p_interval ms apart, bursts of p_burst; 0: no rate), and a paused one only its probe.
-- Slots go round-robin: every subscriber's first, then every one's second.
CREATE FUNCTION runway_proxy_claim(p_owner text, p_max integer, p_lease bigint, p_cap bigint,
                                   p_interval bigint, p_burst bigint)
RETURNS TABLE (o_id bigint, o_probe boolean) LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := runway_proxy_now_ms();
    v_sub record;
    v_row record;
    v_room bigint;
    v_found integer;
    v_subs text[] := '{}';
    v_probes boolean[] := '{}';
    v_tats bigint[] := '{}';
    v_taken integer[] := '{}';
    v_first bigint[] := '{}';
    v_candidates bigint[];
    v_ids bigint[] := '{}';
    v_ranks integer[] := '{}';
    v_owners integer[] := '{}';
    v_tasks text[] := '{}';
    i integer;
BEGIN
    FOR v_sub IN
        SELECT s.id, s.state = 'paused' AS probe, s.rate_tat FROM runway_proxy_subscribers s
        WHERE s.state = 'active'
           OR (s.state = 'paused' AND s.reason = 'failures' AND s.next_probe_at <= v_now
               AND (s.probe_until IS NULL OR s.probe_until <= v_now))
        ORDER BY s.served_at, s.id
        FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN cardinality(v_subs) >= p_max;
        IF v_sub.probe THEN
            v_room := 1;
        ELSE
            SELECT p_cap - count(*) INTO v_room FROM runway_proxy_deliveries d
            WHERE d.subscriber = v_sub.id AND d.state = 'in_flight' AND d.lease_until > v_now;
            IF p_interval > 0 THEN
                v_room := LEAST(v_room, (v_now + p_burst * p_interval - GREATEST(v_sub.rate_tat, v_now)) / p_interval);
            END IF;
            v_room := LEAST(v_room, p_max);
        END IF;
        CONTINUE WHEN v_room <= 0;
        v_found := 0;
        -- Claims whose lease ran out first, then a probe (the first waiting delivery, due or
        -- not) or the due ones in order; one per task, and none while an older one of its
        -- task waits or another is in flight. (Arrays: FOR UPDATE does not go with UNION.)
        v_candidates :=
            ARRAY(SELECT d.id FROM runway_proxy_deliveries d
                  WHERE d.subscriber = v_sub.id AND d.state = 'in_flight' AND d.lease_until <= v_now
                  ORDER BY d.lease_until LIMIT v_room FOR UPDATE OF d SKIP LOCKED)
            || ARRAY(SELECT d.id FROM runway_proxy_deliveries d
                     WHERE v_sub.probe AND d.subscriber = v_sub.id AND d.state = 'pending'
                       AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key
                                       AND o.id <> d.id AND o.state = 'in_flight' AND o.lease_until > v_now)
                       AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key
                                       AND o.id < d.id AND o.state IN ('pending', 'in_flight'))
                     ORDER BY d.id LIMIT v_room FOR UPDATE OF d SKIP LOCKED)
            || ARRAY(SELECT d.id FROM runway_proxy_deliveries d
                     WHERE NOT v_sub.probe AND d.subscriber = v_sub.id AND d.state = 'pending'
                       AND d.next_attempt_at <= v_now
                       AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key
                                       AND o.id <> d.id AND o.state = 'in_flight' AND o.lease_until > v_now)
                       AND NOT EXISTS (SELECT 1 FROM runway_proxy_deliveries o WHERE o.task_key = d.task_key
                                       AND o.id < d.id AND o.state IN ('pending', 'in_flight'))
                     ORDER BY d.next_attempt_at, d.id LIMIT v_room FOR UPDATE OF d SKIP LOCKED);
        FOR v_row IN
            SELECT d.id, d.task_key FROM unnest(v_candidates) WITH ORDINALITY AS c(id, n)
            JOIN runway_proxy_deliveries d ON d.id = c.id ORDER BY c.n
        LOOP
            EXIT WHEN v_found >= v_room;
            CONTINUE WHEN v_row.task_key = ANY (v_tasks);
            v_found := v_found + 1;
            v_tasks := v_tasks || v_row.task_key;
            v_ids := v_ids || v_row.id;
            v_ranks := v_ranks || v_found;
            v_owners := v_owners || (cardinality(v_subs) + 1);
            IF v_found = 1 THEN
                v_first := v_first || v_row.id;
            END IF;
        END LOOP;
        IF v_found > 0 THEN
            v_subs := v_subs || v_sub.id;
            v_probes := v_probes || v_sub.probe;
            v_tats := v_tats || v_sub.rate_tat;
            v_taken := v_taken || 0;
        END IF;
    END LOOP;
    FOR v_row IN
        SELECT c.id, c.owner FROM unnest(v_ids, v_ranks, v_owners) AS c(id, rank, owner)
        ORDER BY c.rank, c.owner LIMIT p_max
    LOOP
        UPDATE runway_proxy_deliveries
        SET state = 'in_flight', lease_owner = p_owner, lease_until = v_now + p_lease, updated_at = v_now
        WHERE id = v_row.id;
        v_taken[v_row.owner] := v_taken[v_row.owner] + 1;
        o_id := v_row.id;
        o_probe := v_probes[v_row.owner];
        RETURN NEXT;
    END LOOP;
    FOR i IN 1 .. cardinality(v_subs) LOOP
        CONTINUE WHEN v_taken[i] = 0;
        UPDATE runway_proxy_subscribers
        SET served_at = v_now,
            rate_tat = CASE WHEN p_interval > 0 THEN GREATEST(v_tats[i], v_now) + v_taken[i] * p_interval
                            ELSE rate_tat END,
            probe_id = CASE WHEN v_probes[i] THEN v_first[i] ELSE probe_id END,
            probe_until = CASE WHEN v_probes[i] THEN v_now + p_lease ELSE probe_until END
        WHERE id = v_subs[i];
    END LOOP;
END $$;
"#;

/// The report's columns, in [`SubscriberReport::from_columns`]'s order.
const REPORT: &str = "SELECT s.id, s.url, s.state, s.reason, s.paused_at, s.next_probe_at, s.probe_until,
        s.failures, s.last_success_at, s.last_error, s.last_error_at, s.window_start, s.window_attempts,
        s.window_failures, s.prev_attempts, s.prev_failures,
        (SELECT COUNT(*) FROM runway_proxy_deliveries d WHERE d.subscriber = s.id AND d.state = 'pending'),
        (SELECT COUNT(*) FROM runway_proxy_deliveries d WHERE d.subscriber = s.id AND d.state = 'in_flight'),
        (SELECT COUNT(*) FROM runway_proxy_deliveries d WHERE d.subscriber = s.id AND d.state = 'dead'),
        runway_proxy_now_ms()
     FROM runway_proxy_subscribers s WHERE s.id > $1 ORDER BY s.id LIMIT $2";

/// The health update every completion makes (see `store::subscribers`).
pub(super) static HEALTH: LazyLock<String> = LazyLock::new(|| health_update("runway_proxy_subscribers"));
/// A resumed subscriber's waiting deliveries, due now.
pub(super) static DRAIN: LazyLock<String> = LazyLock::new(|| drain_now("runway_proxy_deliveries"));
static PAUSE: LazyLock<String> = LazyLock::new(|| operator_pause("runway_proxy_subscribers"));
static RESUME: LazyLock<String> = LazyLock::new(|| operator_resume("runway_proxy_subscribers"));

impl PostgresOutbox {
    /// The subscriber of delivery `id`, if there is such a delivery.
    pub(super) async fn subscriber_of(&self, id: i64) -> Result<Option<String>, crate::store::Error> {
        let pool = self.pool();
        self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT subscriber FROM runway_proxy_deliveries WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(db_error)?;
            Ok(row.and_then(|row| row.get::<_, Option<String>>(0)))
        })
        .await
    }

    pub(super) fn list_subscribers(
        &self,
        after: String,
        limit: usize,
    ) -> StoreFuture<'_, Vec<SubscriberReport>> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(REPORT, &[&after, &(limit as i64)])
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let now: i64 = row.try_get(19)?;
                    SubscriberReport::from_columns(row, now)
                })
                .collect::<Result<_, _>>()
                .map_err(db_error)
        }))
    }

    pub(super) fn set_paused(&self, id: String, paused: bool) -> StoreFuture<'_, bool> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            let now = crate::duration::unix_millis();
            let changed = if paused {
                tx.execute(PAUSE.as_str(), &[&id, &now]).await
            } else {
                tx.execute(RESUME.as_str(), &[&id]).await
            }
            .map_err(db_error)?;
            if changed > 0 && !paused {
                tx.execute(DRAIN.as_str(), &[&id, &now]).await.map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(changed > 0)
        }))
    }

    pub(super) fn replay_all_dead(&self, filter: ReplayFilter) -> StoreFuture<'_, u64> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "UPDATE runway_proxy_deliveries
                     SET state = 'pending', attempts = 0, next_attempt_at = runway_proxy_now_ms(),
                         last_error = NULL, updated_at = runway_proxy_now_ms(), queued_at = runway_proxy_now_ms()
                     WHERE state = 'dead' AND updated_at >= $1 AND ($2::text IS NULL OR subscriber = $2)",
                    &[&filter.since, &filter.subscriber],
                )
                .await
                .map_err(db_error)
        }))
    }

    pub(super) fn expire_old(&self, max_age: Duration) -> StoreFuture<'_, u64> {
        let pool = self.pool();
        Box::pin(self.call(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let error = format!(
                "waited longer than delivery.max_age ({}) to be delivered",
                crate::duration::format(max_age)
            );
            let age = max_age.as_millis() as i64;
            client
                .execute(
                    "UPDATE runway_proxy_deliveries
                     SET state = 'dead', last_error = $2, updated_at = runway_proxy_now_ms()
                     WHERE state = 'pending' AND COALESCE(queued_at, created_at) < runway_proxy_now_ms() - $1",
                    &[&age, &error],
                )
                .await
                .map_err(db_error)
        }))
    }
}
