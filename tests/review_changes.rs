//! Hostile review (r3) of the change feeds: each test proves one finding
//! against the real server; the finding's number is in its comment.

mod support;

use std::time::Duration;

use pgorm::changes::{self, Change, ChangeFeed};
use pgorm::listen::{PgListenerConfig, PgNotifyHub};
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

async fn connect(sql: &str) -> (String, PgClient, PgNotifyHub) {
    let url = fresh_database().await;
    let client = within("connect", PgClient::connect(&url)).await.unwrap();
    for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
        client.execute(statement, &[]).await.unwrap();
    }
    let config = PgListenerConfig::new()
        .application_name(unique("review_changes"))
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let hub = within("hub", PgNotifyHub::connect_with(&url, config))
        .await
        .unwrap();
    (url, client, hub)
}

async fn next_change<M: Model, C: GenericClient>(feed: &mut ChangeFeed<M, C>) -> Change<M> {
    within("the next change", feed.next())
        .await
        .expect("the feed ended")
        .expect("the feed failed")
}

/// Finding 1: TRUNCATE has no trigger, so a feed never hears that every
/// row is gone; a cache built from it keeps the rows for ever. Nothing
/// signals the loss (no Deleted, no Resync).
#[tokio::test]
async fn review_1_truncate_is_signalled() {
    let (_url, client, hub) =
        connect("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)").await;
    changes::install::<Item>(&client).await.unwrap();
    let mut feed = ChangeFeed::<Item, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let tea = Item {
        id: 1,
        label: "tea".into(),
    };
    client.insert(&tea).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Inserted(tea));

    client.execute("TRUNCATE items", &[]).await.unwrap();
    let coffee = Item {
        id: 2,
        label: "coffee".into(),
    };
    client.insert(&coffee).await.unwrap();
    let change = next_change(&mut feed).await;
    assert!(
        matches!(change, Change::Resync | Change::Deleted(1)),
        "after TRUNCATE the feed must say row 1 is gone (Deleted or Resync), got {change:?}"
    );
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "ranked")]
struct Ranked {
    #[orm(key)]
    id: i64,
    ordinal: i64,
}

/// Finding 2: the fetch query's first column is `e.ordinal`, and FromRow
/// reads the first column of a name: a model with a column `ordinal`
/// receives the batch position instead of its value.
#[tokio::test]
async fn review_2_a_column_named_ordinal_is_read_from_the_table() {
    let (_url, client, hub) =
        connect("CREATE TABLE ranked (id bigint PRIMARY KEY, ordinal bigint NOT NULL)").await;
    changes::install::<Ranked>(&client).await.unwrap();
    let mut feed = ChangeFeed::<Ranked, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let row = Ranked { id: 7, ordinal: 42 };
    client.insert(&row).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Inserted(row));
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(schema = "a.b", table = "c")]
struct Dotted {
    #[orm(key)]
    id: i64,
    label: String,
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(schema = "a", table = "b.c")]
struct Other {
    #[orm(key)]
    id: i64,
    label: String,
}

/// Finding 3: the channel is `pgorm_changes:{schema}.{table}` with the
/// names unescaped, so schema `a.b` table `c` and schema `a` table `b.c`
/// share a channel: one table's feed yields the other table's changes
/// (here a Deleted for a key its own table never had).
#[tokio::test]
async fn review_3_tables_with_dots_in_names_do_not_share_a_channel() {
    let (_url, client, hub) = connect(
        r#"CREATE SCHEMA "a.b"; CREATE SCHEMA a;
           CREATE TABLE "a.b".c (id bigint PRIMARY KEY, label text NOT NULL);
           CREATE TABLE a."b.c" (id bigint PRIMARY KEY, label text NOT NULL);"#,
    )
    .await;
    changes::install::<Dotted>(&client).await.unwrap();
    changes::install::<Other>(&client).await.unwrap();
    let mut feed = ChangeFeed::<Other, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    client
        .insert(&Dotted {
            id: 1,
            label: "elsewhere".into(),
        })
        .await
        .unwrap();
    let mine = Other {
        id: 2,
        label: "mine".into(),
    };
    client.insert(&mine).await.unwrap();
    assert_eq!(
        next_change(&mut feed).await,
        Change::Inserted(mine),
        "the feed of a.\"b.c\" saw a change of \"a.b\".c (channel {})",
        feed.channel()
    );
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "labelled")]
struct Labelled {
    #[orm(key)]
    id: i64,
    label: String,
}

/// Finding 4: the fetch builds each key as
/// `jsonb_populate_record(NULL::table, key)`, which checks every column's
/// domain against NULL: a table with a `NOT NULL` domain column (not part
/// of the key) makes every fetch fail, so the feed yields only errors and
/// Resync, never a change.
#[tokio::test]
async fn review_4_a_not_null_domain_column_does_not_break_every_fetch() {
    let (_url, client, hub) = connect(
        "CREATE DOMAIN nonempty AS text NOT NULL CHECK (VALUE <> '');
         CREATE TABLE labelled (id bigint PRIMARY KEY, label nonempty)",
    )
    .await;
    changes::install::<Labelled>(&client).await.unwrap();
    let mut feed = ChangeFeed::<Labelled, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let row = Labelled {
        id: 1,
        label: "tea".into(),
    };
    client
        .execute("INSERT INTO labelled VALUES (1, 'tea')", &[])
        .await
        .unwrap();
    let first = within("the next change", feed.next())
        .await
        .expect("the feed ended");
    assert_eq!(first.expect("the fetch failed"), Change::Inserted(row));
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "renamed")]
struct Renamed {
    #[orm(key)]
    id: i64,
    label: String,
}

/// Finding 5: the function is named after the table, so after
/// `ALTER TABLE … RENAME` a reinstall creates a second function and
/// uninstall only drops the new one: the old function stays behind.
#[tokio::test]
async fn review_5_uninstall_after_a_rename_leaves_no_function() {
    let (_url, client, _hub) =
        connect("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)").await;
    changes::install::<Item>(&client).await.unwrap();
    client
        .execute("ALTER TABLE items RENAME TO renamed", &[])
        .await
        .unwrap();
    assert!(changes::install::<Renamed>(&client).await.unwrap());
    assert!(changes::uninstall::<Renamed>(&client).await.unwrap());
    let left: Vec<String> = client
        .query(
            "SELECT proname::text FROM pg_proc WHERE proname LIKE 'pgorm\\_changes\\_%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(left.is_empty(), "functions left after uninstall: {left:?}");
}

/// Finding 6: the channel is written into the trigger function at install,
/// but a feed subscribes to the channel of the table's current name: after
/// `ALTER TABLE … RENAME` (or `SET SCHEMA`) without a reinstall, the
/// triggers keep notifying the old channel and the feed silently receives
/// nothing. Subscribing must either fail or deliver.
#[tokio::test]
async fn review_6_a_feed_on_a_renamed_table_fails_or_delivers() {
    let (_url, client, hub) =
        connect("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)").await;
    changes::install::<Item>(&client).await.unwrap();
    client
        .execute("ALTER TABLE items RENAME TO renamed", &[])
        .await
        .unwrap();
    let mut feed = match ChangeFeed::<Renamed, _>::subscribe(&hub, client.clone()).await {
        Ok(feed) => feed,
        Err(error) => {
            // Refused: the error must tell the user to (re)install.
            assert!(error.to_string().contains("install"), "{error}");
            return;
        }
    };
    let row = Renamed {
        id: 1,
        label: "tea".into(),
    };
    client.insert(&row).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Inserted(row));
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "parted")]
struct Parted {
    #[orm(key)]
    id: i64,
    label: String,
}

/// Finding 8: statement-level triggers of a partitioned table fire only
/// for statements that name the parent; `INSERT INTO` a partition (or its
/// UPDATE, DELETE, TRUNCATE) fires nothing and the feed never hears of the
/// row. Install accepts the partitioned table without a word, so the loss
/// is silent.
#[tokio::test]
async fn review_8_writes_to_a_partition_reach_the_feed() {
    let (_url, client, hub) = connect(
        "CREATE TABLE parted (id bigint PRIMARY KEY, label text NOT NULL) PARTITION BY RANGE (id);
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
         CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (200)",
    )
    .await;
    let installed = changes::install::<Parted>(&client).await;
    let Ok(_) = installed else {
        // Refusing partitioned tables with a clear error is a fix too.
        let error = installed.unwrap_err();
        assert!(error.to_string().contains("partition"), "{error}");
        return;
    };
    let mut feed = ChangeFeed::<Parted, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    client
        .execute("INSERT INTO parted_low VALUES (1, 'direct')", &[])
        .await
        .unwrap();
    let through_parent = Parted {
        id: 150,
        label: "through the parent".into(),
    };
    client.insert(&through_parent).await.unwrap();
    let first = next_change(&mut feed).await;
    assert_eq!(
        first,
        Change::Inserted(Parted {
            id: 1,
            label: "direct".into()
        }),
        "the insert into the partition was not signalled"
    );
}

/// Finding 9: `uninstall` takes no advisory lock (only `install` does), so
/// an install and an uninstall of the same table running at once collide
/// in the catalog ("tuple concurrently updated" and the like) instead of
/// running one after the other.
#[tokio::test]
async fn review_9_concurrent_install_and_uninstall_do_not_fail() {
    let (url, client, _hub) =
        connect("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)").await;
    let other = within("connect", PgClient::connect(&url)).await.unwrap();
    let installs = async {
        for _ in 0..40 {
            changes::install::<Item>(&client).await?;
        }
        pgorm::OrmResult::Ok(())
    };
    let uninstalls = async {
        for _ in 0..40 {
            changes::uninstall::<Item>(&other).await?;
        }
        pgorm::OrmResult::Ok(())
    };
    let (a, b) = within("the installs", async { tokio::join!(installs, uninstalls) }).await;
    a.expect("install failed");
    b.expect("uninstall failed");
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "lines")]
struct Line {
    #[orm(key)]
    id: i64,
    order_id: i64,
}

/// Probe (passes when sound): rows deleted by an `ON DELETE CASCADE`
/// foreign key, and rows written by `INSERT … ON CONFLICT DO UPDATE`,
/// reach the feed.
#[tokio::test]
async fn review_probe_cascades_and_upserts_reach_the_feed() {
    let (_url, client, hub) = connect(
        "CREATE TABLE orders (id bigint PRIMARY KEY);
         CREATE TABLE lines (id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE)",
    )
    .await;
    changes::install::<Line>(&client).await.unwrap();
    client
        .execute("INSERT INTO orders VALUES (1)", &[])
        .await
        .unwrap();
    client
        .execute("INSERT INTO lines VALUES (10, 1)", &[])
        .await
        .unwrap();
    let mut feed = ChangeFeed::<Line, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    client
        .execute("DELETE FROM orders WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Deleted(10));
    client
        .execute("INSERT INTO orders VALUES (2)", &[])
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO lines VALUES (11, 2) ON CONFLICT (id) DO UPDATE SET order_id = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut feed).await,
        Change::Inserted(Line {
            id: 11,
            order_id: 2
        })
    );
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "price$pgorm$list")]
struct Dollar {
    #[orm(key, rename = "sku$pgorm$")]
    sku: String,
}

/// Finding 10: the trigger function's body is dollar-quoted with the fixed
/// tag `$pgorm$`, and the channel literal and key column names are written
/// into it: a table or column whose name contains `$pgorm$` ends the quote
/// early, and install fails with a syntax error (the name is quoted as an
/// identifier, but not for the dollar quote around it).
#[tokio::test]
async fn review_10_a_name_containing_the_dollar_quote_tag_installs() {
    let (_url, client, hub) =
        connect(r#"CREATE TABLE "price$pgorm$list" ("sku$pgorm$" text PRIMARY KEY)"#).await;
    changes::install::<Dollar>(&client)
        .await
        .expect("install on a table named price$pgorm$list");
    let mut feed = ChangeFeed::<Dollar, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let row = Dollar { sku: "tea".into() };
    client.insert(&row).await.unwrap();
    assert_eq!(next_change(&mut feed).await, Change::Inserted(row));
}

#[derive(Debug, Clone, PartialEq, FromRow, Model)]
#[orm(table = "items")]
struct Mistyped {
    #[orm(key, rename = "item_id")]
    id: i64,
    label: String,
}

/// Finding 12: install does not check the model's key columns against the
/// table. PL/pgSQL does not check the body's queries at creation, so
/// install of a model whose key column does not exist succeeds, and from
/// then on every INSERT, UPDATE and DELETE on the table fails in the
/// trigger ("column r.item_id does not exist"): a typo in a model takes
/// the table's writes down.
#[tokio::test]
async fn review_12_install_with_a_wrong_key_column_does_not_break_writes() {
    let (_url, client, _hub) =
        connect("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)").await;
    match changes::install::<Mistyped>(&client).await {
        Err(error) => assert!(error.to_string().contains("item_id"), "{error}"),
        Ok(_) => {
            client
                .execute("INSERT INTO items VALUES (1, 'tea')", &[])
                .await
                .expect("a write to the table after install");
        }
    }
}

/// Probe (passes when sound): in one transaction the same key is inserted,
/// deleted and inserted again (PostgreSQL folds the second, identical `I`
/// notification), and another is deleted, inserted and deleted again; the
/// feed still ends with the rows' true states.
#[tokio::test]
async fn review_probe_folded_notifications_of_one_transaction_keep_the_final_state() {
    let (_url, client, hub) =
        connect("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)").await;
    changes::install::<Item>(&client).await.unwrap();
    client
        .execute("INSERT INTO items VALUES (2, 'old')", &[])
        .await
        .unwrap();
    let mut feed = ChangeFeed::<Item, _>::subscribe(&hub, client.clone())
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    for sql in [
        "INSERT INTO items VALUES (1, 'first')",
        "DELETE FROM items WHERE id = 1",
        "INSERT INTO items VALUES (1, 'again')",
        "DELETE FROM items WHERE id = 2",
        "INSERT INTO items VALUES (2, 'back')",
        "DELETE FROM items WHERE id = 2",
    ] {
        tx.execute(sql, &[]).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut state = std::collections::BTreeMap::new();
    while state.len() < 2 {
        match next_change(&mut feed).await {
            Change::Inserted(item) | Change::Updated(item) => {
                state.insert(item.id, Some(item.label));
            }
            Change::Deleted(id) => {
                state.insert(id, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(state[&1], Some("again".to_owned()));
    assert_eq!(state[&2], None);
}
