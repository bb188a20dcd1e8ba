//! Hostile review of feed version 5 (the fast path for one int2/int4/int8
//! or uuid key column): each `review_fast_N_…` test proves one finding
//! against the real server and fails on the reviewed code; the
//! `holds_…` tests are probes that pass and cover what the suite lacks.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use pgorm::changes::{self, Change, ChangeFeed};
use pgorm::listen::{ListenerEvent, PgListenerConfig, PgNotifyHub, Subscription};
use pgorm::model::{FromRow, Model};
use pgorm::{GenericClient, PgClient};
use support::*;

async fn hub_for(url: &str) -> PgNotifyHub {
    let config = PgListenerConfig::new()
        .application_name(unique("review_fast"))
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    within("hub", PgNotifyHub::connect_with(url, config))
        .await
        .unwrap()
}

/// A fresh database with `sql` run in it (statements split on `;`).
async fn connect(sql: &str) -> (String, PgClient, PgNotifyHub) {
    let url = fresh_database().await;
    let client = within("connect", PgClient::connect(&url)).await.unwrap();
    for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
        client.execute(statement, &[]).await.unwrap();
    }
    let hub = hub_for(&url).await;
    (url, client, hub)
}

/// The raw payloads received on `subscription` until `count` have come.
async fn raw_payloads(subscription: &mut Subscription, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    within("the raw notifications", async {
        while seen.len() < count {
            let event = subscription
                .next_batch()
                .await
                .expect("ended")
                .expect("failed");
            let ListenerEvent::Notification(batch) = event else {
                panic!("no gap expected here");
            };
            seen.extend(batch.iter().map(|n| n.payload.to_string()));
        }
    })
    .await;
    seen
}

// ---------------------------------------------------------------------
// Finding 1: a key column named like one of the function's PL/pgSQL
// variables (`payload`, `counted`, `fast`, `fits`, `single_key`,
// `change_op`, or the implicit `found`, `tg_op`, …) makes every
// multi-row write to the table fail: the fast path's
// `(SELECT "payload" FROM pgorm_new LIMIT 286)` names the column
// unqualified, and PL/pgSQL (variable_conflict = error) refuses the
// ambiguous reference. Quoting does not help. Version 4 qualified every
// column (`r."payload"`), so the same table worked before.

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "parcels")]
struct Parcel {
    #[orm(key)]
    payload: i64,
    label: String,
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "lost")]
struct Lost {
    #[orm(key)]
    found: i32,
    label: String,
}

#[tokio::test]
async fn review_fast_1_a_key_named_like_a_plpgsql_variable_does_not_break_multi_row_writes() {
    let (_url, client, hub) = connect(
        "CREATE TABLE parcels (payload bigint PRIMARY KEY, label text NOT NULL);
         CREATE TABLE lost (found integer PRIMARY KEY, label text NOT NULL)",
    )
    .await;
    assert!(changes::install::<Parcel>(&client).await.unwrap());
    assert!(changes::install::<Lost>(&client).await.unwrap());
    let mut feed = ChangeFeed::<Parcel, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    // A one-row statement works (its column is qualified)...
    client
        .execute("INSERT INTO parcels VALUES (1, 'one')", &[])
        .await
        .unwrap();
    // ...a statement of two rows fails in the trigger.
    let two = client
        .execute("INSERT INTO parcels VALUES (2, 'two'), (3, 'three')", &[])
        .await;
    assert!(
        two.is_ok(),
        "a two-row INSERT into a table keyed by `payload` failed: {:?}",
        two.err()
    );
    let seen = collect_until(&mut feed, |seen| seen.len() >= 3).await;
    let keys: BTreeSet<i64> = seen
        .iter()
        .map(|change| match change {
            Change::Inserted(row) => row.payload,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(keys, BTreeSet::from([1, 2, 3]));
    let lost = client
        .execute("INSERT INTO lost VALUES (1, 'a'), (2, 'b')", &[])
        .await;
    assert!(
        lost.is_ok(),
        "a two-row INSERT into a table keyed by `found` failed: {:?}",
        lost.err()
    );
}

// ---------------------------------------------------------------------
// Finding 2: the "key left its family" check,
// `pg_typeof(array_agg(key))::oid IN (1005, 1007, 1016)`, is true for a
// column of type `bigint[]` (or `int2[]`, `int4[]`, `uuid[]`): array_agg
// of arrays is a multidimensional array of the same type. After
// `ALTER COLUMN id TYPE bigint[]` the function keeps the fast path:
// `array_to_string` flattens the arrays, so a multi-row statement sends
// one key per element (`{"id":4},{"id":5}` for the key `{4,5}`), and keys
// of different lengths make `array_agg` raise "cannot accumulate arrays of
// different dimensionality": every such INSERT, UPDATE and DELETE fails.
// The docs promise that after a type change to any other type "writes
// keep working and every change arrives" (the general path's `to_json`
// writes `{"id":[4,5]}`).

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "items")]
struct Item {
    #[orm(key)]
    id: i64,
    label: String,
}

#[tokio::test]
async fn review_fast_2_an_array_key_after_alter_column_type_leaves_the_fast_path() {
    let (_url, client, hub) =
        connect("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)").await;
    assert!(changes::install::<Item>(&client).await.unwrap());
    client
        .execute(
            "ALTER TABLE items ALTER COLUMN id TYPE bigint[] USING ARRAY[id]",
            &[],
        )
        .await
        .unwrap();
    let mut raw = hub
        .subscribe(&changes::channel_name("public", "items"))
        .await
        .unwrap();

    // One row: `to_json`, right.
    client
        .execute("INSERT INTO items VALUES ('{1,2}', 'a')", &[])
        .await
        .unwrap();
    // Two rows of keys of the same length: written, but flattened.
    client
        .execute(
            "INSERT INTO items VALUES ('{4,5}', 'b'), ('{6,7}', 'c')",
            &[],
        )
        .await
        .unwrap();
    let payloads = raw_payloads(&mut raw, 2).await;
    assert_eq!(payloads[0], r#"{"op":"I","keys":[{"id":[1,2]}]}"#);
    assert_eq!(
        payloads[1], r#"{"op":"I","keys":[{"id":[4,5]},{"id":[6,7]}]}"#,
        "the keys of a two-row INSERT of bigint[] keys"
    );

    // Keys of different lengths: the write itself fails.
    let mixed = client
        .execute(
            "INSERT INTO items VALUES ('{8}', 'd'), ('{9,10}', 'e')",
            &[],
        )
        .await;
    assert!(
        mixed.is_ok(),
        "a two-row INSERT of bigint[] keys of different lengths failed: {:?}",
        mixed.err()
    );
}

// ---------------------------------------------------------------------
// Finding 3: `keys_per_notification` counts the key column's name in
// UTF-8 bytes (`name.len()`), but PostgreSQL's 8000-byte limit is on the
// payload in the *server's* encoding. In an EUC_TW database (a supported
// server encoding) a CJK character of CNS 11643 plane 2, e.g. 万 (U+4E07), is 3
// bytes in UTF-8 and 4 in EUC_TW: with a 15-character key column name
// (45 bytes in UTF-8, 60 in EUC_TW, under the 63-byte identifier limit)
// the slices are sized for 112 keys of 71 bytes but each is 86 bytes, so
// a slice of 112 ten-to-twenty digit keys is over 8000 bytes and the
// writing statement fails with "payload string too long". The general
// path measures with `octet_length` (server bytes) and has no such
// problem.

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "tw")]
struct Taiwan {
    #[orm(key, rename = "万万万万万万万万万万万万万万万")]
    id: i64,
    label: String,
}

#[tokio::test]
async fn review_fast_3_slices_fit_the_limit_in_a_non_utf8_server_encoding() {
    let admin = raw_client(&TestServer::shared().url()).await;
    let name = unique(&format!("euc_tw_{}", std::process::id()));
    admin
        .batch_execute(&format!(
            "CREATE DATABASE \"{name}\" ENCODING 'EUC_TW' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    let url = TestServer::shared().url_for(&name);
    let client = within("connect", PgClient::connect(&url)).await.unwrap();
    client
        .execute(
            r#"CREATE TABLE tw ("万万万万万万万万万万万万万万万" bigint PRIMARY KEY, label text NOT NULL)"#,
            &[],
        )
        .await
        .unwrap();
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(encoding, "EUC_TW");
    assert!(changes::install::<Taiwan>(&client).await.unwrap());
    let hub = hub_for(&url).await;
    let mut feed = ChangeFeed::<Taiwan, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let written = client
        .execute(
            "INSERT INTO tw SELECT -9223372036854775807 + n, 'x' FROM generate_series(0, 199) n",
            &[],
        )
        .await;
    assert!(
        written.is_ok(),
        "a 200-row INSERT into an EUC_TW table failed in the trigger: {:?}",
        written.err()
    );
    let seen = collect_until(&mut feed, |seen| seen.len() >= 200).await;
    assert_eq!(seen.len(), 200);
}

// ---------------------------------------------------------------------
// Finding 4: the comment that makes `install` idempotent now holds the
// key types as `format_type` writes them, which depends on the session's
// search_path for any type outside pg_catalog (a domain, an enum, an
// extension's `citext`): `app.code` from one session, `code` from another.
// Two applications (or a migration tool and the application) with
// different search_paths each see "a different comment" and rewrite the
// function and drop and recreate the four triggers at every `install`,
// although nothing changed; the docs promise `false` and "nothing
// changes". Version 4's comment had no types and did not depend on it.

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "coded")]
struct Coded {
    #[orm(key)]
    id: i64,
    label: String,
}

#[tokio::test]
async fn review_fast_4_install_is_idempotent_whatever_the_search_path() {
    let (url, client, _hub) = connect(
        "CREATE SCHEMA app;
         CREATE DOMAIN app.code AS bigint;
         CREATE TABLE coded (id app.code PRIMARY KEY, label text NOT NULL)",
    )
    .await;
    let with_app = format!("{url}?options=-c%20search_path%3Dpublic,app");
    let other = within("connect", PgClient::connect(&with_app))
        .await
        .unwrap();
    let path: String = other
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path.replace(" ", ""), "public,app");
    assert!(changes::install::<Coded>(&client).await.unwrap());
    assert!(!changes::install::<Coded>(&client).await.unwrap());
    let oids = |client: PgClient| async move {
        client
            .query(
                "SELECT oid::int8 FROM pg_trigger WHERE tgrelid = 'public.coded'::regclass ORDER BY tgname",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, i64>(0))
            .collect::<Vec<_>>()
    };
    let before = oids(client.clone()).await;
    let replaced = changes::install::<Coded>(&other).await.unwrap();
    assert_eq!(
        oids(client.clone()).await,
        before,
        "the triggers were recreated"
    );
    assert!(
        !replaced,
        "install from a session with another search_path replaced an up-to-date feed"
    );
}

// ---------------------------------------------------------------------
// Finding 5: a multi-row statement of more than 2^26 = 67,108,864 rows
// fails. The fast path builds one `array_agg` of *every* key of the
// transition table (the slices query; an UPDATE builds two), and
// array_agg's state doubles its Datum array: at 2^27 Datums it asks for
// 1 GiB, over PostgreSQL's 1 GiB - 1 allocation limit ("invalid memory
// alloc request size 1073741824"). Version 4 cut chunks with a window
// function and `string_agg` per chunk, which spills to disk and has no
// such ceiling, so such bulk statements (a backfill, `DELETE FROM` a big
// table) worked with the triggers installed; now they fail. (This test
// writes 67,108,865 one-column rows to an unlogged table: about 50 s.)

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "huge")]
struct Huge {
    #[orm(key)]
    id: i64,
}

/// The fast path gathers a statement's keys into one array; above
/// 1,000,000 rows (`MAX_FAST_ROWS`) it leaves the statement to the general
/// path, which builds one chunk at a time. (The review's own test wrote
/// 2^26 + 1 rows, about 45 s here; it passes since the fix, and this one
/// checks the boundary in a few seconds.)
#[tokio::test]
async fn review_fast_5_a_statement_past_the_fast_paths_row_limit_is_written_and_every_key_arrives()
{
    let (_url, client, hub) = connect("CREATE UNLOGGED TABLE huge (id bigint NOT NULL)").await;
    assert!(changes::install::<Huge>(&client).await.unwrap());
    let channel = changes::channel_name("public", "huge");
    let mut subscription = hub.subscribe(&channel).await.unwrap();
    let rows: i64 = 1_000_001;
    within(
        "the INSERT",
        client.execute(
            "INSERT INTO huge SELECT generate_series(1, $1::int8)",
            &[&rows],
        ),
    )
    .await
    .expect("the INSERT of 1,000,001 rows failed in the trigger");
    let mut keys = BTreeSet::new();
    let mut notifications = 0;
    within("every key", async {
        while keys.len() < rows as usize {
            let ListenerEvent::Notification(batch) = subscription
                .next_batch()
                .await
                .expect("ended")
                .expect("failed")
            else {
                panic!("no gap expected here");
            };
            for notification in batch.iter() {
                assert!(notification.payload.len() < 8000);
                notifications += 1;
                let payload: serde_json::Value =
                    serde_json::from_str(&notification.payload).unwrap();
                assert_eq!(payload["op"], "I");
                for key in payload["keys"].as_array().unwrap() {
                    assert!(keys.insert(key["id"].as_i64().unwrap()), "{key} twice");
                }
            }
        }
    })
    .await;
    assert_eq!(keys.len(), rows as usize);
    assert_eq!(keys.last(), Some(&rows));
    assert!(notifications > 1);
}

// ---------------------------------------------------------------------
// Probes that hold.

/// Runs `sql` and checks that its changes are exactly `expected`.
async fn step(
    client: &PgClient,
    feed: &mut ChangeFeed<Item, PgClient>,
    sql: &str,
    mut expected: Vec<(char, i64)>,
) {
    client.execute(sql, &[]).await.unwrap();
    expected.sort();
    let seen = collect_until(feed, |seen| seen.len() >= expected.len()).await;
    assert_eq!(kinds(&seen), expected, "{sql}");
}

/// The kinds and keys of `changes` (`I`, `U` or `D` and the id), sorted.
fn kinds(changes: &[Change<Item>]) -> Vec<(char, i64)> {
    let mut seen: Vec<(char, i64)> = changes
        .iter()
        .map(|change| match change {
            Change::Inserted(row) => ('I', row.id),
            Change::Updated(row) => ('U', row.id),
            Change::Deleted(id) => ('D', *id),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    seen.sort();
    seen
}

/// The "no key changed" test of the fast path (old and new key arrays
/// equal) against statements that change keys in ways an array equality
/// could miss: a swap of two keys, a change of one key beyond the first
/// slice (only the full-array check sees it), a one-row key change,
/// `UPDATE … FROM` with every row matched twice, and upserts with and
/// without a key change, on both sides of the slice size (285).
#[tokio::test]
async fn holds_key_changes_are_never_taken_for_plain_updates() {
    let (_url, client, hub) = connect(
        "CREATE TABLE items (id bigint PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE, label text NOT NULL)",
    )
    .await;
    assert!(changes::install::<Item>(&client).await.unwrap());
    let mut feed = ChangeFeed::<Item, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let range = |kind: char, ids: std::ops::RangeInclusive<i64>| -> Vec<(char, i64)> {
        ids.map(|id| (kind, id)).collect()
    };
    step(
        &client,
        &mut feed,
        "INSERT INTO items SELECT n, 'a' FROM generate_series(1, 600) n",
        range('I', 1..=600),
    )
    .await;
    // Swap 1 and 2 (two rows: the first query's path).
    step(
        &client,
        &mut feed,
        "UPDATE items SET id = 3 - id, label = 'swapped' WHERE id IN (1, 2)",
        vec![('U', 1), ('U', 2)],
    )
    .await;
    // Swap every pair of 600 rows (the slices' path).
    step(
        &client,
        &mut feed,
        "UPDATE items SET id = CASE WHEN id % 2 = 1 THEN id + 1 ELSE id - 1 END",
        range('U', 1..=600),
    )
    .await;
    // Only the last row's key changes, beyond the first 286.
    let mut last = range('U', 1..=599);
    last.extend([('D', 600), ('I', 100_000)]);
    step(
        &client,
        &mut feed,
        "UPDATE items SET id = CASE WHEN id = 600 THEN 100000 ELSE id END, label = 'p'",
        last,
    )
    .await;
    // One row, key changed.
    step(
        &client,
        &mut feed,
        "UPDATE items SET id = 600 WHERE id = 100000",
        vec![('D', 100_000), ('I', 600)],
    )
    .await;
    // Every row matched twice by the FROM: each is updated once.
    step(
        &client,
        &mut feed,
        "UPDATE items SET label = 'twice' FROM generate_series(1, 2) g WHERE items.id <= 300",
        range('U', 1..=300),
    )
    .await;
    // Upserts: 300 conflicts without a key change, then 300 with one.
    // (ON CONFLICT needs an arbiter that is not deferrable.)
    client
        .execute(
            "ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (id)",
            &[],
        )
        .await
        .unwrap();
    step(
        &client,
        &mut feed,
        "INSERT INTO items SELECT n, 'up' FROM generate_series(1, 300) n \
         ON CONFLICT (id) DO UPDATE SET label = 'upserted'",
        range('U', 1..=300),
    )
    .await;
    let mut moved = range('D', 1..=300);
    moved.extend(range('I', 10_001..=10_300));
    step(
        &client,
        &mut feed,
        "INSERT INTO items SELECT n, 'up' FROM generate_series(1, 300) n \
         ON CONFLICT (id) DO UPDATE SET id = excluded.id + 10000",
        moved,
    )
    .await;
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "odd names")]
struct OddName {
    #[orm(key, rename = "sel\"ect\\é")]
    id: i64,
    label: String,
}

/// Slices filled to the byte with the widest `bigint` keys, under a key
/// column name whose byte length, JSON-escaped length and quoted length
/// all differ (`"`, `\`, `é`), written by a session with
/// `standard_conforming_strings = off`: every payload is under 8000 bytes
/// and valid JSON, and every key arrives once, at 285, 286 and 571 rows.
#[tokio::test]
async fn holds_full_slices_with_an_odd_key_name_and_backslash_escapes() {
    let url = fresh_database().await;
    let url_off = format!("{url}?options=-c%20standard_conforming_strings%3Doff");
    let client = within("connect", PgClient::connect(&url_off))
        .await
        .unwrap();
    let setting: String = client
        .query_one("SHOW standard_conforming_strings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "off");
    client
        .execute(
            r#"CREATE TABLE "odd names" ("sel""ect\é" bigint PRIMARY KEY, label text NOT NULL)"#,
            &[],
        )
        .await
        .unwrap();
    assert!(changes::install::<OddName>(&client).await.unwrap());
    let hub = hub_for(&url).await;
    let mut feed = ChangeFeed::<OddName, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let mut raw = hub.subscribe(feed.channel()).await.unwrap();
    let mut from = 0_i64;
    let mut notifications = 0;
    for rows in [285_i64, 286, 571] {
        client
            .execute(
                "INSERT INTO \"odd names\" SELECT -9223372036854775807 - 1 + n, 'x' \
                 FROM generate_series($1::int8, $1::int8 + $2::int8 - 1) n",
                &[&from, &rows],
            )
            .await
            .unwrap();
        let seen = collect_until(&mut feed, |seen| seen.len() >= rows as usize).await;
        let ids: BTreeSet<i64> = seen
            .iter()
            .map(|change| match change {
                Change::Inserted(row) => row.id,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, (from..from + rows).map(|n| i64::MIN + n).collect());
        from += rows;
        notifications += (rows as usize).div_ceil(changes_per_slice());
    }
    let payloads = raw_payloads(&mut raw, notifications).await;
    assert_eq!(payloads.len(), notifications);
    let mut widest = 0;
    for payload in &payloads {
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        let value: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert!(value["keys"][0]["sel\"ect\\é"].is_i64(), "{payload}");
        widest = widest.max(payload.len());
    }
    // Filled: no room for one more key of this width.
    assert!(widest + 36 > 7999, "widest payload {widest} bytes");
}

/// Keys per fast-path notification for `odd names`: `{"sel\"ect\\é":`,
/// 20 digits, `}` and a comma per key, in 7,980 bytes.
fn changes_per_slice() -> usize {
    let per_key = 1 + serde_json::to_string("sel\"ect\\é").unwrap().len() + 1 + 20 + 2;
    7980 / per_key
}

/// PL/pgSQL's cached plans of the fast path do not outlive an
/// `ALTER COLUMN TYPE` made by another session: a writer whose session
/// planned every query for `integer` keys sends the right keys after the
/// column becomes `bigint` (values past 2^32 are not truncated), then
/// `text` (the general path), then `uuid`, on one-row and multi-row
/// statements of every kind.
#[tokio::test]
async fn holds_plans_cached_by_a_writer_follow_another_sessions_alter_column_type() {
    let (url, admin, hub) =
        connect("CREATE TABLE items (id integer PRIMARY KEY, label text NOT NULL)").await;
    assert!(changes::install::<Item>(&admin).await.unwrap());
    let mut raw = hub
        .subscribe(&changes::channel_name("public", "items"))
        .await
        .unwrap();
    let writer = raw_client(&url).await;
    let statements = [
        "INSERT INTO items VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO items VALUES (3, 'c')",
        "UPDATE items SET label = 'd'",
        "UPDATE items SET label = 'e' WHERE id = 1",
        "DELETE FROM items WHERE id IN (2, 3)",
        "DELETE FROM items",
    ];
    for sql in statements {
        writer.batch_execute(sql).await.unwrap();
    }
    assert_eq!(raw_payloads(&mut raw, statements.len()).await.len(), 6);
    let round = |values: [&'static str; 3]| {
        let [a, b, c] = values;
        (
            vec![
                format!("INSERT INTO items VALUES ({a}, 'a'), ({b}, 'b')"),
                format!("INSERT INTO items VALUES ({c}, 'c')"),
                "UPDATE items SET label = 'd'".to_owned(),
                format!("UPDATE items SET label = 'f' WHERE id = {c}"),
                format!("DELETE FROM items WHERE id IN ({a}, {b})"),
                "DELETE FROM items".to_owned(),
            ],
            [a, b, c].map(|v| v.trim_matches('\'').to_owned()),
        )
    };
    for (alter, values, quote) in [
        ("bigint", ["4294967297", "4294967298", "-4294967299"], ""),
        ("text", ["'x\"1'", "'y'", "'z'"], "\""),
        (
            "uuid USING md5(id)::uuid",
            [
                "'00000000-0000-0000-0000-000000000001'",
                "'00000000-0000-0000-0000-000000000002'",
                "'00000000-0000-0000-0000-000000000003'",
            ],
            "\"",
        ),
    ] {
        admin
            .execute(
                &format!("ALTER TABLE items ALTER COLUMN id TYPE {alter}"),
                &[],
            )
            .await
            .unwrap();
        let (sql, keys) = round(values);
        for statement in &sql {
            writer.batch_execute(statement).await.unwrap();
        }
        let key = |k: &str| format!("{{\"id\":{quote}{}{quote}}}", k.replace('"', "\\\""));
        let expected = [
            format!(
                r#"{{"op":"I","keys":[{},{}]}}"#,
                key(&keys[0]),
                key(&keys[1])
            ),
            format!(r#"{{"op":"I","keys":[{}]}}"#, key(&keys[2])),
            format!(
                r#"{{"op":"U","keys":[{},{},{}]}}"#,
                key(&keys[0]),
                key(&keys[1]),
                key(&keys[2])
            ),
            format!(r#"{{"op":"U","keys":[{}]}}"#, key(&keys[2])),
            format!(
                r#"{{"op":"D","keys":[{},{}]}}"#,
                key(&keys[0]),
                key(&keys[1])
            ),
            format!(r#"{{"op":"D","keys":[{}]}}"#, key(&keys[2])),
        ];
        assert_eq!(raw_payloads(&mut raw, 6).await, expected, "after {alter}");
    }
}

// ---------------------------------------------------------------------
// Finding 6 (older than this change, in the same install code): install
// refuses a partitioned table or one with inheritance children, but not
// a table that *is* a partition (or an inheritance child). A write
// through the parent (`INSERT INTO parent` routed to the partition,
// `UPDATE parent`, `DELETE FROM parent`) fires only the parent's
// statement triggers, so the partition's feed never hears of it: changes
// lost silently, no Resync. The docs give the same reason for refusing
// parents.

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "part")]
struct Part {
    #[orm(key)]
    id: i64,
    label: String,
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "child")]
struct Child {
    #[orm(key)]
    id: i64,
    label: String,
}

/// Statement triggers fire only for the table a statement names: a feed on
/// a partition or an inheritance child would miss every write made
/// through its parent, so `install` refuses both with a typed error.
#[tokio::test]
async fn review_fast_6_a_partition_or_an_inheritance_child_is_refused() {
    let (_url, client, _hub) = connect(
        "CREATE TABLE whole (id bigint NOT NULL, label text NOT NULL) PARTITION BY RANGE (id);
         CREATE TABLE part PARTITION OF whole (PRIMARY KEY (id)) FOR VALUES FROM (0) TO (1000);
         CREATE TABLE parent (id bigint NOT NULL, label text NOT NULL);
         CREATE TABLE child (PRIMARY KEY (id)) INHERITS (parent)",
    )
    .await;
    for error in [
        changes::install::<Part>(&client).await.unwrap_err(),
        changes::install::<Child>(&client).await.unwrap_err(),
    ] {
        assert!(
            matches!(error, pgorm::OrmError::Validation(_)),
            "refused with a typed error, got {error:?}"
        );
    }
    let triggers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgorm_changes_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "nothing was installed");
}
