//! Installing and removing a table's change-feed triggers, and the channel
//! they notify on.

use crate::error::{OrmResult, ValidationError};
use crate::model::{qualified_table, quote_identifier, Model};
use crate::pg_client::PgClient;
use crate::GenericClient;

/// The version of the trigger functions this pgorm installs, kept at the
/// start of each function's comment. A different comment makes [`install`]
/// replace the function and its triggers.
pub const FEED_VERSION: &str = "pgorm change feed 5";

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

/// The largest payload, in bytes, that `pg_notify` accepts (PostgreSQL
/// refuses 8000 bytes and more).
const PAYLOAD_LIMIT: usize = 7999;

/// A key the trigger can send without any expression per row: a single
/// column of a type whose text has a known maximum width, so a fixed
/// number of keys always fits one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastKey {
    /// `smallint`, `integer` or `bigint`: a JSON number of at most 20
    /// characters (`bigint`'s widest, so a later `ALTER COLUMN TYPE`
    /// within the three never makes a payload too long).
    Integer,
    /// `uuid`: a JSON string of 36 characters.
    Uuid,
}

impl FastKey {
    /// The fast key for a column of type `type_oid`, if any.
    fn of(type_oid: u32) -> Option<FastKey> {
        match type_oid {
            // int8, int2, int4
            20 | 21 | 23 => Some(FastKey::Integer),
            2950 => Some(FastKey::Uuid),
            _ => None,
        }
    }

    /// The widest text of a value.
    fn width(self) -> usize {
        match self {
            FastKey::Integer => "-9223372036854775808".len(),
            FastKey::Uuid => 36,
        }
    }

    /// What goes around a value to make it JSON.
    fn quote(self) -> &'static str {
        match self {
            FastKey::Integer => "",
            FastKey::Uuid => "\"",
        }
    }

    /// The OIDs of the family's types (`int2`, `int4`, `int8`; `uuid`):
    /// before gathering the keys of a statement, the function checks that
    /// the column still has one of them (an `ALTER COLUMN TYPE` since
    /// `install` may have changed it), and takes the general path if not.
    fn type_oids(self) -> &'static str {
        match self {
            FastKey::Integer => "20, 21, 23",
            FastKey::Uuid => "2950",
        }
    }
}

/// Statements of more rows than this take the general path even with a
/// fast key: the fast path gathers a statement's keys into one array (a
/// few tens of MB at this size), and PostgreSQL refuses an array over
/// 1 GB, which about 2^26 keys would reach.
const MAX_FAST_ROWS: usize = 1_000_000;

/// How many keys one fast-path notification carries: as many as fit in
/// [`PAYLOAD_LIMIT`] bytes when every key is as wide as its type allows.
/// `name_bytes` is the length of the key column's name as a JSON string
/// (quotes included) in the server's encoding, which is what
/// `pg_notify`'s limit counts.
fn keys_per_notification(name_bytes: usize, fast: FastKey) -> usize {
    // `{"op":"I","keys":[` and `]}`.
    let frame = r#"{"op":"I","keys":[]}"#.len();
    // `{"id":` (quote) key (quote) `}` and a comma.
    let per_key = 1 + name_bytes + 1 + 2 * fast.quote().len() + fast.width() + 1 + 1;
    // The last key has no comma.
    (PAYLOAD_LIMIT - frame + 1) / per_key
}

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

/// The general path's SQL for each operation, for any key: each key is
/// rendered as JSON per row (`to_json`), and the payloads are chunked
/// where the running size of the keys passes a multiple of
/// [`KEY_BYTES_PER_NOTIFICATION`]. An UPDATE that changes a key sends the
/// old key as `D` and the new one as `I`. `channel` is an SQL literal.
struct GeneralPath {
    insert: String,
    delete: String,
    update: String,
}

fn general_path(channel: &str, keys: &[&str]) -> OrmResult<GeneralPath> {
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
    let update = format!(
        r#"SELECT count(*) INTO counted FROM (SELECT 1 FROM pgorm_new LIMIT {few_plus_one}) k;
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
        END IF;"#,
        few_plus_one = FEW + 1,
        few = FEW,
        fits = 2 * KEY_BYTES_PER_NOTIFICATION,
        chunked_update = chunked(&changed),
    );
    Ok(GeneralPath {
        insert: single("I", "pgorm_new")?,
        delete: single("D", "pgorm_old")?,
        update,
    })
}

/// A single key column that takes the fast path: its [`FastKey`] family,
/// and the length of its name as a JSON string in the server's encoding.
#[derive(Debug, Clone, Copy)]
struct FastColumn {
    key: FastKey,
    name_bytes: usize,
}

/// The table's own trigger function, with its channel and key columns
/// written into static SQL (so PL/pgSQL plans each query once per session).
/// It reads the transition tables once per statement; with a
/// [`FastColumn`] it takes the fast path ([`fast_path`]), with any other
/// key the general one ([`general_path`]). Both send the same
/// `{"op":"I|U|D","keys":[{...},...]}` payloads.
fn function_sql(
    function: &str,
    channel: &str,
    keys: &[&str],
    fast: Option<FastColumn>,
) -> OrmResult<String> {
    let channel = sql_literal(channel);
    let general = general_path(&channel, keys)?;
    let (insert, delete, update) = match (fast, keys) {
        (Some(fast), [column]) => fast_path(&channel, column, fast, &general)?,
        _ => (general.insert, general.delete, general.update),
    };
    let sql = format!(
        r#"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS {TAG_MARK}
DECLARE
    payload text;
    change_op text;
    counted bigint;
    fast boolean;
    single_key text;
    fits boolean := true;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify({channel}, '{{"op":"T","keys":[]}}');
    ELSIF TG_OP = 'INSERT' THEN
        {insert}
    ELSIF TG_OP = 'DELETE' THEN
        {delete}
    ELSE
        {update}
    END IF;
    RETURN NULL;
END
{TAG_MARK}"#
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

/// The fast path's SQL for INSERT, DELETE and UPDATE, for a single-column
/// [`FastKey`]: no expression per row, and the same payloads the general
/// path writes.
///
/// - A statement of one row (the common single-row write) costs a probe
///   for a second row, one plain `SELECT` of the key (one `to_json`) and
///   the `pg_notify`.
/// - A statement of more rows checks the column's type on one row, takes
///   the keys with one `array_agg` over the transition table and sends
///   them in slices of [`keys_per_notification`] keys, each rendered by
///   one `array_to_string`; up to one slice, the first (bounded) query
///   returns the payload itself.
/// - An UPDATE whose new keys equal its old ones, in order, changed no key
///   (every row is `U`) and needs no join.
///
/// An UPDATE that changes keys takes the general path, and so does every
/// statement of more than one row once the column's type has left the
/// key's family (an `ALTER COLUMN TYPE` since `install`) and every
/// statement of more than [`MAX_FAST_ROWS`] rows. Every column is read
/// through a table alias, so a key column named like one of the
/// function's variables (`payload`, `fast`, ...) stays unambiguous.
/// `channel` is an SQL literal.
fn fast_path(
    channel: &str,
    column: &str,
    fast: FastColumn,
    general: &GeneralPath,
) -> OrmResult<(String, String, String)> {
    let per = keys_per_notification(fast.name_bytes, fast.key);
    let name = serde_json::to_string(column).expect("a string serialises");
    let quote = fast.key.quote();
    let type_oids = fast.key.type_oids();
    let column = quote_identifier(column)?;
    let separator = sql_literal(&format!("{quote}}},{{{name}:{quote}"));
    let open = |op: &str| sql_literal(&format!(r#"{{"op":"{op}","keys":[{{{name}:{quote}"#));
    let close = sql_literal(&format!("{quote}}}]}}"));
    // A one-row statement: its key as `to_json` writes it (right for any
    // type, so no check of the type), sent if there is a row and
    // `unchanged` (an expression of `r` and `o`, if any) holds.
    let single = |op: &str, from: &str, unchanged: Option<&str>| {
        let open = sql_literal(&format!(r#"{{"op":"{op}","keys":[{{{name}:"#));
        let send = format!("PERFORM pg_notify({channel}, {open} || single_key || '}}]}}');");
        match unchanged {
            None => format!(
                r#"SELECT to_json(r.{column})::text INTO single_key FROM {from};
            IF FOUND THEN
                {send}
            END IF;
            RETURN NULL;"#
            ),
            Some(unchanged) => format!(
                r#"SELECT to_json(r.{column})::text, {unchanged} INTO single_key, fast FROM {from};
            IF NOT FOUND THEN
                RETURN NULL;
            ELSIF fast THEN
                {send}
                RETURN NULL;
            END IF;"#
            ),
        }
    };
    // Whether the column is still of the key's family, read off one row
    // before any key is gathered (an array column would pass a check of
    // the gathered keys' type, and fail to gather when its arrays differ
    // in size).
    let family = |table: &str| {
        format!(
            "SELECT pg_typeof(t.{column})::oid IN ({type_oids}) INTO fast FROM {table} t LIMIT 1;"
        )
    };
    // The row count (up to one more than a slice) and the first slice's
    // payload, and `also` INTO `fast` if given.
    let first = |op: &str, table: &str, also: Option<&str>| {
        format!(
            "SELECT count(*), {open} || array_to_string(array_agg(r.{column}), {separator}) || {close}{also} \
             INTO counted, payload{into} \
             FROM (SELECT t.{column} FROM {table} t LIMIT {limit}) r;",
            open = open(op),
            also = also.map(|also| format!(", {also}")).unwrap_or_default(),
            into = if also.is_some() { ", fast" } else { "" },
            limit = per + 1,
        )
    };
    // Every slice of the array column `keys` of the one-row `source` (s).
    let slices = |op: &str, keys: &str, source: &str| {
        format!(
            "PERFORM pg_notify({channel}, {open} || array_to_string(s.{keys}[g.i:g.i + {last}], {separator}) || {close}) \
             FROM {source} s, generate_series(1, cardinality(s.{keys}), {per}) AS g(i)",
            open = open(op),
            last = per - 1,
        )
    };
    // A query of the statement's keys as one array, `alias`, of at most one
    // more than MAX_FAST_ROWS (a statement with more sends nothing on the
    // fast path and takes the general one).
    let gathered = |table: &str, alias: &str| {
        format!(
            "SELECT array_agg(r.{column}) AS {alias} FROM (SELECT t.{column} FROM {table} t LIMIT {limit}) r",
            limit = MAX_FAST_ROWS + 1
        )
    };
    let insert_or_delete = |op: &str, table: &str, general: &str| {
        format!(
            r#"PERFORM FROM {table} OFFSET 1 LIMIT 1;
        IF NOT FOUND THEN
            {single}
        END IF;
        {family}
        IF fast THEN
            {first}
            IF counted <= {per} THEN
                PERFORM pg_notify({channel}, payload);
                RETURN NULL;
            END IF;
            {all} WHERE cardinality(s.keys) <= {MAX_FAST_ROWS};
            IF FOUND THEN
                RETURN NULL;
            END IF;
        END IF;
        -- The key left its family since install, or the statement is too
        -- large to gather its keys at once: the general path.
        {general}"#,
            single = single(op, &format!("{table} r"), None),
            family = family(table),
            first = first(op, table, None),
            all = slices(op, "keys", &format!("({})", gathered(table, "keys"))),
        )
    };
    let same_keys = format!(
        "array_agg(r.{column}) = \
         (SELECT array_agg(o.{column}) FROM (SELECT t.{column} FROM pgorm_old t LIMIT {limit}) o)",
        limit = per + 1
    );
    // OFFSET 0 keeps the subquery whole, so each array is built once.
    let all_updated = slices(
        "U",
        "new_keys",
        &format!(
            "(SELECT ({}) AS new_keys, ({}) AS old_keys OFFSET 0)",
            gathered("pgorm_new", "keys"),
            gathered("pgorm_old", "keys")
        ),
    );
    let update = format!(
        r#"PERFORM FROM pgorm_new OFFSET 1 LIMIT 1;
        IF NOT FOUND THEN
            {single}
        ELSE
            {family}
            IF fast THEN
                {first}
                IF fast AND counted <= {per} THEN
                    PERFORM pg_notify({channel}, payload);
                    RETURN NULL;
                ELSIF fast THEN
                    {all_updated} WHERE s.new_keys = s.old_keys AND cardinality(s.new_keys) <= {MAX_FAST_ROWS};
                    IF FOUND THEN
                        RETURN NULL;
                    END IF;
                END IF;
            END IF;
        END IF;
        -- Keys changed, the key left its family, or the statement is too
        -- large to gather its keys at once: the general path.
        {general}"#,
        single = single(
            "U",
            "pgorm_new r, pgorm_old o",
            Some(&format!("r.{column} = o.{column}"))
        ),
        family = family("pgorm_new"),
        first = first("U", "pgorm_new", Some(&same_keys)),
        general = general.update,
    );
    Ok((
        insert_or_delete("I", "pgorm_new", &general.insert),
        insert_or_delete("D", "pgorm_old", &general.delete),
        update,
    ))
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

/// What the function's comment says: the version, the key columns' types
/// as they were at install (the fast path depends on them), the channel,
/// the keys. Ends with [`comment_tail`], which every version writes.
fn function_comment(channel: &str, keys: &[&str], key_types: &[u32]) -> String {
    format!(
        "{FEED_VERSION}; key type OIDs {key_types:?}{}",
        comment_tail(channel, keys)
    )
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
    let tail = comment_tail(&feed.channel, M::KEY_COLUMNS);
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

/// The table, its channel and its schema-qualified function.
struct Feed {
    table: String,
    channel: String,
    function: String,
}

async fn feed_of<M: Model>(client: &impl GenericClient) -> OrmResult<Feed> {
    let (schema, table_name) = resolve_table::<M>(client).await?;
    let schema_quoted = quote_identifier(&schema)?;
    Ok(Feed {
        table: format!("{schema_quoted}.{}", quote_identifier(&table_name)?),
        channel: channel_name(&schema, &table_name),
        function: format!(
            "{schema_quoted}.{}",
            quote_identifier(&function_name(&table_name))?
        ),
    })
}

/// Whether the function with exactly this comment and all four triggers
/// calling it are on the table already.
async fn is_current(client: &impl GenericClient, feed: &Feed, comment: &str) -> OrmResult<bool> {
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _, _)| *name).collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_trigger t \
             WHERE t.tgrelid = $1::text::regclass AND t.tgname = ANY($2) \
               AND to_regprocedure($3 || '()') IS NOT NULL \
               AND t.tgfoid = to_regprocedure($3 || '()') \
               AND obj_description(t.tgfoid, 'pg_proc') = $4",
            &[&feed.table, &names, &feed.function, &comment],
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
/// The key columns' types are read here and recorded in the function's
/// comment: a single `smallint`, `integer`, `bigint` or `uuid` key gets
/// the fast path (see the [module docs](super)). After an
/// `ALTER COLUMN TYPE` of the key, the function still works (within the
/// integer types it keeps its fast path; to another type it takes the
/// general one, statement by statement), and the next `install` rewrites
/// it for the new type.
///
/// # Errors
/// [`OrmError::Query`](crate::OrmError::Query) when the table does not
/// exist or the role may not create triggers on it;
/// [`OrmError::Validation`](crate::OrmError::Validation) for names that
/// cannot be identifiers, for a key column the table lacks or that may be
/// NULL, and for a partitioned table, a partition, or a table with
/// inheritance children or parents (statement triggers fire only for the
/// table a statement names: writes through another table of the tree
/// would be lost silently).
pub async fn install<M: Model>(client: &PgClient) -> OrmResult<bool> {
    let tx = client.transaction().await?;
    let feed = feed_of::<M>(&tx).await?;
    lock(&tx, &feed).await?;
    refuse_partitioned(&tx, &feed).await?;
    let key_types = check_keys::<M>(&tx, &feed).await?;
    let comment = function_comment(&feed.channel, M::KEY_COLUMNS, &key_types);
    if is_current(&tx, &feed, &comment).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    let fast = match (key_types.as_slice(), M::KEY_COLUMNS) {
        ([type_oid], [column]) => match FastKey::of(*type_oid) {
            Some(key) => Some(FastColumn {
                key,
                name_bytes: server_length(
                    &tx,
                    &serde_json::to_string(column).expect("a string serialises"),
                )
                .await?,
            }),
            None => None,
        },
        _ => None,
    };
    let previous = trigger_functions(&tx, &feed).await?;
    tx.execute(
        &function_sql(&feed.function, &feed.channel, M::KEY_COLUMNS, fast)?,
        &[],
    )
    .await?;
    tx.execute(
        &format!(
            "COMMENT ON FUNCTION {}() IS {}",
            feed.function,
            sql_literal(&comment)
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
/// would make every write to the table fail in the trigger. Returns each
/// key column's type OID (not its name, which reads differently under
/// another `search_path`).
async fn check_keys<M: Model>(client: &impl GenericClient, feed: &Feed) -> OrmResult<Vec<u32>> {
    let mut types = Vec::with_capacity(M::KEY_COLUMNS.len());
    for column in M::KEY_COLUMNS {
        let row = client
            .query_opt(
                "SELECT a.attnotnull, a.atttypid FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attname = $2 \
                   AND a.attnum > 0 AND NOT a.attisdropped",
                &[&feed.table, column],
            )
            .await?;
        let problem = match row {
            None => "does not exist",
            Some(row) if !crate::model::decode_at::<bool>(&row, 0)? => "may be NULL",
            Some(row) => {
                types.push(crate::model::decode_at(&row, 1)?);
                continue;
            }
        };
        return Err(ValidationError::Setting {
            setting: "change feed",
            reason: format!("key column {column:?} of {} {problem}", feed.table),
        }
        .into());
    }
    Ok(types)
}

/// The length of `text` in bytes in the server's encoding, which is what
/// `pg_notify`'s payload limit counts.
async fn server_length(client: &impl GenericClient, text: &str) -> OrmResult<usize> {
    let row = client
        .query_one("SELECT octet_length($1::text)", &[&text])
        .await?;
    let length: i32 = crate::model::decode_at(&row, 0)?;
    Ok(usize::try_from(length).unwrap_or(usize::MAX))
}

/// Refuses a partitioned table, a partition, and a table with inheritance
/// children or parents: statement-level triggers fire only for the table
/// a statement names, so writes straight into a partition or child, or
/// through a parent, would never reach the feed.
async fn refuse_partitioned(client: &impl GenericClient, feed: &Feed) -> OrmResult<()> {
    let row = client
        .query_one(
            "SELECT c.relkind = 'p' OR c.relispartition \
                    OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid OR i.inhrelid = c.oid) \
             FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&feed.table],
        )
        .await?;
    let related: bool = crate::model::decode_at(&row, 0)?;
    if !related {
        return Ok(());
    }
    Err(ValidationError::Setting {
        setting: "change feed",
        reason: format!(
            "{} is partitioned, a partition, or in an inheritance tree; writes through \
             another table of the tree would not fire its statement triggers, so its \
             changes cannot all be seen",
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

    /// The widest payload a fast-path slice can make: every key as wide as
    /// its type allows.
    fn widest_payload(column: &str, fast: FastKey) -> String {
        let name = serde_json::to_string(column).unwrap();
        let quote = fast.quote();
        let key = format!("{{{name}:{quote}{}{quote}}}", "9".repeat(fast.width()));
        let keys = vec![key; keys_per_notification(name.len(), fast)];
        format!(r#"{{"op":"U","keys":[{}]}}"#, keys.join(","))
    }

    #[test]
    fn fast_path_slices_fill_but_never_pass_the_payload_limit() {
        let names = [
            "id".to_owned(),
            "i".to_owned(),
            "k".repeat(63),
            "\u{1}".repeat(63),
            "é".repeat(31),
        ];
        for fast in [FastKey::Integer, FastKey::Uuid] {
            for name in &names {
                let payload = widest_payload(name, fast);
                assert!(payload.len() <= PAYLOAD_LIMIT, "{fast:?} {name:?}");
                let name_json = serde_json::to_string(name).unwrap();
                let one_more = 1 + name_json.len() + 1 + 2 * fast.quote().len() + fast.width() + 2;
                assert!(
                    payload.len() + one_more > PAYLOAD_LIMIT,
                    "{fast:?} {name:?}: room for one more key"
                );
                serde_json::from_str::<serde_json::Value>(&payload).unwrap();
            }
        }
        assert_eq!(
            keys_per_notification(r#""id""#.len(), FastKey::Integer),
            285
        );
    }

    #[test]
    fn only_single_integer_and_uuid_keys_take_the_fast_path() {
        assert_eq!(FastKey::of(20), Some(FastKey::Integer));
        assert_eq!(FastKey::of(21), Some(FastKey::Integer));
        assert_eq!(FastKey::of(23), Some(FastKey::Integer));
        assert_eq!(FastKey::of(2950), Some(FastKey::Uuid));
        // text, numeric
        assert_eq!(FastKey::of(25), None);
        assert_eq!(FastKey::of(1700), None);
        let integer = Some(FastColumn {
            key: FastKey::Integer,
            name_bytes: 4,
        });
        let fast = function_sql("f", "c", &["id"], integer).unwrap();
        let general = function_sql("f", "c", &["id"], None).unwrap();
        assert!(fast.contains("array_to_string") && general.contains("to_json"));
        assert!(!general.contains("array_to_string"));
        // A composite key never does, whatever is asked.
        let composite = function_sql("f", "c", &["a", "b"], integer).unwrap();
        assert!(!composite.contains("array_to_string"));
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
