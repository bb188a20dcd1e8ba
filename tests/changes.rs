//! Change feeds against the real server: install/uninstall, typed changes
//! of single-row and bulk statements, resync on a backend kill and on a
//! queue overflow, long table names.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgorm::changes::{self, Change, ChangeFeed};
use pgorm::listen::{PgListenerConfig, PgNotifyHub, QueuePolicy};
use pgorm::model::{FromRow, Model, ModelExt};
use pgorm::{GenericClient, PgClient};
use support::*;

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "items")]
struct Item {
    #[orm(key)]
    id: i64,
    label: String,
}

type Feed = ChangeFeed<Item, PgClient>;

struct Setup {
    url: String,
    client: PgClient,
    hub: PgNotifyHub,
    name: String,
}

async fn setup() -> Setup {
    let url = fresh_database().await;
    let client = within("connect", PgClient::connect(&url)).await.unwrap();
    client
        .execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)",
            &[],
        )
        .await
        .unwrap();
    assert!(changes::install::<Item>(&client).await.unwrap());
    let name = unique("changes_app");
    let config = PgListenerConfig::new()
        .application_name(&name)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let hub = within("hub", PgNotifyHub::connect_with(&url, config))
        .await
        .unwrap();
    Setup {
        url,
        client,
        hub,
        name,
    }
}

async fn next_change(feed: &mut Feed) -> Change<Item> {
    within("the next change", feed.next())
        .await
        .expect("the feed ended")
        .expect("the feed failed")
}

#[tokio::test]
async fn installing_twice_changes_nothing_and_uninstall_leaves_no_trigger() {
    let setup = setup().await;
    let triggers = |client: PgClient| async move {
        client
            .query(
                "SELECT oid::int8, tgname::text FROM pg_trigger WHERE tgrelid = 'items'::regclass ORDER BY tgname",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get::<_, i64>(0), row.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let before = triggers(setup.client.clone()).await;
    assert_eq!(before.len(), 4);
    assert!(!changes::install::<Item>(&setup.client).await.unwrap());
    assert_eq!(
        triggers(setup.client.clone()).await,
        before,
        "the same triggers"
    );
    let comment: String = setup
        .client
        .query_one(
            "SELECT obj_description(tgfoid, 'pg_proc') FROM pg_trigger \
             WHERE tgrelid = 'items'::regclass LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(comment.starts_with(changes::FEED_VERSION), "{comment}");
    let functions = |client: PgClient| async move {
        client
            .query_one(
                "SELECT count(*) FROM pg_proc WHERE proname LIKE 'pgorm\\_changes\\_%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(functions(setup.client.clone()).await, 1);

    assert!(changes::uninstall::<Item>(&setup.client).await.unwrap());
    assert!(triggers(setup.client.clone()).await.is_empty());
    assert_eq!(
        functions(setup.client.clone()).await,
        0,
        "the function is gone too"
    );
    assert!(!changes::uninstall::<Item>(&setup.client).await.unwrap());

    // An older version is replaced by install.
    assert!(changes::install::<Item>(&setup.client).await.unwrap());
    let sql: String = setup
        .client
        .query_one(
            "SELECT format('COMMENT ON FUNCTION %s IS %L', tgfoid::regprocedure, 'pgorm change feed 0') \
             FROM pg_trigger WHERE tgrelid = 'items'::regclass LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    setup.client.execute(&sql, &[]).await.unwrap();
    assert!(changes::install::<Item>(&setup.client).await.unwrap());
    assert!(!changes::install::<Item>(&setup.client).await.unwrap());
    assert_eq!(triggers(setup.client.clone()).await.len(), 4);
}

#[tokio::test]
async fn single_row_statements_deliver_inserted_updated_and_deleted() {
    let setup = setup().await;
    let mut feed = Feed::subscribe(&setup.hub, setup.client.clone())
        .await
        .unwrap();
    let tea = Item {
        id: 1,
        label: "tea".into(),
    };
    setup.client.insert(&tea).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Inserted(tea.clone()));
    let green = Item {
        id: 1,
        label: "green tea".into(),
    };
    setup.client.update(&green).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Updated(green.clone()));
    setup.client.delete(&green).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Deleted(1));
}

#[tokio::test]
async fn bulk_statements_of_ten_thousand_rows_deliver_exactly_their_changes() {
    let setup = setup().await;
    let mut feed = Feed::subscribe(&setup.hub, setup.client.clone())
        .await
        .unwrap();
    let count = 10_000;
    setup
        .client
        .execute(
            "INSERT INTO items SELECT n, 'row ' || n FROM generate_series(1, $1::int8) n",
            &[&count],
        )
        .await
        .unwrap();
    let inserted = collect_until(&mut feed, |seen| seen.len() >= count as usize).await;
    let mut ids = BTreeSet::new();
    for change in &inserted {
        match change {
            Change::Inserted(item) => {
                assert_eq!(item.label, format!("row {}", item.id));
                assert!(ids.insert(item.id), "each row once");
            }
            other => panic!("expected only inserts, got {other:?}"),
        }
    }
    assert_eq!(ids, (1..=count).collect());
    let notifications = feed.stats().received;
    assert!(
        notifications * 100 < count as u64,
        "one notification per chunk, not per row: {notifications}"
    );

    setup
        .client
        .execute("UPDATE items SET label = 'new ' || id", &[])
        .await
        .unwrap();
    let updated = collect_until(&mut feed, |seen| seen.len() >= count as usize).await;
    let mut ids = BTreeSet::new();
    for change in &updated {
        match change {
            Change::Updated(item) => {
                assert_eq!(item.label, format!("new {}", item.id));
                assert!(ids.insert(item.id));
            }
            other => panic!("expected only updates, got {other:?}"),
        }
    }
    assert_eq!(ids.len(), count as usize);

    setup
        .client
        .execute("DELETE FROM items", &[])
        .await
        .unwrap();
    let deleted = collect_until(&mut feed, |seen| seen.len() >= count as usize).await;
    let ids: BTreeSet<i64> = deleted
        .iter()
        .map(|change| match change {
            Change::Deleted(id) => *id,
            other => panic!("expected only deletes, got {other:?}"),
        })
        .collect();
    assert_eq!(ids, (1..=count).collect());
}

#[tokio::test]
async fn an_update_that_changes_the_key_is_a_delete_and_an_insert() {
    let setup = setup().await;
    let mut feed = Feed::subscribe(&setup.hub, setup.client.clone())
        .await
        .unwrap();
    setup
        .client
        .execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')", &[])
        .await
        .unwrap();
    collect_until(&mut feed, |seen| seen.len() >= 2).await;
    setup
        .client
        .execute("UPDATE items SET id = id + 10 WHERE id = 1", &[])
        .await
        .unwrap();
    let changes = collect_until(&mut feed, |seen| seen.len() >= 2).await;
    assert!(changes.contains(&Change::Deleted(1)), "{changes:?}");
    assert!(
        changes.contains(&Change::Inserted(Item {
            id: 11,
            label: "a".into()
        })),
        "{changes:?}"
    );
    assert_eq!(changes.len(), 2);
}

#[tokio::test]
async fn a_row_updated_then_deleted_before_the_fetch_comes_out_deleted_and_in_order() {
    let setup = setup().await;
    let mut feed = Feed::subscribe(&setup.hub, setup.client.clone())
        .await
        .unwrap();
    setup
        .client
        .execute(
            "INSERT INTO items SELECT n, 'v0' FROM generate_series(1, 50) n",
            &[],
        )
        .await
        .unwrap();
    // Many statements in a row, none read yet: each key's last state wins.
    for round in 1..=5 {
        setup
            .client
            .execute("UPDATE items SET label = $1", &[&format!("v{round}")])
            .await
            .unwrap();
    }
    setup
        .client
        .execute("DELETE FROM items WHERE id <= 10", &[])
        .await
        .unwrap();
    setup
        .client
        .execute("INSERT INTO items VALUES (1, 'back')", &[])
        .await
        .unwrap();
    setup
        .client
        .execute("INSERT INTO items VALUES (1000, 'marker')", &[])
        .await
        .unwrap();
    let changes = collect_until(&mut feed, |seen| {
        seen.iter()
            .any(|c| matches!(c, Change::Inserted(item) if item.id == 1000))
    })
    .await;
    let mut last: BTreeMap<i64, Option<String>> = BTreeMap::new();
    for change in &changes {
        match change {
            Change::Inserted(item) | Change::Updated(item) => {
                last.insert(item.id, Some(item.label.clone()));
            }
            Change::Deleted(id) => {
                last.insert(*id, None);
            }
            Change::Resync => panic!("no gap here"),
            _ => unreachable!(),
        }
    }
    assert_eq!(last[&1], Some("back".into()));
    for id in 2..=10 {
        assert_eq!(last[&id], None, "row {id} ends deleted");
    }
    for id in 11..=50 {
        assert_eq!(
            last[&id],
            Some("v5".into()),
            "row {id} ends at its last value"
        );
    }
    // Nothing was fetched before the deletes committed: no stale update of
    // a deleted row ever comes out.
    assert!(!changes
        .iter()
        .any(|c| matches!(c, Change::Updated(item) if (2..=10).contains(&item.id))));
}

#[tokio::test]
async fn a_backend_kill_yields_resync_then_changes_continue() {
    let setup = setup().await;
    let mut feed = Feed::subscribe(&setup.hub, setup.client.clone())
        .await
        .unwrap();
    let mut reconnects = setup.hub.reconnects();
    let admin = raw_client(&setup.url).await;
    terminate_backends(&admin, &setup.name).await;
    within("the reconnect", reconnects.changed()).await.unwrap();
    let item = Item {
        id: 5,
        label: "after".into(),
    };
    setup.client.insert(&item).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Resync);
    assert_eq!(next_change(&mut feed).await, Change::Inserted(item));
}

#[tokio::test]
async fn a_queue_overflow_yields_resync() {
    let setup = setup().await;
    let mut feed =
        Feed::subscribe_with(&setup.hub, setup.client.clone(), 1, QueuePolicy::DropOldest)
            .await
            .unwrap();
    for id in 1..=20_i64 {
        setup
            .client
            .insert(&Item {
                id,
                label: "x".into(),
            })
            .await
            .unwrap();
    }
    eventually("the notifications to arrive", || {
        let stats = feed.stats();
        async move { stats.received >= 20 }
    })
    .await;
    let changes = collect_until(&mut feed, |seen| {
        seen.iter()
            .any(|c| matches!(c, Change::Inserted(item) if item.id == 20))
    })
    .await;
    assert!(changes.contains(&Change::Resync), "{changes:?}");
    assert!(feed.stats().dropped > 0);
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(
    schema = "a schema whose name is long enough to need the hash suffix",
    table = "and a table name that is also long: sixty-three bytes exactly!!"
)]
struct LongNamed {
    #[orm(key)]
    region: String,
    #[orm(key)]
    number: i32,
    value: Option<String>,
}

#[tokio::test]
async fn a_long_table_name_gets_a_valid_channel_and_composite_keys_work() {
    let setup = setup().await;
    let schema = LongNamed::SCHEMA.unwrap();
    let table = LongNamed::TABLE;
    assert_eq!(table.len(), 63);
    setup
        .client
        .execute(&format!("CREATE SCHEMA \"{schema}\""), &[])
        .await
        .unwrap();
    setup
        .client
        .execute(
            &format!(
                "CREATE TABLE \"{schema}\".\"{table}\" (region text, number int, value text, \
                 PRIMARY KEY (region, number))"
            ),
            &[],
        )
        .await
        .unwrap();
    assert!(changes::install::<LongNamed>(&setup.client).await.unwrap());
    let mut feed = ChangeFeed::<LongNamed, _>::subscribe(&setup.hub, setup.client.clone())
        .await
        .unwrap();
    assert!(feed.channel().len() <= 63, "{}", feed.channel());
    pgorm::listen::validate_channel(feed.channel()).unwrap();
    assert_eq!(feed.channel(), changes::channel_name(schema, table));

    let row = LongNamed {
        region: "eu".into(),
        number: 7,
        value: Some("v".into()),
    };
    setup.client.insert(&row).await.unwrap();
    let change = within("the change", feed.next()).await.unwrap().unwrap();
    assert_eq!(change, Change::Inserted(row.clone()));
    setup.client.delete(&row).await.unwrap();
    let change = within("the change", feed.next()).await.unwrap().unwrap();
    assert_eq!(change, Change::Deleted(("eu".to_owned(), 7)));
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "wide keys")]
struct WideKey {
    #[orm(key)]
    name: String,
}

/// The distinct names of `changes`, which must all be inserts (or all
/// updates, with `updates`); any other change fails the test.
fn wide_names(changes: &[Change<WideKey>], updates: bool) -> BTreeSet<String> {
    changes
        .iter()
        .map(|change| match (change, updates) {
            (Change::Inserted(row), false) | (Change::Updated(row), true) => row.name.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn wide_keys_are_chunked_under_the_payload_limit() {
    let setup = setup().await;
    setup
        .client
        .execute(r#"CREATE TABLE "wide keys" (name text PRIMARY KEY)"#, &[])
        .await
        .unwrap();
    changes::install::<WideKey>(&setup.client).await.unwrap();
    let mut feed = ChangeFeed::<WideKey, _>::subscribe(&setup.hub, setup.client.clone())
        .await
        .unwrap();
    // 200 keys of 1,500 bytes: 300 kB of keys, in one statement.
    setup
        .client
        .execute(
            r#"INSERT INTO "wide keys" SELECT lpad(n::text, 1500, 'é') FROM generate_series(1, 200) n"#,
            &[],
        )
        .await
        .unwrap();
    let seen = collect_until(&mut feed, |seen| wide_names(seen, false).len() >= 200).await;
    assert_eq!(seen.len(), 200, "each key once");
    assert!(feed.stats().received >= 200 * 1500 / 8000);

    // A few rows whose keys together do not fit one notification.
    setup
        .client
        .execute(
            r#"INSERT INTO "wide keys" SELECT lpad(n::text, 1900, 'x') FROM generate_series(1, 5) n"#,
            &[],
        )
        .await
        .unwrap();
    let seen = collect_until(&mut feed, |seen| wide_names(seen, false).len() >= 5).await;
    let inserted = wide_names(&seen, false);
    setup
        .client
        .execute(
            r#"UPDATE "wide keys" SET name = name WHERE name LIKE 'xxx%'"#,
            &[],
        )
        .await
        .unwrap();
    let seen = collect_until(&mut feed, |seen| wide_names(seen, true).len() >= 5).await;
    let updated = wide_names(&seen, true);
    assert_eq!(inserted, updated);
}

// The fast path: a single key column of int2/int4/int8/uuid.

/// A `uuid` key without a uuid crate: the 16 bytes of the binary format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Uuid([u8; 16]);

impl Uuid {
    /// The usual text: 8-4-4-4-12 lowercase hex digits.
    fn text(&self) -> String {
        let hex: String = self.0.iter().map(|byte| format!("{byte:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

impl<'a> tokio_postgres::types::FromSql<'a> for Uuid {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Uuid(raw.try_into()?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::UUID
    }
}

impl tokio_postgres::types::ToSql for Uuid {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::UUID
    }

    tokio_postgres::types::to_sql_checked!();
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "int4 keys")]
struct Int4Key {
    #[orm(key)]
    id: i32,
    label: String,
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "int8 keys")]
struct Int8Key {
    #[orm(key)]
    id: i64,
    label: String,
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "uuid keys")]
struct UuidKey {
    #[orm(key)]
    id: Uuid,
    label: String,
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "text keys")]
struct TextKey {
    #[orm(key)]
    id: String,
    label: String,
}

/// How a model's rows and deleted keys read as the key's text.
trait KeyText: Model {
    fn row_key(&self) -> String;
    fn key_text(key: &Self::Key) -> String;
    fn label(&self) -> &str;
}

impl KeyText for Int4Key {
    fn row_key(&self) -> String {
        self.id.to_string()
    }
    fn key_text(key: &i32) -> String {
        key.to_string()
    }
    fn label(&self) -> &str {
        &self.label
    }
}

impl KeyText for Int8Key {
    fn row_key(&self) -> String {
        self.id.to_string()
    }
    fn key_text(key: &i64) -> String {
        key.to_string()
    }
    fn label(&self) -> &str {
        &self.label
    }
}

impl KeyText for UuidKey {
    fn row_key(&self) -> String {
        self.id.text()
    }
    fn key_text(key: &Uuid) -> String {
        key.text()
    }
    fn label(&self) -> &str {
        &self.label
    }
}

impl KeyText for TextKey {
    fn row_key(&self) -> String {
        self.id.clone()
    }
    fn key_text(key: &String) -> String {
        key.clone()
    }
    fn label(&self) -> &str {
        &self.label
    }
}

/// The key texts of `changes`, which must all be `kind` (`I`, `U` or
/// `D`); with `label`, every row's label too. Each key once.
fn keys_of<M: KeyText>(changes: &[Change<M>], kind: char, label: Option<&str>) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for change in changes {
        let key = match (change, kind) {
            (Change::Inserted(row), 'I') | (Change::Updated(row), 'U') => {
                if let Some(label) = label {
                    assert_eq!(row.label(), label);
                }
                row.row_key()
            }
            (Change::Deleted(key), 'D') => M::key_text(key),
            _ => panic!("expected only {kind} changes, got another"),
        };
        assert!(keys.insert(key), "each key once");
    }
    keys
}

/// The `op` and number of keys of each payload received on `subscription`
/// until `keys` keys have come, checking that each is under 8000 bytes.
async fn payloads(
    subscription: &mut pgorm::listen::Subscription,
    keys: usize,
) -> Vec<(String, usize)> {
    let mut seen = Vec::new();
    let mut counted = 0;
    within("the raw notifications", async {
        while counted < keys {
            let event = subscription
                .next_batch()
                .await
                .expect("ended")
                .expect("failed");
            let pgorm::listen::ListenerEvent::Notification(batch) = event else {
                panic!("no gap here");
            };
            for notification in batch.iter() {
                let payload = &notification.payload;
                assert!(payload.len() < 8000, "{} bytes", payload.len());
                let value: serde_json::Value = serde_json::from_str(payload).unwrap();
                let n = value["keys"].as_array().unwrap().len();
                counted += n;
                seen.push((value["op"].as_str().unwrap().to_owned(), n));
            }
        }
    })
    .await;
    seen
}

/// The definition of the function the INSERT trigger of `table` calls.
async fn trigger_function(client: &PgClient, table: &str) -> (String, String) {
    let row = client
        .query_one(
            "SELECT pg_get_functiondef(tgfoid), obj_description(tgfoid, 'pg_proc') \
             FROM pg_trigger WHERE tgrelid = $1::text::regclass AND tgname = 'pgorm_changes_insert'",
            &[&format!("\"{table}\"")],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Creates `M`'s table (`id {key_type} PRIMARY KEY, label text`), installs
/// its feed, and checks that an INSERT, an UPDATE (no key changed) and a
/// DELETE of 10,000 rows, then of 10 rows, then of one row, each deliver
/// exactly their rows, in notifications under 8000 bytes; `key_sql` makes
/// the key of row `n`.
async fn bulk_round_trip<M: KeyText + std::fmt::Debug>(
    setup: &Setup,
    key_type: &str,
    key_sql: &str,
) {
    let table = M::TABLE;
    let client = &setup.client;
    client
        .execute(
            &format!("CREATE TABLE \"{table}\" (id {key_type} PRIMARY KEY, label text NOT NULL)"),
            &[],
        )
        .await
        .unwrap();
    assert!(changes::install::<M>(client).await.unwrap());
    let mut feed = ChangeFeed::<M, _>::subscribe(&setup.hub, client.clone())
        .await
        .unwrap();
    let mut raw = setup.hub.subscribe(feed.channel()).await.unwrap();
    let mut total = 0;
    for (from, to) in [(1_i64, 10_000_i64), (10_001, 10_010), (10_011, 10_011)] {
        let rows = (to - from + 1) as usize;
        total += 3 * rows;
        let expected: BTreeSet<String> = client
            .query(
                &format!("SELECT ({key_sql})::text FROM generate_series($1::int8, $2::int8) n"),
                &[&from, &to],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(expected.len(), rows);
        client
            .execute(
                &format!(
                    "INSERT INTO \"{table}\" SELECT {key_sql}, 'new' \
                     FROM generate_series($1::int8, $2::int8) n"
                ),
                &[&from, &to],
            )
            .await
            .unwrap();
        let seen = collect_until(&mut feed, |seen| seen.len() >= rows).await;
        assert_eq!(
            keys_of(&seen, 'I', Some("new")),
            expected,
            "{table}: inserts"
        );

        client
            .execute(&format!("UPDATE \"{table}\" SET label = 'updated'"), &[])
            .await
            .unwrap();
        let seen = collect_until(&mut feed, |seen| seen.len() >= rows).await;
        assert_eq!(
            keys_of(&seen, 'U', Some("updated")),
            expected,
            "{table}: updates"
        );

        client
            .execute(&format!("DELETE FROM \"{table}\""), &[])
            .await
            .unwrap();
        let seen = collect_until(&mut feed, |seen| seen.len() >= rows).await;
        assert_eq!(keys_of(&seen, 'D', None), expected, "{table}: deletes");
    }

    // The same statements, payload by payload: one op each, in order, few
    // notifications, every one under the limit (checked in `payloads`).
    let sent = payloads(&mut raw, total).await;
    let ops: Vec<&str> = sent.iter().map(|(op, _)| op.as_str()).collect();
    let mut runs = ops.clone();
    runs.dedup();
    assert_eq!(runs, ["I", "U", "D"].repeat(3), "{table}");
    assert!(
        sent.len() * 100 < total,
        "{table}: {} notifications",
        sent.len()
    );
}

#[tokio::test]
async fn integer_and_uuid_keys_take_the_fast_path_and_deliver_bulk_statements_exactly() {
    let setup = setup().await;
    // The widest texts each type has, so the slices are as full as they
    // can be: 285 keys of `{"id":-9223372036854775807}` are 7,999 bytes.
    bulk_round_trip::<Int4Key>(&setup, "integer", "(-2147483649 + n)::int4").await;
    bulk_round_trip::<Int8Key>(&setup, "bigint", "-9223372036854775807 - 1 + n").await;
    bulk_round_trip::<UuidKey>(&setup, "uuid", "md5(n::text)::uuid").await;
    // The comment records the key's type OID: int4, int8, uuid.
    for (table, key_type) in [("int4 keys", 23), ("int8 keys", 20), ("uuid keys", 2950)] {
        let (definition, comment) = trigger_function(&setup.client, table).await;
        assert!(
            definition.contains("array_to_string"),
            "{table}: {definition}"
        );
        assert!(
            comment.starts_with(&format!(
                "{}; key type OIDs [{key_type}]",
                changes::FEED_VERSION
            )),
            "{comment}"
        );
    }
}

#[tokio::test]
async fn a_text_key_takes_the_general_path_and_delivers_bulk_statements_exactly() {
    let setup = setup().await;
    bulk_round_trip::<TextKey>(&setup, "text", "'key ' || n").await;
    let (definition, comment) = trigger_function(&setup.client, "text keys").await;
    assert!(!definition.contains("array_to_string"), "{definition}");
    assert!(definition.contains("to_json"), "{definition}");
    // 25: text.
    assert!(comment.contains("key type OIDs [25]"), "{comment}");
}

#[tokio::test]
async fn a_bulk_update_that_changes_keys_delivers_the_old_as_deleted_and_the_new_as_inserted() {
    let setup = setup().await;
    let client = &setup.client;
    let mut feed = Feed::subscribe(&setup.hub, client.clone()).await.unwrap();
    let count: i64 = 10_000;
    client
        .execute(
            "INSERT INTO items SELECT n, 'row ' || n FROM generate_series(1, $1::int8) n",
            &[&count],
        )
        .await
        .unwrap();
    collect_until(&mut feed, |seen| seen.len() >= count as usize).await;
    // Half the keys move, the other half do not.
    client
        .execute(
            "UPDATE items SET id = CASE WHEN id % 2 = 0 THEN id + 1000000 ELSE id END",
            &[],
        )
        .await
        .unwrap();
    let changes = collect_until(&mut feed, |seen| seen.len() >= 3 * count as usize / 2).await;
    let (mut deleted, mut inserted, mut updated) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for change in &changes {
        match change {
            Change::Deleted(id) => assert!(deleted.insert(*id)),
            Change::Inserted(item) => {
                assert_eq!(item.label, format!("row {}", item.id - 1_000_000));
                assert!(inserted.insert(item.id));
            }
            Change::Updated(item) => {
                assert_eq!(item.label, format!("row {}", item.id));
                assert!(updated.insert(item.id));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let even: BTreeSet<i64> = (1..=count).filter(|id| id % 2 == 0).collect();
    let odd: BTreeSet<i64> = (1..=count).filter(|id| id % 2 == 1).collect();
    assert_eq!(deleted, even);
    assert_eq!(inserted, even.iter().map(|id| id + 1_000_000).collect());
    assert_eq!(updated, odd);
}

#[tokio::test]
async fn after_alter_column_type_writes_keep_working_and_install_picks_the_new_type() {
    let setup = setup().await;
    let client = &setup.client;
    client
        .execute(
            r#"CREATE TABLE "int4 keys" (id integer PRIMARY KEY, label text NOT NULL)"#,
            &[],
        )
        .await
        .unwrap();
    assert!(changes::install::<Int4Key>(client).await.unwrap());
    client
        .execute(
            r#"INSERT INTO "int4 keys" SELECT n, 'a' FROM generate_series(1, 1000) n"#,
            &[],
        )
        .await
        .unwrap();

    // Widened to bigint, the fast path still holds (its slices are sized
    // for bigint), with keys int4 never had.
    client
        .execute(
            r#"ALTER TABLE "int4 keys" ALTER COLUMN id TYPE bigint"#,
            &[],
        )
        .await
        .unwrap();
    #[derive(Debug, Clone, PartialEq, FromRow, Model)]
    #[orm(table = "int4 keys")]
    struct Widened {
        #[orm(key)]
        id: i64,
        label: String,
    }
    let mut feed = ChangeFeed::<Widened, _>::subscribe(&setup.hub, client.clone())
        .await
        .unwrap();
    client
        .execute(
            r#"INSERT INTO "int4 keys" SELECT -9223372036854775807 - 1 + n, 'b' FROM generate_series(0, 999) n"#,
            &[],
        )
        .await
        .unwrap();
    let seen = collect_until(&mut feed, |seen| seen.len() >= 1000).await;
    let ids: BTreeSet<i64> = seen
        .iter()
        .map(|change| match change {
            Change::Inserted(row) => row.id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, (0..1000).map(|n| i64::MIN + n).collect());
    drop(feed);

    // Changed to text, the same function takes the general path: writes
    // work and every key arrives, until install writes the text function.
    client
        .execute(r#"ALTER TABLE "int4 keys" ALTER COLUMN id TYPE text"#, &[])
        .await
        .unwrap();
    #[derive(Debug, Clone, PartialEq, FromRow, Model)]
    #[orm(table = "int4 keys")]
    struct Retyped {
        #[orm(key)]
        id: String,
        label: String,
    }
    let mut feed = ChangeFeed::<Retyped, _>::subscribe(&setup.hub, client.clone())
        .await
        .unwrap();
    let mut expected: BTreeSet<String> = (1..=500).map(|n| format!("key {n} \"quoted\"")).collect();
    expected.insert("one".into());
    // Each statement's changes are read before the next one runs.
    let statements = [
        (
            r#"INSERT INTO "int4 keys" SELECT 'key ' || n || ' "quoted"', 'c' FROM generate_series(1, 500) n"#,
            'I',
            500,
        ),
        (r#"INSERT INTO "int4 keys" VALUES ('one', 'c')"#, 'I', 1),
        (
            r#"UPDATE "int4 keys" SET label = 'd' WHERE label = 'c'"#,
            'U',
            501,
        ),
        (r#"DELETE FROM "int4 keys" WHERE label = 'd'"#, 'D', 501),
    ];
    for round in 0..2 {
        let mut inserted = BTreeSet::new();
        for (sql, kind, rows) in statements {
            client.execute(sql, &[]).await.unwrap();
            let seen = collect_until(&mut feed, |seen| seen.len() >= rows).await;
            let keys: BTreeSet<String> = seen
                .iter()
                .map(|change| match (change, kind) {
                    (Change::Inserted(row), 'I') | (Change::Updated(row), 'U') => row.id.clone(),
                    (Change::Deleted(id), 'D') => id.clone(),
                    (other, _) => panic!("round {round}: expected {kind}, got {other:?}"),
                })
                .collect();
            assert_eq!(keys.len(), seen.len(), "each key once");
            if kind == 'I' {
                inserted.extend(keys);
            } else {
                assert_eq!(keys, expected, "round {round}: {kind}");
            }
        }
        assert_eq!(inserted, expected, "round {round}: inserts");
        // The second round runs the function install writes for text.
        if round == 0 {
            assert!(changes::install::<Retyped>(client).await.unwrap());
        }
    }
    let (definition, comment) = trigger_function(client, "int4 keys").await;
    assert!(!definition.contains("array_to_string"), "{definition}");
    // 25: text.
    assert!(comment.contains("key type OIDs [25]"), "{comment}");
}
