//! Installing and removing a table's change-feed triggers, and the channel
//! they notify on.

use crate::error::OrmResult;
use crate::model::{qualified_table, quote_identifier, Model};
use crate::pg_client::PgClient;
use crate::GenericClient;

/// The version of the trigger function this pgorm installs, kept in the
/// function's comment. A different comment makes [`install`] replace it.
pub const FEED_VERSION: &str = "pgorm change feed 1";

/// The trigger function's name, in the table's schema.
const FUNCTION: &str = "pgorm_change_feed";

/// The three statement-level triggers, by operation.
const TRIGGERS: [(&str, &str, &str); 3] = [
    ("pgorm_changes_insert", "INSERT", "NEW TABLE AS pgorm_new"),
    (
        "pgorm_changes_update",
        "UPDATE",
        "OLD TABLE AS pgorm_old NEW TABLE AS pgorm_new",
    ),
    ("pgorm_changes_delete", "DELETE", "OLD TABLE AS pgorm_old"),
];

/// How many bytes of keys (as JSON, with separators) one notification
/// carries at most before its last key; with keys of at most this size the
/// payload stays under 8000 bytes.
pub const KEY_BYTES_PER_NOTIFICATION: usize = 3900;

/// The trigger function. Arguments: the channel, then the key columns. It
/// reads the transition tables once per statement and sends
/// `{"op":"I|U|D","keys":[{...},...]}` chunks: the keys of one operation,
/// in order, cut into runs whose keys start within
/// [`KEY_BYTES_PER_NOTIFICATION`] bytes. An UPDATE that changes a key sends
/// the old key as `D` and the new one as `I`.
fn function_sql(schema: &str) -> OrmResult<String> {
    Ok(format!(
        r#"CREATE OR REPLACE FUNCTION {schema}.{FUNCTION}() RETURNS trigger
LANGUAGE plpgsql AS $pgorm$
DECLARE
    keys text;
    changed text;
    payload text;
BEGIN
    SELECT string_agg(quote_ident(TG_ARGV[i]), ', ' ORDER BY i) INTO keys
    FROM generate_series(1, TG_NARGS - 1) AS i;
    IF TG_OP = 'INSERT' THEN
        changed := format('SELECT ''I'' AS op, row_to_json(k)::text AS key FROM (SELECT %s FROM pgorm_new) k', keys);
    ELSIF TG_OP = 'DELETE' THEN
        changed := format('SELECT ''D'' AS op, row_to_json(k)::text AS key FROM (SELECT %s FROM pgorm_old) k', keys);
    ELSE
        changed := format(
            'SELECT CASE WHEN o.key IS NULL THEN ''I'' WHEN n.key IS NULL THEN ''D'' ELSE ''U'' END AS op, '
            'coalesce(n.key, o.key) AS key '
            'FROM (SELECT row_to_json(k)::text AS key FROM (SELECT %1$s FROM pgorm_new) k) n '
            'FULL JOIN (SELECT row_to_json(k)::text AS key FROM (SELECT %1$s FROM pgorm_old) k) o ON n.key = o.key',
            keys);
    END IF;
    FOR payload IN EXECUTE format(
        'SELECT ''{{"op":"'' || op || ''","keys":['' || string_agg(key, '','' ORDER BY n) || '']}}'' '
        'FROM (SELECT op, key, n, (sum(octet_length(key) + 1) OVER (PARTITION BY op ORDER BY n) '
        '                          - octet_length(key) - 1) / {KEY_BYTES_PER_NOTIFICATION} AS chunk '
        '      FROM (SELECT op, key, row_number() OVER () AS n FROM (%s) changed) numbered) chunked '
        'GROUP BY op, chunk ORDER BY min(n)',
        changed)
    LOOP
        PERFORM pg_notify(TG_ARGV[0], payload);
    END LOOP;
    RETURN NULL;
END
$pgorm$"#,
        schema = quote_identifier(schema)?,
    ))
}

/// The channel a table's feed notifies on: `pgorm_changes:schema.table`,
/// or, when that is longer than PostgreSQL's 63-byte limit, its first bytes
/// followed by `#` and a 16-digit hash of the whole name, so two long names
/// never share a channel by truncation.
pub fn channel_name(schema: &str, table: &str) -> String {
    let full = format!("pgorm_changes:{schema}.{table}");
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

/// Whether the current function and all three triggers, with these
/// arguments, are on the table already.
async fn is_current(
    client: &impl GenericClient,
    table: &str,
    schema: &str,
    args: &[String],
) -> OrmResult<bool> {
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _, _)| *name).collect();
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_trigger t \
             JOIN pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE t.tgrelid = $1::text::regclass AND t.tgname = ANY($2) \
               AND p.proname = $3 AND n.nspname = $4 \
               AND obj_description(p.oid, 'pg_proc') = $5 \
               AND t.tgargs = (SELECT string_agg(convert_to(a, 'UTF8') || '\\x00'::bytea, ''::bytea ORDER BY o) \
                               FROM unnest($6::text[]) WITH ORDINALITY AS u(a, o))",
            &[&table, &names, &FUNCTION, &schema, &FEED_VERSION, &args],
        )
        .await?;
    let count: i64 = row.get(0);
    Ok(count == TRIGGERS.len() as i64)
}

/// Installs the change feed of `M`'s table: the trigger function (in the
/// table's schema, versioned by [`FEED_VERSION`] in its comment) and three
/// statement-level `AFTER INSERT/UPDATE/DELETE` triggers with transition
/// tables, so a statement sends one notification per chunk of keys, not
/// one per row. Runs in one transaction under an advisory lock.
///
/// Returns `false` when the current feed was installed already (nothing is
/// changed), `true` when it installed or upgraded it.
///
/// Keys must be at most [`KEY_BYTES_PER_NOTIFICATION`] bytes as JSON; a
/// larger one makes the writing statement fail (never a lost change).
///
/// # Errors
/// [`OrmError::Query`] when the table does not exist or the role may not
/// create triggers on it; [`OrmError::Validation`] for names that cannot
/// be identifiers.
pub async fn install<M: Model>(client: &PgClient) -> OrmResult<bool> {
    let tx = client.transaction().await?;
    let (schema, table_name) = resolve_table::<M>(&tx).await?;
    let table = format!(
        "{}.{}",
        quote_identifier(&schema)?,
        quote_identifier(&table_name)?
    );
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgorm change feed'), hashtext($1))",
        &[&table],
    )
    .await?;
    let mut args = vec![channel_name(&schema, &table_name)];
    args.extend(M::KEY_COLUMNS.iter().map(|c| (*c).to_owned()));
    if is_current(&tx, &table, &schema, &args).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.execute(&function_sql(&schema)?, &[]).await?;
    let function = format!("{}.{FUNCTION}", quote_identifier(&schema)?);
    let comment = format!("COMMENT ON FUNCTION {function}() IS '{FEED_VERSION}'");
    tx.execute(&comment, &[]).await?;
    for (name, operation, referencing) in TRIGGERS {
        tx.execute(&format!("DROP TRIGGER IF EXISTS {name} ON {table}"), &[])
            .await?;
        // The arguments are quoted as literals by the server.
        let row = tx
            .query_one(
                "SELECT string_agg(quote_literal(a), ', ' ORDER BY o) \
                 FROM unnest($1::text[]) WITH ORDINALITY AS u(a, o)",
                &[&args],
            )
            .await?;
        let literals: String = row.get(0);
        tx.execute(
            &format!(
                "CREATE TRIGGER {name} AFTER {operation} ON {table} \
                 REFERENCING {referencing} FOR EACH STATEMENT \
                 EXECUTE FUNCTION {function}({literals})"
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Removes the feed's triggers from `M`'s table (the shared trigger
/// function stays, other tables of the schema may use it). Returns whether
/// there was anything to remove.
///
/// # Errors
/// As [`install`].
pub async fn uninstall<M: Model>(client: &PgClient) -> OrmResult<bool> {
    let tx = client.transaction().await?;
    let (schema, table_name) = resolve_table::<M>(&tx).await?;
    let table = format!(
        "{}.{}",
        quote_identifier(&schema)?,
        quote_identifier(&table_name)?
    );
    let names: Vec<&str> = TRIGGERS.iter().map(|(name, _, _)| *name).collect();
    let present: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::text::regclass AND tgname = ANY($2)",
            &[&table, &names],
        )
        .await?
        .get(0);
    for name in names {
        tx.execute(&format!("DROP TRIGGER IF EXISTS {name} ON {table}"), &[])
            .await?;
    }
    tx.commit().await?;
    Ok(present > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_make_a_readable_channel() {
        assert_eq!(channel_name("public", "users"), "pgorm_changes:public.users");
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
