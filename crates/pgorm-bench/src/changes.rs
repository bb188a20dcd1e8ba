//! The `changes` workload: typed change feeds (`pgorm::changes`).
//!
//! - delivery: a 100,000-row bulk UPDATE; time from its commit to the last
//!   typed change delivered by a `ChangeFeed`, against one `SELECT` of the
//!   same rows on the same client (the floor);
//! - the writer's cost: a 100,000-row `INSERT … SELECT` and 10,000
//!   single-row inserts, into a table with the feed's triggers and into an
//!   identical one without, alternated three times within the run (medians).
//!
//! Each run uses tables of its own and drops them afterwards.

use std::time::{Duration, Instant};

use pgorm::changes::{self, ChangeFeed};
use pgorm::listen::QueuePolicy;
use pgorm::model::{FromRow, Model};
use pgorm::{GenericClient, PgClient};

use crate::measure;
use crate::Results;

/// The runs of the workload, as table rows.
pub const RUNS: &[&str] = &[
    "feed: 100k-row bulk UPDATE",
    "writer: 100k-row INSERT ... SELECT",
    "writer: 10k single-row inserts",
];

/// Metrics shown: (key, label, higher is better).
pub const METRICS: &[(&str, &str, bool)] = &[
    ("rate", "typed changes/s", true),
    ("deliver_ms", "commit to last change, ms", false),
    ("floor_ms", "one SELECT of the rows, ms", false),
    ("x_floor", "× SELECT", false),
    ("plain_ms", "no triggers, ms", false),
    ("feed_ms", "with triggers, ms", false),
    ("overhead", "× no triggers", false),
];

const ROWS: i64 = 100_000;
const SINGLE_ROWS: i64 = 10_000;
const ALTERNATIONS: usize = 3;

/// A row of the benchmark's tables.
#[derive(Debug, FromRow, Model)]
#[orm(table = "bench_changes")]
struct Row {
    #[orm(key)]
    id: i64,
    value: i64,
}

/// The same row shape, for the table without triggers.
#[derive(Debug, FromRow, Model)]
#[orm(table = "bench_changes_plain")]
struct PlainRow {
    #[orm(key)]
    id: i64,
    value: i64,
}

/// Runs one measurement.
pub async fn run(run: &str, url: &str) -> Results {
    let client = PgClient::connect(url).await.expect("client");
    for table in ["bench_changes", "bench_changes_plain"] {
        client
            .execute(&format!("DROP TABLE IF EXISTS {table}"), &[])
            .await
            .expect("drop");
        client
            .execute(
                &format!("CREATE TABLE {table} (id bigint PRIMARY KEY, value bigint NOT NULL)"),
                &[],
            )
            .await
            .expect("create");
    }
    changes::install::<Row>(&client).await.expect("install");
    let results = match run {
        "feed: 100k-row bulk UPDATE" => delivery(&client).await,
        "writer: 100k-row INSERT ... SELECT" => writer(&client, true).await,
        "writer: 10k single-row inserts" => writer(&client, false).await,
        other => panic!("unknown changes run {other}"),
    };
    for table in ["bench_changes", "bench_changes_plain"] {
        client
            .execute(&format!("DROP TABLE {table}"), &[])
            .await
            .expect("drop");
    }
    results
}

async fn delivery(client: &PgClient) -> Results {
    client
        .execute(
            "INSERT INTO bench_changes_plain SELECT n, n FROM generate_series(1, $1::int8) n",
            &[&ROWS],
        )
        .await
        .expect("fill");
    client
        .execute(
            "INSERT INTO bench_changes SELECT n, n FROM generate_series(1, $1::int8) n",
            &[&ROWS],
        )
        .await
        .expect("fill");
    client
        .execute("VACUUM ANALYZE bench_changes", &[])
        .await
        .expect("vacuum");

    // The floor: the same rows, read by one SELECT through the same client.
    let started = Instant::now();
    let rows = client
        .query("SELECT id, value FROM bench_changes", &[])
        .await
        .expect("select");
    let floor = started.elapsed();
    assert_eq!(rows.len() as i64, ROWS);
    drop(rows);

    let hub = client.hub().await.expect("hub");
    let mut feed = ChangeFeed::<Row, _>::subscribe_with(
        &hub,
        client.clone(),
        100_000,
        QueuePolicy::DropOldest,
    )
    .await
    .expect("feed");
    client
        .execute("UPDATE bench_changes SET value = value + 1", &[])
        .await
        .expect("update");
    let committed = Instant::now();
    let mut delivered: i64 = 0;
    while delivered < ROWS {
        let batch = tokio::time::timeout(Duration::from_secs(120), feed.next_batch())
            .await
            .expect("the changes within 120 s")
            .expect("the feed ended")
            .expect("the feed failed");
        for change in batch {
            match change {
                changes::Change::Updated(row) => {
                    assert_eq!(row.value, row.id + 1);
                    delivered += 1;
                }
                other => panic!("unexpected change {other:?}"),
            }
        }
    }
    let deliver = committed.elapsed();
    hub.close().await.expect("close");
    Results::from([
        ("rate".to_string(), ROWS as f64 / deliver.as_secs_f64()),
        ("deliver_ms".to_string(), deliver.as_secs_f64() * 1e3),
        ("floor_ms".to_string(), floor.as_secs_f64() * 1e3),
        (
            "x_floor".to_string(),
            deliver.as_secs_f64() / floor.as_secs_f64(),
        ),
    ])
}

/// Times one write of the table (bulk or single rows), from empty.
async fn write_once(client: &PgClient, table: &str, bulk: bool) -> Duration {
    client
        .execute(&format!("TRUNCATE {table}"), &[])
        .await
        .expect("truncate");
    let pooled = client.connection().await.expect("connection");
    // tokio-postgres' own client: inherent methods, prepared statements.
    let connection: &tokio_postgres::Client = &pooled;
    if bulk {
        let sql = format!("INSERT INTO {table} SELECT n, n FROM generate_series(1, $1::int8) n");
        let started = Instant::now();
        connection.execute(&sql, &[&ROWS]).await.expect("insert");
        started.elapsed()
    } else {
        let statement = connection
            .prepare(&format!("INSERT INTO {table} VALUES ($1, $1)"))
            .await
            .expect("prepare");
        let started = Instant::now();
        for id in 1..=SINGLE_ROWS {
            connection
                .execute(&statement, &[&id])
                .await
                .expect("insert");
        }
        started.elapsed()
    }
}

async fn writer(client: &PgClient, bulk: bool) -> Results {
    let (mut plain, mut fed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ALTERNATIONS {
        let p = write_once(client, PlainRow::TABLE, bulk)
            .await
            .as_secs_f64();
        let f = write_once(client, Row::TABLE, bulk).await.as_secs_f64();
        plain.push(p * 1e3);
        fed.push(f * 1e3);
        ratios.push(f / p);
    }
    Results::from([
        ("plain_ms".to_string(), measure::summary(&plain).0),
        ("feed_ms".to_string(), measure::summary(&fed).0),
        ("overhead".to_string(), measure::summary(&ratios).0),
    ])
}
