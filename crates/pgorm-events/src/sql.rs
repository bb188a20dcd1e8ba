//! The SQL of pgorm-events: identifier and literal quoting, the shipped
//! migrations, and every statement, built once per schema.

/// Quotes an identifier the way PostgreSQL's `quote_ident` does (always).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal (standard-conforming strings).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The shipped migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
/// `{s}` is the quoted schema, `{channel}` the wake-up channel as a literal,
/// `{wake_lock_class}` the debounce lock's class and `{wake_flag}` the
/// transaction-local setting that marks a decided wake-up (see [`fill`]).
/// Never edit a shipped migration; add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the queue, dead and completed events, wake-ups.
    r#"
CREATE TABLE {s}.events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    priority smallint NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
    idempotency_key text,
    lease_token bigint,
    lease_expires_at timestamptz,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
) WITH (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX events_due ON {s}.events (priority, run_at, id) WHERE lease_token IS NULL;
CREATE INDEX events_next_run ON {s}.events (run_at) WHERE lease_token IS NULL;
CREATE INDEX events_leased ON {s}.events (lease_expires_at) WHERE lease_token IS NOT NULL;
CREATE UNIQUE INDEX events_idempotency_key ON {s}.events (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE SEQUENCE {s}.lease_tokens;
CREATE TABLE {s}.dead_events (
    id bigint PRIMARY KEY,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    priority smallint NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    idempotency_key text,
    last_error text NOT NULL,
    created_at timestamptz NOT NULL,
    died_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_events_died_at ON {s}.dead_events (died_at, id);
CREATE TABLE {s}.completed_events (
    id bigint PRIMARY KEY,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    attempts integer NOT NULL,
    created_at timestamptz NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX completed_events_completed_at ON {s}.completed_events (completed_at);
CREATE FUNCTION {s}.wake() RETURNS trigger LANGUAGE plpgsql AS $pgorm$
BEGIN
    -- One constant notification per statement; PostgreSQL folds identical
    -- notifications of a transaction into one.
    PERFORM pg_notify({channel}, '');
    RETURN NULL;
END
$pgorm$;
CREATE TRIGGER wake AFTER INSERT ON {s}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.wake();
"#,
    // 2: debounced wake-ups at commit. NOTIFY holds a cluster-wide lock
    // from pre-commit to the end of commit, which serialises notifying
    // commits. The trigger now fires at commit (deferred) and only the
    // transaction that gets the schema's advisory lock notifies; one that
    // does not is committing alongside a notifier, and the workers' follow-up
    // claim after each wake-up (or their poll) picks its events up.
    r#"
DROP TRIGGER wake ON {s}.events;
CREATE OR REPLACE FUNCTION {s}.wake() RETURNS trigger LANGUAGE plpgsql AS $pgorm$
BEGIN
    -- Once per transaction: the trigger fires for every row inserted, and a
    -- transaction's first try decides for all of them (its NOTIFY, if any,
    -- covers every event it commits).
    IF current_setting({wake_flag}, true) = '1' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config({wake_flag}, '1', true);
    -- The lock is per 10 ms window: a transaction that fires this early
    -- (SET CONSTRAINTS ALL IMMEDIATE) or is slow to commit keeps only its
    -- own window's lock, so it silences other publishers for 10 ms at most.
    IF pg_try_advisory_xact_lock({wake_lock_class}, hashtext({channel} || ':'
        || floor(extract(epoch FROM clock_timestamp()) * 100)::bigint::text)) THEN
        PERFORM pg_notify({channel}, '');
    END IF;
    RETURN NULL;
END
$pgorm$;
CREATE CONSTRAINT TRIGGER wake AFTER INSERT ON {s}.events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION {s}.wake();
"#,
    // 3: the relay lane (pgorm_events::relay, feature `nats`). Events whose
    // type matches a stored relay rule are marked `relay` by the publish
    // statements and left to the relay. Existing rows keep relay false.
    r#"
ALTER TABLE {s}.events ADD COLUMN relay boolean NOT NULL DEFAULT false;
CREATE TABLE {s}.relay_rules (
    pattern text PRIMARY KEY,
    regex text NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
-- For producers that insert without pgorm (the publish statements inline
-- the same test, which costs next to nothing; a row trigger doubled the
-- time of a 100,000-row insert).
CREATE FUNCTION {s}.relay_lane(event_type text) RETURNS boolean
    LANGUAGE sql STABLE AS $pgorm$
    SELECT EXISTS (SELECT 1 FROM {s}.relay_rules r WHERE event_type ~ r.regex)
$pgorm$;
DROP INDEX {s}.events_due;
CREATE INDEX events_due ON {s}.events (priority, run_at, id)
    WHERE lease_token IS NULL AND NOT relay;
DROP INDEX {s}.events_next_run;
CREATE INDEX events_next_run ON {s}.events (run_at) WHERE lease_token IS NULL AND NOT relay;
CREATE INDEX events_relay ON {s}.events (id) WHERE relay;
-- Relay-lane events wake no worker (and take no notify lock at commit).
DROP TRIGGER wake ON {s}.events;
CREATE CONSTRAINT TRIGGER wake AFTER INSERT ON {s}.events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NOT NEW.relay) EXECUTE FUNCTION {s}.wake();
"#,
    // 4: statements that name events by id must find them by id, and a
    // claim from a pool's cursor must walk the due index from the cursor
    // on. Once ANALYZE has seen a table that is mostly dead tuples (a
    // snapshot held elsewhere keeps them), the planner rates the partial
    // time indexes as tiny and takes them instead: completing a batch then
    // scanned the whole lease index (386 ms, 178,000 buffers) and a claim
    // from the cursor the whole run-time index from its oldest entry (370
    // ms), both walking dead entries. The time indexes now carry a
    // condition that always holds (the CHECK of version 1) and that only
    // the statements meant to use them state: the sweep, its rescue, and
    // the next-due lookups.
    r#"
DROP INDEX {s}.events_next_run;
CREATE INDEX events_next_run ON {s}.events (run_at)
    WHERE lease_token IS NULL AND NOT relay AND max_attempts > 0;
DROP INDEX {s}.events_leased;
CREATE INDEX events_leased ON {s}.events (lease_expires_at)
    WHERE lease_token IS NOT NULL AND max_attempts > 0;
"#,
];

/// The first key of the two-key advisory lock that debounces wake-ups (the
/// second is the channel's hash), apart from single-key locks users take.
const WAKE_LOCK_CLASS: i32 = 0x7067_6576; // "pgev"

/// The message of the error the migration block raises for a schema
/// migrated by a newer release.
pub(crate) const SCHEMA_TOO_NEW: &str = "pgorm-events schema is newer than this release";

/// The message of the serialization failure a `migrate` raises when it
/// waited for another one under REPEATABLE READ or SERIALIZABLE: its
/// snapshot predates the other's commit, so it must start again.
pub(crate) const MIGRATED_CONCURRENTLY: &str =
    "pgorm-events schema was being migrated concurrently; retry the transaction";

/// The newest schema version this release ships.
pub(crate) const LATEST_VERSION: i32 = MIGRATIONS.len() as i32;

/// Every statement, with the schema filled in.
#[derive(Debug)]
pub(crate) struct Statements {
    pub schema: String,
    pub channel_literal: String,
    pub create_schema: String,
    pub create_version_table: String,
    pub current_version: String,
    pub publish: String,
    pub publish_keyless: String,
    pub existing_key: String,
    pub publish_batch: String,
    pub publish_batch_keyless: String,
    pub claim: String,
    pub claim_from: String,
    /// `[sweep, from cursor]` claims that also complete leases, deleting.
    pub claim_completing: [String; 2],
    /// The same, keeping completed events.
    pub claim_completing_keep: [String; 2],
    pub next_due: String,
    pub next_due_from: String,
    pub complete_delete: String,
    pub complete_keep: String,
    pub complete_delete_in: String,
    pub complete_keep_in: String,
    pub retry: String,
    pub bury: String,
    pub renew: String,
    pub release: String,
    pub wake: String,
    pub stats_queue: String,
    pub stats_dead: String,
    pub list_dead: String,
    pub requeue_dead: String,
    pub purge_dead: String,
    pub prune_completed: String,
}

/// The events of the leases `$1` (ids) and `$2` (tokens), as `e`: each
/// found by its id through the primary key, whatever the planner believes
/// of the table's size (a join with the pairs, planned against statistics
/// of a mostly-dead table, became a full scan of the primary key). The
/// pairs need no join: a token is issued for one claim of one event, so
/// an event whose id is listed and whose token is listed holds a listed
/// pair.
const BY_LEASE: &str = "e.id = ANY($1::int8[]) AND e.lease_token = ANY($2::int8[])";

const EVENT_COLUMNS: &str = "e.id, e.event_type, e.payload::text, e.priority, e.attempts, \
     e.max_attempts, e.run_at, e.created_at, e.idempotency_key, e.lease_token";

impl Statements {
    pub(crate) fn new(schema: &str, channel: &str) -> Statements {
        let s = quote_ident(schema);
        let sequence = quote_literal(&format!("{s}.{}", quote_ident("lease_tokens")));
        let channel_literal = quote_literal(channel);
        // Whether an event of this type goes to the relay lane (migration 3).
        let relay_lane = |event_type: &str| {
            format!("EXISTS (SELECT 1 FROM {s}.relay_rules r WHERE {event_type} ~ r.regex)")
        };
        let (relay_lane_1, relay_lane_t) = (relay_lane("$1::text"), relay_lane("u.t"));
        Statements {
            schema: s.clone(),
            channel_literal: channel_literal.clone(),
            create_schema: format!("CREATE SCHEMA IF NOT EXISTS {s}"),
            create_version_table: format!(
                "CREATE TABLE IF NOT EXISTS {s}.schema_version (\
                 version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())"
            ),
            current_version: format!(
                "SELECT COALESCE(max(version), 0) FROM {s}.schema_version"
            ),
            publish: format!(
                "INSERT INTO {s}.events \
                 (event_type, payload, priority, run_at, max_attempts, idempotency_key, relay) \
                 VALUES ($1, $2::text::jsonb, $3, \
                 COALESCE($4::timestamptz, clock_timestamp() + make_interval(secs => COALESCE($5::float8, 0))), \
                 $6, $7, {relay_lane_1}) \
                 ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
                 RETURNING id"
            ),
            // An event without an idempotency key cannot conflict: a plain
            // insert, without the speculative insertion of ON CONFLICT.
            publish_keyless: format!(
                "INSERT INTO {s}.events \
                 (event_type, payload, priority, run_at, max_attempts, relay) \
                 VALUES ($1, $2::text::jsonb, $3, \
                 COALESCE($4::timestamptz, clock_timestamp() + make_interval(secs => COALESCE($5::float8, 0))), \
                 $6, {relay_lane_1}) \
                 RETURNING id"
            ),
            existing_key: format!("SELECT id FROM {s}.events WHERE idempotency_key = $1"),
            publish_batch: format!(
                "INSERT INTO {s}.events \
                 (event_type, payload, priority, run_at, max_attempts, idempotency_key, relay) \
                 SELECT u.t, u.p::jsonb, u.pr, \
                 COALESCE(u.ra, clock_timestamp() + make_interval(secs => COALESCE(u.d, 0))), \
                 u.ma, u.k, {relay_lane_t} \
                 FROM unnest($1::text[], $2::text[], $3::int2[], $4::timestamptz[], \
                 $5::float8[], $6::int4[], $7::text[]) AS u(t, p, pr, ra, d, ma, k) \
                 ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
                 RETURNING id, idempotency_key"
            ),
            // A batch without idempotency keys cannot conflict: a plain
            // insert, without the speculative insertion (and its extra WAL
            // record per row) that ON CONFLICT costs.
            publish_batch_keyless: format!(
                "INSERT INTO {s}.events \
                 (event_type, payload, priority, run_at, max_attempts, relay) \
                 SELECT u.t, u.p::jsonb, u.pr, \
                 COALESCE(u.ra, clock_timestamp() + make_interval(secs => COALESCE(u.d, 0))), \
                 u.ma, {relay_lane_t} \
                 FROM unnest($1::text[], $2::text[], $3::int2[], $4::timestamptz[], \
                 $5::float8[], $6::int4[]) AS u(t, p, pr, ra, d, ma) \
                 RETURNING id"
            ),
            // Expired leases first (rescue), then due events in priority
            // order; both through partial indexes that hold only the rows
            // they look for.
            claim: format!(
                "WITH {} {}",
                picked(&s, "$1", None, None),
                lease_picked(&s, &sequence, "$2")
            ),
            // The same claim of due events, starting in the due index just
            // behind a pool's cursor: dead index entries before it (which a
            // long-held snapshot keeps from being removed) are not walked.
            claim_from: format!(
                "WITH {} {}",
                picked(&s, "$1", Some(["$3", "$4", "$5"]), None),
                lease_picked(&s, &sequence, "$2")
            ),
            claim_completing: [false, true]
                .map(|from_cursor| claim_completing(&s, &sequence, from_cursor, false)),
            claim_completing_keep: [false, true]
                .map(|from_cursor| claim_completing(&s, &sequence, from_cursor, true)),
            next_due_from: format!(
                "SELECT EXTRACT(EPOCH FROM (\
                   (SELECT run_at FROM {s}.events WHERE lease_token IS NULL AND NOT relay AND max_attempts > 0 \
                    AND run_at > greatest($1, now()) ORDER BY run_at LIMIT 1) - clock_timestamp()))::float8"
            ),
            next_due: format!(
                "SELECT EXTRACT(EPOCH FROM (least(\
                   (SELECT run_at FROM {s}.events WHERE lease_token IS NULL AND NOT relay AND max_attempts > 0 \
                    ORDER BY run_at LIMIT 1), \
                   (SELECT lease_expires_at FROM {s}.events WHERE lease_token IS NOT NULL \
                    AND max_attempts > 0 ORDER BY lease_expires_at LIMIT 1)) - clock_timestamp()))::float8"
            ),
            complete_delete: format!(
                "DELETE FROM {s}.events WHERE id = $1 AND lease_token = $2"
            ),
            complete_keep: format!(
                "WITH done AS (\
                   DELETE FROM {s}.events WHERE id = $1 AND lease_token = $2 \
                   RETURNING id, event_type, payload, attempts, created_at) \
                 INSERT INTO {s}.completed_events (id, event_type, payload, attempts, created_at) \
                 SELECT * FROM done ON CONFLICT (id) DO NOTHING"
            ),
            complete_delete_in: format!("WITH {} SELECT id, token FROM done", done(&s, false)),
            complete_keep_in: format!("WITH {} SELECT id, token FROM done", done(&s, true)),
            retry: format!(
                "UPDATE {s}.events SET lease_token = NULL, lease_expires_at = NULL, \
                 run_at = clock_timestamp() + make_interval(secs => $4::float8), last_error = $3 \
                 WHERE id = $1 AND lease_token = $2"
            ),
            bury: format!(
                "WITH gone AS (\
                   DELETE FROM {s}.events WHERE id = $1 AND lease_token = $2 \
                   RETURNING id, event_type, payload, priority, attempts, max_attempts, \
                   idempotency_key, created_at) \
                 INSERT INTO {s}.dead_events (id, event_type, payload, priority, attempts, \
                   max_attempts, idempotency_key, created_at, last_error) \
                 SELECT gone.*, $3::text FROM gone"
            ),
            renew: format!(
                "UPDATE {s}.events e \
                 SET lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8) \
                 WHERE {BY_LEASE} RETURNING e.id"
            ),
            release: format!(
                "UPDATE {s}.events e SET lease_token = NULL, lease_expires_at = NULL, \
                 attempts = greatest(e.attempts - 1, 0) \
                 WHERE {BY_LEASE}"
            ),
            wake: format!("SELECT pg_notify({channel_literal}, '')"),
            stats_queue: format!(
                "SELECT event_type, \
                   count(*) FILTER (WHERE lease_token IS NULL AND NOT relay AND run_at <= now()), \
                   count(*) FILTER (WHERE lease_token IS NULL AND NOT relay AND run_at > now()), \
                   count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at >= now()), \
                   count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at < now()), \
                   EXTRACT(EPOCH FROM now() - min(run_at) \
                     FILTER (WHERE lease_token IS NULL AND NOT relay AND run_at <= now()))::float8 \
                 FROM {s}.events GROUP BY event_type"
            ),
            stats_dead: format!("SELECT event_type, count(*) FROM {s}.dead_events GROUP BY event_type"),
            list_dead: format!(
                "SELECT id, event_type, payload::text, attempts, max_attempts, last_error, \
                 idempotency_key, created_at, died_at \
                 FROM {s}.dead_events WHERE id > $1 ORDER BY id LIMIT $2"
            ),
            requeue_dead: format!(
                "WITH moved AS (\
                   DELETE FROM {s}.dead_events WHERE id = ANY($1::int8[]) \
                   RETURNING id, event_type, payload, priority, max_attempts, idempotency_key, \
                   last_error, created_at) \
                 INSERT INTO {s}.events (id, event_type, payload, priority, max_attempts, \
                   idempotency_key, last_error, created_at) OVERRIDING SYSTEM VALUE \
                 SELECT * FROM moved"
            ),
            purge_dead: format!("DELETE FROM {s}.dead_events WHERE id = ANY($1::int8[])"),
            prune_completed: format!(
                "DELETE FROM {s}.completed_events WHERE id IN (\
                   SELECT id FROM {s}.completed_events \
                   WHERE completed_at < now() - make_interval(secs => $1::float8) LIMIT $2)"
            ),
        }
    }

    /// One `DO` block that takes the migration lock (held to the end of the
    /// transaction), creates the schema and its version table, refuses a
    /// newer version (message [`SCHEMA_TOO_NEW`], the version as detail)
    /// and applies each missing migration with its version row: atomic as
    /// one statement on any client.
    pub(crate) fn migrate_block(&self, lock: i64) -> String {
        let mut steps = String::new();
        for (version, sql) in self.migrations_after(0) {
            steps.push_str(&format!(
                "IF current < {version} THEN EXECUTE {}; \
                 INSERT INTO {}.schema_version (version) VALUES ({version}); END IF;\n",
                quote_literal(&sql),
                self.schema
            ));
        }
        format!(
            "DO $pgorm_migrate$\nDECLARE current integer;\nBEGIN\n\
             IF NOT pg_try_advisory_xact_lock({lock}) THEN \
             PERFORM pg_advisory_xact_lock({lock}); \
             IF current_setting('transaction_isolation') <> 'read committed' THEN \
             RAISE EXCEPTION {} USING ERRCODE = 'serialization_failure'; END IF; END IF;\n\
             EXECUTE {};\nEXECUTE {};\n\
             EXECUTE {} INTO current;\n\
             IF current > {LATEST_VERSION} THEN \
             RAISE EXCEPTION {} USING DETAIL = current::text; END IF;\n\
             {steps}END\n$pgorm_migrate$",
            quote_literal(MIGRATED_CONCURRENTLY),
            quote_literal(&self.create_schema),
            quote_literal(&self.create_version_table),
            quote_literal(&self.current_version),
            quote_literal(SCHEMA_TOO_NEW),
        )
    }

    /// The shipped migrations after `version`, with the schema filled in.
    pub(crate) fn migrations_after(&self, version: i32) -> Vec<(i32, String)> {
        MIGRATIONS
            .iter()
            .enumerate()
            .map(|(index, sql)| (index as i32 + 1, sql))
            .filter(|(number, _)| *number > version)
            .map(|(number, sql)| {
                let class = WAKE_LOCK_CLASS.to_string();
                let flag = wake_flag(&self.schema);
                let values = [
                    ("{s}", self.schema.as_str()),
                    ("{channel}", self.channel_literal.as_str()),
                    ("{wake_lock_class}", class.as_str()),
                    ("{wake_flag}", flag.as_str()),
                ];
                (number, fill(sql, &values))
            })
            .collect()
    }
}

/// The CTEs that complete the leases `$1` (ids) and `$2` (tokens): `done`,
/// the deleted events with their tokens (`id`, `token` among its columns),
/// and with `keep` also `kept`, their copies in `completed_events`.
fn done(s: &str, keep: bool) -> String {
    let returned = if keep {
        "e.id, e.event_type, e.payload, e.attempts, e.created_at, e.lease_token AS token"
    } else {
        "e.id, e.lease_token AS token"
    };
    let done = format!("done AS (DELETE FROM {s}.events e WHERE {BY_LEASE} RETURNING {returned})");
    if !keep {
        return done;
    }
    format!(
        "{done}, \
         kept AS (\
           INSERT INTO {s}.completed_events (id, event_type, payload, attempts, created_at) \
           SELECT id, event_type, payload, attempts, created_at FROM done \
           ON CONFLICT (id) DO NOTHING)"
    )
}

/// A claim that also completes the leases in `$1` (ids) and `$2` (tokens)
/// in the same statement and transaction: one commit, not two, per round
/// of a busy pool. `$3` is the limit, `$4` the lease in seconds, and with
/// `from_cursor` `$5`–`$7` the cursor (as in `claim_from`; otherwise the
/// sweep of `claim`, expired leases first). Rows with a null event type
/// are the accepted completions (id and token); the others are claimed
/// events, as `claim` returns them. A lease being completed is never also
/// rescued by the same statement (a row changed twice in one statement
/// keeps only one of the changes).
fn claim_completing(s: &str, sequence: &str, from_cursor: bool, keep: bool) -> String {
    let cursor = from_cursor.then_some(["$5", "$6", "$7"]);
    format!(
        "WITH {}, {}, claimed AS ({}) \
         SELECT * FROM claimed \
         UNION ALL SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, token FROM done",
        done(s, keep),
        picked(s, "$3", cursor, Some("$1")),
        lease_picked(s, sequence, "$4"),
    )
}

/// The CTEs that pick up to `limit` events to claim, ending in `picked`
/// (`id`): with a `cursor` (priority, run_at, id parameters) the due
/// events after it; otherwise expired leases first (the rescue), except
/// the ids in `exclude` (an `int8[]` parameter: leases being completed),
/// then due events in priority order. Locked rows are skipped.
fn picked(s: &str, limit: &str, cursor: Option<[&str; 3]>, exclude: Option<&str>) -> String {
    let due = |after: &str| {
        format!(
            "SELECT id FROM {s}.events \
             WHERE lease_token IS NULL AND NOT relay AND run_at <= now(){after} \
             ORDER BY priority, run_at, id LIMIT {limit} FOR UPDATE SKIP LOCKED"
        )
    };
    // Only statements that state `max_attempts > 0` (always true) can use
    // the time indexes (migration 4): the sweep, which may take the
    // run-time index when few of many events are due, and its rescue,
    // which takes the lease index; a claim from the cursor cannot.
    match cursor {
        Some([priority, run_at, id]) => format!(
            "picked AS ({})",
            due(&format!(
                " AND (priority, run_at, id) > ({priority}::int2, {run_at}::timestamptz, {id}::int8)"
            ))
        ),
        None => format!(
            "expired AS (\
               SELECT id FROM {s}.events \
               WHERE lease_token IS NOT NULL AND max_attempts > 0 \
               AND lease_expires_at < now(){exclude} \
               ORDER BY lease_expires_at LIMIT {limit} FOR UPDATE SKIP LOCKED), \
             due AS ({due}), \
             picked AS (SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT {limit})",
            exclude = exclude
                .map(|ids| format!(" AND NOT id = ANY({ids}::int8[])"))
                .unwrap_or_default(),
            due = due(" AND max_attempts > 0"),
        ),
    }
}

/// Leases the `picked` events for `lease` seconds (a `float8` parameter),
/// counting an attempt each, and returns them. Each is found by its id
/// through the primary key (as in [`BY_LEASE`]; a join with `picked` was
/// planned as a full scan of it once the statistics saw a mostly-dead
/// table).
fn lease_picked(s: &str, sequence: &str, lease: &str) -> String {
    format!(
        "UPDATE {s}.events e SET \
           lease_token = nextval({sequence}), \
           lease_expires_at = clock_timestamp() + make_interval(secs => {lease}::float8), \
           attempts = e.attempts + 1 \
         WHERE e.id = ANY(ARRAY(SELECT id FROM picked)) \
         RETURNING {EVENT_COLUMNS}"
    )
}

/// The transaction-local setting (as a literal) that marks a transaction
/// whose wake-up was already decided, one per schema: `pgorm_events.woke_`
/// and an FNV-1a hash of the quoted schema name.
fn wake_flag(quoted_schema: &str) -> String {
    let hash = quoted_schema
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    quote_literal(&format!("pgorm_events.woke_{hash:016x}"))
}

/// Replaces the placeholders of `template` in one pass: text filled in (a
/// schema name holding `{channel}`, say) is never scanned again.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    'scan: while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        for (key, value) in values {
            if let Some(after) = rest.strip_prefix(key) {
                out.push_str(value);
                rest = after;
                continue 'scan;
            }
        }
        out.push('{');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_always_quoted() {
        assert_eq!(quote_ident("events"), "\"events\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn migrations_fill_in_the_quoted_schema() {
        let statements = Statements::new("My Schema", "pgorm_events.My Schema");
        let migrations = statements.migrations_after(0);
        assert_eq!(migrations.len() as i32, LATEST_VERSION);
        assert!(migrations[0].1.contains("\"My Schema\".events"));
        assert!(migrations[0].1.contains("'pgorm_events.My Schema'"));
        for (_, sql) in &migrations {
            assert!(!sql.contains("{s}") && !sql.contains("{channel}"));
            assert!(!sql.contains("{wake_lock_class}"));
        }
        assert!(statements.migrations_after(LATEST_VERSION).is_empty());
    }

    #[test]
    fn only_sweeps_and_due_times_may_use_the_run_time_index() {
        let statements = Statements::new("q", "pgorm_events.q");
        let latest = &statements.migrations_after(LATEST_VERSION - 1)[0].1;
        assert!(latest.contains("WHERE lease_token IS NULL AND NOT relay AND max_attempts > 0;"));
        assert!(latest.contains("WHERE lease_token IS NOT NULL AND max_attempts > 0;"));
        let states = |sql: &str| sql.contains("max_attempts > 0");
        for by_id in [
            &statements.claim_from,
            &statements.claim_completing[1],
            &statements.claim_completing_keep[1],
            &statements.complete_delete,
            &statements.complete_keep,
            &statements.complete_delete_in,
            &statements.complete_keep_in,
            &statements.retry,
            &statements.bury,
            &statements.renew,
            &statements.release,
        ] {
            assert!(!states(by_id), "{by_id}");
        }
        // The sweeps' completions name leases by id; their rescue does not.
        for sweep in [
            &statements.claim_completing[0],
            &statements.claim_completing_keep[0],
        ] {
            let (completions, rest) = sweep.split_once("expired AS").unwrap();
            assert!(!states(completions) && states(rest), "{sweep}");
        }
        assert!(states(&statements.claim));
        assert!(states(&statements.next_due));
        assert!(states(&statements.next_due_from));
    }

    #[test]
    fn filled_in_text_is_not_filled_in_again() {
        let statements = Statements::new("a{channel}\"b", "pgorm_events.a{channel}\"b");
        let first = &statements.migrations_after(0)[0].1;
        assert!(first.contains("CREATE TABLE \"a{channel}\"\"b\".events ("));
        assert!(first.contains("'pgorm_events.a{channel}\"b'"));
    }
}
