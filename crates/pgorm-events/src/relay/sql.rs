//! The relay's statements, built once per schema (the schema quoted).

use crate::sql::quote_ident;

/// Every statement the relay runs.
#[derive(Debug)]
pub(crate) struct RelaySql {
    pub store_rules: String,
    pub drop_other_rules: String,
    pub try_lock: String,
    pub keepalive: String,
    pub fetch: String,
    pub mark_delete: String,
    pub mark_keep: String,
    pub lag: String,
    pub unlane: String,
    pub source: String,
}

impl RelaySql {
    pub(crate) fn new(schema: &str) -> RelaySql {
        let s = quote_ident(schema);
        RelaySql {
            store_rules: format!(
                "INSERT INTO {s}.relay_rules (pattern, regex) \
                 SELECT * FROM unnest($1::text[], $2::text[]) \
                 ON CONFLICT (pattern) DO UPDATE SET regex = excluded.regex"
            ),
            drop_other_rules: format!(
                "DELETE FROM {s}.relay_rules WHERE NOT (pattern = ANY($1::text[]))"
            ),
            // A session lock on a connection of its own: held while that
            // session lives, released by the server when it ends.
            try_lock: "SELECT pg_try_advisory_lock(hashtextextended($1, 0))".to_owned(),
            // The server drops a session whose peer went silent (a cut
            // network), and with it the lock, within about the takeover time.
            keepalive: "SELECT set_config('tcp_keepalives_idle', $1, false), \
                 set_config('tcp_keepalives_interval', $2, false), \
                 set_config('tcp_keepalives_count', '3', false), \
                 set_config('tcp_user_timeout', $3, false)"
                .to_owned(),
            // Every committed relay-lane row, in id order. Relayed rows are
            // deleted (or moved), so there is no cursor that a late commit
            // with a lower id could fall behind: nothing is skipped, and no
            // transaction horizon needs to be waited for.
            fetch: format!(
                "SELECT id, event_type, payload::text, \
                 EXTRACT(EPOCH FROM created_at)::float8 \
                 FROM {s}.events \
                 WHERE relay \
                 ORDER BY id LIMIT $1"
            ),
            mark_delete: format!("DELETE FROM {s}.events WHERE relay AND id = ANY($1::int8[])"),
            mark_keep: format!(
                "WITH done AS (\
                   DELETE FROM {s}.events WHERE relay AND id = ANY($1::int8[]) \
                   RETURNING id, event_type, payload, attempts, created_at) \
                 INSERT INTO {s}.completed_events (id, event_type, payload, attempts, created_at) \
                 SELECT * FROM done ON CONFLICT (id) DO NOTHING"
            ),
            lag: format!(
                "SELECT count(*), \
                 COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8 \
                 FROM {s}.events WHERE relay"
            ),
            // The database the events come from, for the message ids: the
            // cluster's system identifier (the same on its physical
            // replicas, so a failover keeps deduplicating) and the
            // database's OID.
            source: "SELECT (SELECT system_identifier FROM pg_control_system())::text \
                 || '.' || (SELECT oid FROM pg_database WHERE datname = current_database())::text"
                .to_owned(),
            unlane: format!(
                "UPDATE {s}.events SET relay = false, last_error = $2 WHERE id = $1 AND relay"
            ),
        }
    }
}
