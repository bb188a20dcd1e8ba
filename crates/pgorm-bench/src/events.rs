//! The `events` workload: pgorm-events' enqueue rate in the caller's
//! transaction (wake-ups on and off), batch enqueue, dispatch with batched
//! claims and completions (plain and transactional handlers), and
//! publish-to-handler latency on an idle queue. Each run uses a schema of
//! its own and drops it afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgorm::{GenericClient, PgClient};
use pgorm_events::{EventWorkers, Events, EventsConfig, NewEvent, Router, WorkerConfig};

use crate::measure;
use crate::Results;

/// The runs of the workload, as table rows.
pub const RUNS: &[&str] = &[
    "enqueue tx x4 producers, wake-ups on",
    "enqueue tx x4 producers, wake-ups off",
    "enqueue batch 5000",
    "dispatch no-op, 32 slots",
    "dispatch transactional, 32 slots",
    "latency idle queue",
];

/// Metrics shown: (key, label, higher is better).
pub const METRICS: &[(&str, &str, bool)] = &[
    ("rate", "events/s", true),
    ("p50_us", "p50 µs", false),
    ("p99_us", "p99 µs", false),
];

const ENQUEUE_FOR: Duration = Duration::from_secs(3);
const DISPATCH_TOTAL: usize = 40_000;
const LATENCY_SAMPLES: usize = 500;

/// Runs one measurement.
pub async fn run(run: &str, url: &str) -> Results {
    let client = PgClient::connect(url).await.expect("client");
    let schema = format!("bench_events_{}", std::process::id());
    let events = Events::new(EventsConfig::new().schema(&schema)).expect("config");
    events.migrate(&client).await.expect("migrate");
    let results = match run {
        "enqueue tx x4 producers, wake-ups on" => enqueue(&client, &events, true).await,
        "enqueue tx x4 producers, wake-ups off" => enqueue(&client, &events, false).await,
        "enqueue batch 5000" => enqueue_batch(&client, &events).await,
        "dispatch no-op, 32 slots" => dispatch(&client, &events, false).await,
        "dispatch transactional, 32 slots" => dispatch(&client, &events, true).await,
        "latency idle queue" => latency(&client, &events).await,
        other => panic!("unknown events run {other}"),
    };
    client
        .execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), &[])
        .await
        .expect("drop the schema");
    results
}

fn rate(count: u64, elapsed: Duration) -> Results {
    Results::from([("rate".to_string(), count as f64 / elapsed.as_secs_f64())])
}

async fn set_wakeups(client: &PgClient, events: &Events, on: bool) {
    let sql = format!(
        "ALTER TABLE \"{}\".events {} TRIGGER wake",
        events.config().schema_name(),
        if on { "ENABLE" } else { "DISABLE" }
    );
    client.execute(&sql, &[]).await.expect("toggle wake-ups");
}

/// Four producers, each publishing one event per transaction.
async fn enqueue(client: &PgClient, events: &Events, wakeups: bool) -> Results {
    set_wakeups(client, events, wakeups).await;
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (client, events, count) = (client.clone(), events.clone(), count.clone());
            tokio::spawn(async move {
                while started.elapsed() < ENQUEUE_FOR {
                    let tx = client.transaction().await.expect("begin");
                    let event = NewEvent::new("bench", &serde_json::json!({"n": 1})).unwrap();
                    events.publish(&tx, event).await.expect("publish");
                    tx.commit().await.expect("commit");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.expect("producer");
    }
    rate(count.load(Ordering::Relaxed), started.elapsed())
}

async fn fill(events: &Events, client: &PgClient, total: usize) {
    for _ in 0..total / 5000 {
        let batch = (0..5000)
            .map(|i| NewEvent::new("bench", &serde_json::json!({ "i": i })).unwrap())
            .collect();
        events
            .publish_batch(client, batch)
            .await
            .expect("publish batch");
    }
}

async fn enqueue_batch(client: &PgClient, events: &Events) -> Results {
    let started = Instant::now();
    fill(events, client, 100_000).await;
    rate(100_000, started.elapsed())
}

async fn dispatch(client: &PgClient, events: &Events, transactional: bool) -> Results {
    let total = if transactional {
        DISPATCH_TOTAL / 4
    } else {
        DISPATCH_TOTAL
    };
    fill(events, client, total).await;
    let router = if transactional {
        Router::new().on_transactional("bench", |_event, tx| async move { Ok(tx) })
    } else {
        Router::new().on("bench", |_event| async { Ok(()) })
    };
    let config = WorkerConfig::new().concurrency(32).max_batch(100);
    let started = Instant::now();
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .expect("workers");
    while workers.stats().processed < total as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let results = rate(total as u64, started.elapsed());
    workers.shutdown().await.expect("shutdown");
    results
}

/// Sequential publishes on an idle queue: from just before the publish to
/// the handler's start.
async fn latency(client: &PgClient, events: &Events) -> Results {
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let router = Router::new().on("bench", move |_event| {
        let started_tx = started_tx.clone();
        async move {
            started_tx.send(Instant::now())?;
            Ok(())
        }
    });
    let workers = EventWorkers::start(client.clone(), events.clone(), router, WorkerConfig::new())
        .await
        .expect("workers");
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let sent = Instant::now();
        let event = NewEvent::new("bench", &serde_json::json!({})).unwrap();
        events.publish(client, event).await.expect("publish");
        let handled = started_rx.recv().await.expect("handled");
        samples.push(handled.duration_since(sent).as_secs_f64() * 1e6);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    workers.shutdown().await.expect("shutdown");
    samples.sort_by(f64::total_cmp);
    Results::from([
        ("p50_us".to_string(), measure::quantile(&samples, 0.5)),
        ("p99_us".to_string(), measure::quantile(&samples, 0.99)),
    ])
}
