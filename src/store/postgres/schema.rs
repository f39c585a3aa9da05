//! The PostgreSQL schema, as numbered migrations applied at start.
//!
//! Every replica runs [`migrate`] when it connects. The migrations run in one transaction
//! that first takes an advisory lock, so replicas starting together apply each one once,
//! and a replica never sees a half-made schema. A database migrated by a newer
//! runway-proxy than this one is refused rather than written with old assumptions.

use deadpool_postgres::Object;

use super::db_error;
use crate::store::Error;

/// The advisory lock the migrations hold ("runway" and 1).
const MIGRATION_LOCK: i64 = 0x7275_6e77_6179_0001;

/// Each migration, in order; its number is its position (from 1). Never edit one that has
/// shipped: add the next.
const MIGRATIONS: &[&str] = &[
    V1,
    V2,
    V3,
    V4,
    V5,
    V6,
    V7,
    super::subscribers::V8,
    super::journal::V9,
];

/// The newest schema version this build knows.
pub(super) const LATEST: i32 = MIGRATIONS.len() as i32;

const V1: &str = r#"
-- The database's clock decides leases and due times, so replicas whose clocks disagree
-- still agree on whose claim has expired.
CREATE FUNCTION runway_proxy_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE runway_proxy_deliveries (
    id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      text    NOT NULL,
    dedup_key       text    NOT NULL UNIQUE,
    task_key        text    NOT NULL,
    status          text,
    terminal        boolean NOT NULL,
    target_url      text    NOT NULL,
    body            bytea   NOT NULL,
    state           text    NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at bigint  NOT NULL,
    lease_owner     text,
    lease_until     bigint,
    last_error      text,
    created_at      bigint  NOT NULL,
    updated_at      bigint  NOT NULL,
    delivered_at    bigint
) WITH (
    -- A queue: every webhook leaves two dead row versions behind (claimed, then done),
    -- and claims walk the dead ones until vacuum clears them. Vacuum it by the count of
    -- dead rows rather than a share of a table that only grows, and unthrottled (a
    -- table with its own cost settings is also kept out of the shared cost balance).
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);
-- Partial indexes hold only the rows that still need work, so claims cost the batch
-- however many webhooks have ever been delivered.
CREATE INDEX runway_proxy_deliveries_due ON runway_proxy_deliveries (next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX runway_proxy_deliveries_leased ON runway_proxy_deliveries (lease_until)
    WHERE state = 'in_flight';
CREATE INDEX runway_proxy_deliveries_open ON runway_proxy_deliveries (task_key, id)
    WHERE state IN ('pending', 'in_flight');
CREATE INDEX runway_proxy_deliveries_terminal ON runway_proxy_deliveries (task_key)
    WHERE terminal AND state <> 'superseded';
CREATE INDEX runway_proxy_deliveries_state ON runway_proxy_deliveries (state, id);

-- Store one webhook: the same rules as the SQLite outbox, in one round trip.
CREATE FUNCTION runway_proxy_enqueue(
    p_lock bigint, p_webhook_id text, p_dedup_key text, p_task_key text, p_status text,
    p_terminal boolean, p_target_url text, p_body bytea,
    OUT o_id bigint, OUT o_outcome text
) LANGUAGE plpgsql
AS $$
DECLARE
    v_now bigint := runway_proxy_now_ms();
    v_terminal_seen boolean := false;
BEGIN
    -- One task's webhooks are stored one at a time (whichever replica took them), so its
    -- ids follow the order they were stored in and the terminal check can't race.
    PERFORM pg_advisory_xact_lock(p_lock);
    SELECT d.id INTO o_id FROM runway_proxy_deliveries d WHERE d.dedup_key = p_dedup_key;
    IF FOUND THEN
        o_outcome := 'duplicate';
        RETURN;
    END IF;
    -- Nothing after a terminal status: not an older status, not a second terminal one
    -- (a late callback after the result was recovered from the feed).
    v_terminal_seen := EXISTS (
        SELECT 1 FROM runway_proxy_deliveries d
        WHERE d.task_key = p_task_key AND d.terminal AND d.state <> 'superseded');
    INSERT INTO runway_proxy_deliveries (webhook_id, dedup_key, task_key, status, terminal, target_url,
                                         body, state, next_attempt_at, created_at, updated_at)
    VALUES (p_webhook_id, p_dedup_key, p_task_key, p_status, p_terminal, p_target_url, p_body,
            CASE WHEN v_terminal_seen THEN 'superseded' ELSE 'pending' END, v_now, v_now, v_now)
    RETURNING id INTO o_id;
    IF v_terminal_seen THEN
        o_outcome := 'superseded';
        RETURN;
    END IF;
    IF p_terminal THEN
        -- Older statuses still waiting would arrive after the terminal one: drop them.
        UPDATE runway_proxy_deliveries d SET state = 'superseded', updated_at = v_now
        WHERE d.task_key = p_task_key AND d.id < o_id AND NOT d.terminal AND d.state = 'pending';
    END IF;
    o_outcome := 'stored';
END $$;

CREATE TABLE runway_proxy_idempotency (
    key          text    PRIMARY KEY,
    fingerprint  text    NOT NULL,
    state        text    NOT NULL,
    status       integer,
    content_type text,
    body         bytea,
    lease_until  bigint  NOT NULL,
    expires_at   bigint  NOT NULL
);
CREATE INDEX runway_proxy_idempotency_expiry ON runway_proxy_idempotency (expires_at);

-- Look a submission's key up, recording it as in flight when it is new: one round trip,
-- and the row lock makes two replicas' lookups of one key take turns.
CREATE FUNCTION runway_proxy_idempotency_begin(
    p_key text, p_fingerprint text, p_lease_ms bigint, p_ttl_ms bigint,
    OUT o_outcome text, OUT o_status integer, OUT o_content_type text, OUT o_body bytea
) LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := runway_proxy_now_ms();
    r runway_proxy_idempotency%ROWTYPE;
BEGIN
    -- A few expired records go with each lookup: the table stays small without a sweeper.
    DELETE FROM runway_proxy_idempotency WHERE key IN (
        SELECT i.key FROM runway_proxy_idempotency i
        WHERE i.expires_at <= v_now AND i.key <> p_key
        LIMIT 64 FOR UPDATE SKIP LOCKED);
    LOOP
        INSERT INTO runway_proxy_idempotency (key, fingerprint, state, lease_until, expires_at)
        VALUES (p_key, p_fingerprint, 'in_flight', v_now + p_lease_ms, v_now + p_ttl_ms)
        ON CONFLICT (key) DO NOTHING;
        IF FOUND THEN
            o_outcome := 'started';
            RETURN;
        END IF;
        SELECT * INTO r FROM runway_proxy_idempotency i WHERE i.key = p_key FOR UPDATE;
        -- Gone between the two (another lookup purged it as expired): insert again.
        EXIT WHEN FOUND;
    END LOOP;
    IF r.expires_at <= v_now THEN
        UPDATE runway_proxy_idempotency i
        SET fingerprint = p_fingerprint, state = 'in_flight', status = NULL, content_type = NULL,
            body = NULL, lease_until = v_now + p_lease_ms, expires_at = v_now + p_ttl_ms
        WHERE i.key = p_key;
        o_outcome := 'started';
    ELSIF r.fingerprint <> p_fingerprint THEN
        o_outcome := 'mismatch';
    ELSIF r.state = 'in_flight' AND r.lease_until > v_now THEN
        o_outcome := 'in_flight';
    ELSIF r.state = 'done' THEN
        o_outcome := 'replay';
        o_status := r.status;
        o_content_type := r.content_type;
        o_body := r.body;
    ELSE
        -- Unknown, or in flight past its lease (its replica died mid-request).
        UPDATE runway_proxy_idempotency i SET state = 'unknown' WHERE i.key = p_key;
        o_outcome := 'unknown';
    END IF;
END $$;
"#;

const V2: &str = r#"
-- The watch list: every accepted task until its final result is relayed.
CREATE TABLE runway_proxy_tasks (
    id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id          text    NOT NULL UNIQUE,
    format           text    NOT NULL,
    route            text    NOT NULL,
    key_hash         text    NOT NULL,
    sealed_key       text,
    subscriber       text,
    state            text    NOT NULL,
    status           text,
    submitted_at     bigint  NOT NULL,
    last_callback_at bigint,
    next_check_at    bigint  NOT NULL,
    checks           integer NOT NULL DEFAULT 0,
    recovered        boolean NOT NULL DEFAULT false,
    lease_owner      text,
    lease_until      bigint,
    updated_at       bigint  NOT NULL
);
CREATE INDEX runway_proxy_tasks_due ON runway_proxy_tasks (next_check_at) WHERE state = 'watching';
CREATE INDEX runway_proxy_tasks_state ON runway_proxy_tasks (state, id);
"#;

const V3: &str = r#"
-- The ledger: what each task cost, by key label (or hash) and model.
ALTER TABLE runway_proxy_tasks
    ADD COLUMN key_label   text NOT NULL DEFAULT '',
    ADD COLUMN model       text,
    ADD COLUMN points      bigint,
    ADD COLUMN refunded    bigint,
    ADD COLUMN finished_at bigint;
UPDATE runway_proxy_tasks SET key_label = key_hash WHERE key_label = '';
-- The budgets read a window of one key's (or every key's) tasks: covering indexes, so a
-- reservation reads index entries, not rows. The tasks in flight are few: a partial one.
CREATE INDEX runway_proxy_tasks_spend ON runway_proxy_tasks (key_label, submitted_at) INCLUDE (points, refunded);
CREATE INDEX runway_proxy_tasks_spend_all ON runway_proxy_tasks (submitted_at) INCLUDE (points, refunded);
CREATE INDEX runway_proxy_tasks_unfinished ON runway_proxy_tasks (key_label, state, submitted_at)
    WHERE state IN ('pending', 'watching', 'unknown');

-- The task guard's reservation: check every limit and record the submission as
-- 'pending', or say which limit refused it and how much of it is used. One at a time
-- across every replica (a transaction-scoped advisory lock), so two replicas can't both
-- take the last slot.
CREATE FUNCTION runway_proxy_reserve_task(
    p_task_id text, p_format text, p_route text, p_key_hash text, p_key text, p_model text,
    p_window_ms bigint, p_unknown_ms bigint,
    p_tasks_per_key bigint, p_points_per_key bigint, p_tasks bigint, p_points bigint,
    p_in_flight_per_key bigint, p_in_flight bigint,
    OUT refused text, OUT used bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(8247619751614414850);
    now_ms := runway_proxy_now_ms();
    IF p_tasks_per_key IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks
        WHERE key_label = p_key AND submitted_at > now_ms - p_window_ms;
        IF used >= p_tasks_per_key THEN refused := 'daily_task_budget_per_key'; RETURN; END IF;
    END IF;
    IF p_points_per_key IS NOT NULL THEN
        SELECT COALESCE(sum(COALESCE(points, 0) - COALESCE(refunded, 0)), 0) INTO used FROM runway_proxy_tasks
        WHERE key_label = p_key AND submitted_at > now_ms - p_window_ms;
        IF used >= p_points_per_key THEN refused := 'daily_point_budget_per_key'; RETURN; END IF;
    END IF;
    IF p_tasks IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks WHERE submitted_at > now_ms - p_window_ms;
        IF used >= p_tasks THEN refused := 'daily_task_budget'; RETURN; END IF;
    END IF;
    IF p_points IS NOT NULL THEN
        SELECT COALESCE(sum(COALESCE(points, 0) - COALESCE(refunded, 0)), 0) INTO used FROM runway_proxy_tasks
        WHERE submitted_at > now_ms - p_window_ms;
        IF used >= p_points THEN refused := 'daily_point_budget'; RETURN; END IF;
    END IF;
    IF p_in_flight_per_key IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks
        WHERE key_label = p_key AND state IN ('pending', 'watching', 'unknown')
          AND (state = 'watching' OR submitted_at > now_ms - p_unknown_ms);
        IF used >= p_in_flight_per_key THEN refused := 'max_tasks_in_flight_per_key'; RETURN; END IF;
    END IF;
    IF p_in_flight IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks
        WHERE state IN ('pending', 'watching', 'unknown')
          AND (state = 'watching' OR submitted_at > now_ms - p_unknown_ms);
        IF used >= p_in_flight THEN refused := 'max_tasks_in_flight'; RETURN; END IF;
    END IF;
    INSERT INTO runway_proxy_tasks (task_id, format, route, key_hash, key_label, model, state, submitted_at,
                                    next_check_at, updated_at)
    VALUES (p_task_id, p_format, p_route, p_key_hash, p_key, p_model, 'pending', now_ms, now_ms, now_ms);
    refused := NULL;
    used := 0;
END $$;
"#;

const V4: &str = r#"
-- Trace context (traceparent) of a task's submission, and of the submission a delivery
-- belongs to: the callback's receipt and every delivery attempt link to it.
ALTER TABLE runway_proxy_tasks ADD COLUMN trace text;
ALTER TABLE runway_proxy_deliveries ADD COLUMN trace text;
"#;

const V5: &str = r#"
-- Archive jobs: a succeeded task's outputs to copy, beside the delivery they hold back
-- (state 'archiving', which no delivery claim reads).
CREATE TABLE runway_proxy_archive_jobs (
    id              bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     bigint  NOT NULL UNIQUE,
    task_key        text    NOT NULL,
    nonce           text    NOT NULL,
    body            bytea   NOT NULL,
    state           text    NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    deadline_at     bigint  NOT NULL,
    next_attempt_at bigint  NOT NULL,
    lease_owner     text,
    lease_until     bigint,
    last_error      text,
    result          text,
    created_at      bigint  NOT NULL,
    updated_at      bigint  NOT NULL,
    trace           text
);
CREATE INDEX runway_proxy_archive_jobs_due ON runway_proxy_archive_jobs (next_attempt_at) WHERE state = 'open';
CREATE INDEX runway_proxy_archive_jobs_task ON runway_proxy_archive_jobs (task_key, id);
CREATE INDEX runway_proxy_deliveries_archiving ON runway_proxy_deliveries (id) WHERE state = 'archiving';
"#;

const V6: &str = r#"
-- Which task each callback route token belongs to: the first task id recorded for it (at
-- submission, or by the token's first webhook). A webhook naming another is refused.
CREATE TABLE runway_proxy_token_bindings (
    token    bigint PRIMARY KEY,
    task_id  text   NOT NULL,
    bound_at bigint NOT NULL
);
"#;

const V7: &str = r#"
-- The reservation counts a submission's estimated points against the point budgets (it
-- must fit whole) and records them until CometAPI reports the real figure.
DROP FUNCTION runway_proxy_reserve_task(text, text, text, text, text, text, bigint, bigint,
                                        bigint, bigint, bigint, bigint, bigint, bigint);
CREATE FUNCTION runway_proxy_reserve_task(
    p_task_id text, p_format text, p_route text, p_key_hash text, p_key text, p_model text,
    p_window_ms bigint, p_unknown_ms bigint,
    p_tasks_per_key bigint, p_points_per_key bigint, p_tasks bigint, p_points bigint,
    p_in_flight_per_key bigint, p_in_flight bigint, p_points_estimate bigint,
    OUT refused text, OUT used bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(8247619751614414850);
    now_ms := runway_proxy_now_ms();
    IF p_tasks_per_key IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks
        WHERE key_label = p_key AND submitted_at > now_ms - p_window_ms;
        IF used >= p_tasks_per_key THEN refused := 'daily_task_budget_per_key'; RETURN; END IF;
    END IF;
    IF p_points_per_key IS NOT NULL THEN
        SELECT COALESCE(sum(COALESCE(points, 0) - COALESCE(refunded, 0)), 0) INTO used FROM runway_proxy_tasks
        WHERE key_label = p_key AND submitted_at > now_ms - p_window_ms;
        IF used >= p_points_per_key OR used + COALESCE(p_points_estimate, 0) > p_points_per_key THEN
            refused := 'daily_point_budget_per_key'; RETURN;
        END IF;
    END IF;
    IF p_tasks IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks WHERE submitted_at > now_ms - p_window_ms;
        IF used >= p_tasks THEN refused := 'daily_task_budget'; RETURN; END IF;
    END IF;
    IF p_points IS NOT NULL THEN
        SELECT COALESCE(sum(COALESCE(points, 0) - COALESCE(refunded, 0)), 0) INTO used FROM runway_proxy_tasks
        WHERE submitted_at > now_ms - p_window_ms;
        IF used >= p_points OR used + COALESCE(p_points_estimate, 0) > p_points THEN
            refused := 'daily_point_budget'; RETURN;
        END IF;
    END IF;
    IF p_in_flight_per_key IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks
        WHERE key_label = p_key AND state IN ('pending', 'watching', 'unknown')
          AND (state = 'watching' OR submitted_at > now_ms - p_unknown_ms);
        IF used >= p_in_flight_per_key THEN refused := 'max_tasks_in_flight_per_key'; RETURN; END IF;
    END IF;
    IF p_in_flight IS NOT NULL THEN
        SELECT count(*) INTO used FROM runway_proxy_tasks
        WHERE state IN ('pending', 'watching', 'unknown')
          AND (state = 'watching' OR submitted_at > now_ms - p_unknown_ms);
        IF used >= p_in_flight THEN refused := 'max_tasks_in_flight'; RETURN; END IF;
    END IF;
    INSERT INTO runway_proxy_tasks (task_id, format, route, key_hash, key_label, model, state, submitted_at,
                                    next_check_at, updated_at, points)
    VALUES (p_task_id, p_format, p_route, p_key_hash, p_key, p_model, 'pending', now_ms, now_ms, now_ms,
            p_points_estimate);
    refused := NULL;
    used := 0;
END $$;
"#;

/// Bring the database's schema up to [`LATEST`].
pub(super) async fn migrate(client: &mut Object) -> Result<i32, Error> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS runway_proxy_schema (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db_error)?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM runway_proxy_schema", &[])
        .await
        .map_err(db_error)?
        .get(0);
    if current > LATEST {
        return Err(Error::corrupt(format!(
            "the database's schema is version {current}, newer than this runway-proxy knows \
             ({LATEST}): run the newer runway-proxy, or a database of this version's own"
        )));
    }
    for (version, sql) in (1..).zip(MIGRATIONS).skip(current as usize) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| db_error(e).context(format_args!("migration {version} failed")))?;
        tx.execute(
            "INSERT INTO runway_proxy_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(db_error)?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    tx.commit().await.map_err(db_error)?;
    Ok(LATEST)
}
