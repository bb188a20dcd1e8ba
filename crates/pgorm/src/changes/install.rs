//! Installing and removing a table's change-feed triggers, and the channel
//! they notify on.

use crate::error::{OrmResult, ValidationError};
use crate::model::{qualified_table, quote_identifier, Model};
use crate::pg_client::PgClient;
use crate::GenericClient;

/// The version of the trigger functions this pgorm installs, kept at the
/// start of each function's comment. A different comment makes [`install`]
/// replace the function and its triggers.
pub const FEED_VERSION: &str = "pgorm change feed 4";

/// The four statement-level triggers, by operation (TRUNCATE has no
/// transition table: it sends one `T` notification, which the feed turns
/// into a resync).
const TRIGGERS: [(&str, &str, &str); 4] = [
    ("pgorm_changes_insert", "INSERT", "NEW TABLE AS pgorm_new"),
    (
        "pgorm_changes_update",
        "UPDATE",
        "OLD TABLE AS pgorm_old NEW TABLE AS pgorm_new",
    ),
    ("pgorm_changes_delete", "DELETE", "OLD TABLE AS pgorm_old"),
    ("pgorm_changes_truncate", "TRUNCATE", ""),
];

/// How many bytes of keys (as JSON, with separators) one notification
/// carries at most before its last key; with keys of at most this size the
/// payload stays under 8000 bytes.
pub const KEY_BYTES_PER_NOTIFICATION: usize = 3900;

/// `s` as an SQL string literal, whatever `standard_conforming_strings` is.
fn sql_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// The SQL expression that renders the key of row alias `alias` as a JSON
/// object text, e.g. `'{"id":' || to_json(n."id")::text || '}'`.
fn key_json(alias: &str, keys: &[&str]) -> OrmResult<String> {
    let mut parts = Vec::new();
    for (i, column) in keys.iter().enumerate() {
        let name = serde_json::to_string(column).expect("a string serialises");
        let open = if i == 0 { "{" } else { "," };
        parts.push(sql_literal(&format!("{open}{name}:")));
        parts.push(format!(
            "to_json({alias}.{})::text",
            quote_identifier(column)?
        ));
    }
    parts.push("'}'".to_owned());
    Ok(parts.join(" || "))
}

/// The table's own trigger function, with its channel and key columns
/// written into static SQL (so PL/pgSQL plans each query once per session).
/// It reads the transition tables once per statement and sends
/// `{"op":"I|U|D","keys":[{...},...]}` chunks, cut where the running size
/// of the keys passes a multiple of [`KEY_BYTES_PER_NOTIFICATION`]. An
/// UPDATE that changes a key sends the old key as `D` and the new one as
/// `I`.
fn function_sql(function: &str, channel: &str, keys: &[&str]) -> OrmResult<String> {
    let channel = sql_literal(channel);
    let chunk = format!(
        "(sum(octet_length(key) + 1) OVER (ROWS UNBOUNDED PRECEDING) \
         - octet_length(key) - 1) / {KEY_BYTES_PER_NOTIFICATION}"
    );
    let mut join = String::new();
    for (i, column) in keys.iter().enumerate() {
        let column = quote_identifier(column)?;
        join.push_str(if i == 0 { "" } else { " AND " });
        join.push_str(&format!("n.{column} = o.{column}"));
    }
    let first = quote_identifier(keys[0])?;
    // The keys of an UPDATE, with their operation.
    let changed = format!(
        "SELECT CASE WHEN o.{first} IS NULL THEN 'I' WHEN n.{first} IS NULL THEN 'D' ELSE 'U' END AS op, \
                CASE WHEN n.{first} IS NULL THEN {old} ELSE {new} END AS key \
         FROM pgorm_new n FULL JOIN pgorm_old o ON {join}",
        old = key_json("o", keys)?,
        new = key_json("n", keys)?,
    );
    // Statements of many rows or wide keys: chunks by running size.
    let chunked = |keys_sql: &str| {
        format!(
            r#"FOR payload IN
                SELECT '{{"op":"' || c.op || '","keys":[' || string_agg(c.key, ',') || ']}}'
                FROM (SELECT op, key, {chunk} AS chunk FROM ({keys_sql}) k) c
                GROUP BY c.op, c.chunk
            LOOP
                PERFORM pg_notify({channel}, payload);
            END LOOP;"#
        )
    };
    // INSERT and DELETE: up to FEW rows whose keys fit go out in one
    // notification without the chunking query.
    let single = |op: &str, table: &str| -> OrmResult<String> {
        let keys_sql = format!(
            "SELECT '{op}'::text AS op, {json} AS key FROM {table} r",
            json = key_json("r", keys)?
        );
        Ok(format!(
            r#"SELECT count(*), string_agg(k.key, ',') INTO counted, payload
            FROM ({keys_sql} LIMIT {few_plus_one}) k;
        IF counted = 0 THEN
            RETURN NULL;
        ELSIF counted <= {few} AND octet_length(payload) <= {fits} THEN
            PERFORM pg_notify({channel}, '{{"op":"{op}","keys":[' || payload || ']}}');
        ELSE
            {chunked}
        END IF;"#,
            few_plus_one = FEW + 1,
            few = FEW,
            fits = 2 * KEY_BYTES_PER_NOTIFICATION,
            chunked = chunked(&keys_sql),
        ))
    };
    let sql = format!(
        r#"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS {TAG_MARK}
DECLARE
    payload text;
    change_op text;
    counted bigint;
    fits boolean := true;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify({channel}, '{{"op":"T","keys":[]}}');
    ELSIF TG_OP = 'INSERT' THEN
        {insert}
    ELSIF TG_OP = 'DELETE' THEN
        {delete}
    ELSE
        SELECT count(*) INTO counted FROM (SELECT 1 FROM pgorm_new LIMIT {few_plus_one}) k;
        IF counted = 0 THEN
            RETURN NULL;
        ELSIF counted <= {few} THEN
            FOR change_op, payload IN
                SELECT c.op, string_agg(c.key, ',') FROM ({changed}) c GROUP BY c.op
            LOOP
                IF octet_length(payload) <= {fits} THEN
                    PERFORM pg_notify({channel}, '{{"op":"' || change_op || '","keys":[' || payload || ']}}');
                ELSE
                    fits := false;
                END IF;
            END LOOP;
        END IF;
        IF counted > {few} OR NOT fits THEN
            -- Repeats of what was sent above are merged by the server.
            {chunked_update}
        END IF;
    END IF;
    RETURN NULL;
END
{TAG_MARK}"#,
        insert = single("I", "pgorm_new")?,
        delete = single("D", "pgorm_old")?,
        few_plus_one = FEW + 1,
        few = FEW,
        fits = 2 * KEY_BYTES_PER_NOTIFICATION,
        chunked_update = chunked(&changed),
        channel = channel,
    );
    // The body holds the channel and the key columns' names, which may
    // contain any fixed dollar-quote tag: pick one that the body does not.
    let mut tag = String::from("$pgorm$");
    let mut n = 0u32;
    while sql.contains(&tag) {
        n += 1;
        tag = format!("$pgorm{n}$");
    }
    Ok(sql.replace(TAG_MARK, &tag))
}

/// Where the dollar-quote tag goes until it is chosen: a NUL, which no
/// identifier (nor, so, the channel) can contain.
const TAG_MARK: &str = "\u{0}tag\u{0}";

/// Statements of at most this many rows skip the chunking query when their
/// keys fit one notification.
const FEW: usize = 100;

/// The name of the table's trigger function (in the table's schema):
/// `pgorm_changes_` and a hash of the table's name.
fn function_name(table: &str) -> String {
    format!("pgorm_changes_{:016x}", fnv1a(table.as_bytes()))
}

/// What the function's comment says: the version, the channel, the keys.
fn function_comment(channel: &str, keys: &[&str]) -> String {
    format!("{FEED_VERSION}{}", comment_tail(channel, keys))
}

/// The part of the function's comment after the version.
fn comment_tail(channel: &str, keys: &[&str]) -> String {
    format!("; channel {channel:?}; keys {keys:?}")
}

/// Whether the INSERT, UPDATE and DELETE triggers of a pgorm feed (of any
/// version) on `M`'s table notify the channel of the table's current name
/// with `M`'s keys: what a [`ChangeFeed`](super::ChangeFeed) needs.
pub(crate) async fn notifies_current_channel<M: Model>(
    client: &impl GenericClient,
) -> OrmResult<(bool, String)> {
    let feed = feed_of::<M>(client).await?;
    let (schema, table_name) = resolve_table::<M>(client).await?;
    let tail = comment_tail(&channel_name(&schema, &table_name), M::KEY_COLUMNS);
    let names: Vec<&str> = TRIGGERS[..3].iter().map(|(name, _, _)| *name).collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_trigger t \
             WHERE t.tgrelid = $1::text::regclass AND t.tgname = ANY($2) \
               AND starts_with(obj_description(t.tgfoid, 'pg_proc'), 'pgorm change feed ') \
               AND right(obj_description(t.tgfoid, 'pg_proc'), length($3)) = $3",
            &[&feed.table, &names, &tail],
        )
        .await?;
    let count: i64 = crate::model::decode_at(&row, 0)?;
    Ok((count == names.len() as i64, feed.table))
}

/// The channel a table's feed notifies on: `pgorm_changes:schema.table`,
/// or, when that is longer than PostgreSQL's 63-byte limit, its first bytes
/// followed by `#` and a 16-digit hash of the whole name, so two long names
/// never share a channel by truncation. A name containing `.` or `"` is
/// written in double quotes (inner `"` doubled), so schema `a.b` with
/// table `c` and schema `a` with table `b.c` get different channels.
pub fn channel_name(schema: &str, table: &str) -> String {
    let full = format!(
        "pgorm_changes:{}.{}",
        channel_part(schema),
        channel_part(table)
    );
    if full.len() <= 63 {
        return full;
    }
    let suffix = format!("#{:016x}", fnv1a(full.as_bytes()));
    let mut cut = 63 - suffix.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &full[..cut])
}

/// `name` as it is, or in double quotes when it contains `.` or `"`: an
/// unquoted part has neither, so `schema.table` reads back one way only.
fn channel_part(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(['.', '"']) {
        format!("\"{}\"", name.replace('"', "\"\"")).into()
    } else {
        name.into()
    }
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The schema and name of the model's table as the server resolves them.
///
/// # Errors
/// [`OrmError::Query`] when the table does not exist.
pub(crate) async fn resolve_table<M: Model>(
    client: &impl GenericClient,
) -> OrmResult<(String, String)> {
    let table = qualified_table::<M>()?;
    let row = client
        .query_one(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::text::regclass",
            &[&table],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The table, its schema-qualified function, the function's comment and
/// its SQL.
struct Feed {
    table: String,
    function: String,
    comment: String,
}

async fn feed_of<M: Model>(client: &impl GenericClient) -> OrmResult<Feed> {
    let (schema, table_name) = resolve_table::<M>(client).await?;
    let schema_quoted = quote_identifier(&schema)?;
    let channel = channel_name(&schema, &table_name);
    Ok(Feed {
        table: format!("{schema_quoted}.{}", quote_identifier(&table_name)?),
        function: format!(
            "{schema_quoted}.{}",
            quote_identifier(&function_name(&table_name))?
        ),
        comment: function_comment(&channel, M::KEY_COLUMNS),
    })
}

/// Whether the function with this exact comment and all four triggers
/// calling it are on the table already.
async fn is_current(client: &impl GenericClient, feed: &Feed) -> OrmResult<bool> {
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _, _)| *name).collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_trigger t \
             WHERE t.tgrelid = $1::text::regclass AND t.tgname = ANY($2) \
               AND to_regprocedure($3 || '()') IS NOT NULL \
               AND t.tgfoid = to_regprocedure($3 || '()') \
               AND obj_description(t.tgfoid, 'pg_proc') = $4",
            &[&feed.table, &names, &feed.function, &feed.comment],
        )
        .await?;
    let count: i64 = row.get(0);
    Ok(count == TRIGGERS.len() as i64)
}

/// Installs the change feed of `M`'s table: a trigger function of its own
/// (in the table's schema, versioned by [`FEED_VERSION`] in its comment)
/// and four statement-level triggers: `AFTER INSERT/UPDATE/DELETE` with
/// transition tables, so a statement sends one notification per chunk of
/// keys, not one per row, and `AFTER TRUNCATE`, which makes feeds resync. Runs in one transaction under an advisory lock.
///
/// Returns `false` when the current feed was installed already (nothing is
/// changed), `true` when it installed or upgraded it.
///
/// The key columns must not be NULL (a primary key), and a key must be at
/// most [`KEY_BYTES_PER_NOTIFICATION`] bytes as JSON; a larger one makes
/// the writing statement fail (never a lost change).
///
/// # Errors
/// [`OrmError::Query`](crate::OrmError::Query) when the table does not
/// exist or the role may not create triggers on it;
/// [`OrmError::Validation`](crate::OrmError::Validation) for names that
/// cannot be identifiers, for a key column the table lacks or that may be
/// NULL, and for a partitioned table or one with
/// inheritance children (a write straight into a partition fires no
/// trigger of the parent: its changes would be lost silently).
pub async fn install<M: Model>(client: &PgClient) -> OrmResult<bool> {
    let tx = client.transaction().await?;
    let feed = feed_of::<M>(&tx).await?;
    lock(&tx, &feed).await?;
    refuse_partitioned(&tx, &feed).await?;
    check_keys::<M>(&tx, &feed).await?;
    if is_current(&tx, &feed).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    let (schema, table_name) = resolve_table::<M>(&tx).await?;
    let channel = channel_name(&schema, &table_name);
    let previous = trigger_functions(&tx, &feed).await?;
    tx.execute(
        &function_sql(&feed.function, &channel, M::KEY_COLUMNS)?,
        &[],
    )
    .await?;
    tx.execute(
        &format!(
            "COMMENT ON FUNCTION {}() IS {}",
            feed.function,
            sql_literal(&feed.comment)
        ),
        &[],
    )
    .await?;
    for (name, operation, referencing) in TRIGGERS {
        tx.execute(
            &format!("DROP TRIGGER IF EXISTS {name} ON {}", feed.table),
            &[],
        )
        .await?;
        tx.execute(
            &format!(
                "CREATE TRIGGER {name} AFTER {operation} ON {} {}FOR EACH STATEMENT \
                 EXECUTE FUNCTION {}()",
                feed.table,
                if referencing.is_empty() {
                    String::new()
                } else {
                    format!("REFERENCING {referencing} ")
                },
                feed.function
            ),
            &[],
        )
        .await?;
    }
    // The function of before a rename of the table has another name.
    drop_unused(&tx, &previous).await?;
    tx.commit().await?;
    Ok(true)
}

/// Takes the transaction-scoped advisory lock of the table's feed, which
/// [`install`] and [`uninstall`] both hold while they change it.
async fn lock(client: &impl GenericClient, feed: &Feed) -> OrmResult<()> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('pgorm change feed'), hashtext($1))",
            &[&feed.table],
        )
        .await?;
    Ok(())
}

/// Refuses key columns that the table lacks or that may be NULL: PL/pgSQL
/// checks the function's queries only when they run, so a wrong key column
/// would make every write to the table fail in the trigger.
async fn check_keys<M: Model>(client: &impl GenericClient, feed: &Feed) -> OrmResult<()> {
    for column in M::KEY_COLUMNS {
        let row = client
            .query_opt(
                "SELECT a.attnotnull FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attname = $2 \
                   AND a.attnum > 0 AND NOT a.attisdropped",
                &[&feed.table, column],
            )
            .await?;
        let problem = match row {
            None => "does not exist",
            Some(row) if !crate::model::decode_at::<bool>(&row, 0)? => "may be NULL",
            Some(_) => continue,
        };
        return Err(ValidationError::Setting {
            setting: "change feed",
            reason: format!("key column {column:?} of {} {problem}", feed.table),
        }
        .into());
    }
    Ok(())
}

/// Refuses a partitioned table or one with inheritance children: the
/// statement-level triggers fire only for statements that name the table
/// itself, so a write straight into a partition or child would never reach
/// a feed.
async fn refuse_partitioned(client: &impl GenericClient, feed: &Feed) -> OrmResult<()> {
    let row = client
        .query_one(
            "SELECT c.relkind = 'p' OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid) \
             FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&feed.table],
        )
        .await?;
    let parent: bool = crate::model::decode_at(&row, 0)?;
    if !parent {
        return Ok(());
    }
    Err(ValidationError::Setting {
        setting: "change feed",
        reason: format!(
            "{} has partitions or inheritance children; writes straight into them \
             would not fire its statement triggers, so its changes cannot all be seen",
            feed.table
        ),
    }
    .into())
}

/// The functions (as `regprocedure` text, quoted by the server) that the
/// feed's triggers on the table call now: after a rename of the table,
/// not the one [`function_name`] gives.
async fn trigger_functions(client: &impl GenericClient, feed: &Feed) -> OrmResult<Vec<String>> {
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _, _)| *name).collect();
    let rows = client
        .query(
            "SELECT DISTINCT t.tgfoid::regprocedure::text FROM pg_trigger t \
             JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE t.tgrelid = $1::text::regclass AND t.tgname = ANY($2) \
               AND p.proname LIKE 'pgorm\\_changes\\_%'",
            &[&feed.table, &names],
        )
        .await?;
    rows.iter()
        .map(|row| crate::model::decode_at(row, 0))
        .collect()
}

/// Drops each of `functions` that still exists and that no trigger calls
/// any more.
async fn drop_unused(client: &impl GenericClient, functions: &[String]) -> OrmResult<()> {
    for function in functions {
        let row = client
            .query_one(
                "SELECT f IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = f) \
                 FROM to_regprocedure($1) f",
                &[function],
            )
            .await?;
        let unused: bool = crate::model::decode_at(&row, 0)?;
        if unused {
            // `function` is the server's own rendering of a regprocedure.
            client
                .execute(&format!("DROP FUNCTION IF EXISTS {function}"), &[])
                .await?;
        }
    }
    Ok(())
}

/// Removes the feed from `M`'s table: its four triggers and its function.
/// Returns whether there was anything to remove.
///
/// # Errors
/// As [`install`].
pub async fn uninstall<M: Model>(client: &PgClient) -> OrmResult<bool> {
    let tx = client.transaction().await?;
    let feed = feed_of::<M>(&tx).await?;
    lock(&tx, &feed).await?;
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _, _)| *name).collect();
    let present: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND tgname = ANY($2)",
            &[&feed.table, &names],
        )
        .await?
        .get(0);
    let previous = trigger_functions(&tx, &feed).await?;
    for name in names {
        tx.execute(
            &format!("DROP TRIGGER IF EXISTS {name} ON {}", feed.table),
            &[],
        )
        .await?;
    }
    tx.execute(&format!("DROP FUNCTION IF EXISTS {}()", feed.function), &[])
        .await?;
    drop_unused(&tx, &previous).await?;
    tx.commit().await?;
    Ok(present > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_escape_backslashes() {
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal(r"a\'b"), r"E'a\\''b'");
    }

    #[test]
    fn short_names_make_a_readable_channel() {
        assert_eq!(
            channel_name("public", "users"),
            "pgorm_changes:public.users"
        );
        assert_ne!(channel_name("a.b", "c"), channel_name("a", "b.c"));
        assert_eq!(channel_name("a.b", "c"), "pgorm_changes:\"a.b\".c");
    }

    #[test]
    fn long_names_are_cut_to_63_bytes_with_a_hash_that_tells_them_apart() {
        let long = "t".repeat(63);
        let a = channel_name("public", &long);
        let b = channel_name("public", &format!("{}u", "t".repeat(62)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(a, channel_name("public", &long));
        let wide = "é".repeat(31);
        let c = channel_name(&wide, &wide);
        assert!(c.len() <= 63);
        crate::listen::validate_channel(&c).unwrap();
    }
}
