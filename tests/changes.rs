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

/// Reads changes until `done` says the collected ones are complete.
async fn collect_until<M: Model>(
    feed: &mut ChangeFeed<M, PgClient>,
    mut done: impl FnMut(&[Change<M>]) -> bool,
) -> Vec<Change<M>> {
    let mut seen = Vec::new();
    within("the changes", async {
        while !done(&seen) {
            let batch = feed.next_batch().await.expect("ended").expect("failed");
            seen.extend(batch);
        }
    })
    .await;
    seen
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
