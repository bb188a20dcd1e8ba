//! The `events` workload: pgorm-events' enqueue rate in the caller's
//! transaction (wake-ups on and off) beside the durable-commit floor (a bare
//! single-row INSERT per transaction, same producers, same server and
//! moment; `events-enqueue` runs these three alone), batch enqueue, dispatch with batched
//! claims and completions (plain and transactional handlers), and
//! publish-to-handler latency on an idle queue and at a steady 1,000/s,
//! sustained dispatch with tuned and default autovacuum; and two long modes,
//! `events-soak` (1,000/s) and `events-snapshot` (500/s with a snapshot held
//! open), for `--duration SECS`. Each run uses a schema of its own and drops
//! it afterwards. Runs against a server with `fsync` and
//! `synchronous_commit` on (checked with `SHOW`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgorm::{GenericClient, PgClient};
use pgorm_events::{
    Claim, EventHooks, EventWorkers, Events, EventsConfig, NewEvent, Router, WorkerConfig,
};

use crate::measure;
use crate::Results;

/// The runs of the workload, as table rows.
pub const RUNS: &[&str] = &[
    "enqueue tx x4 producers, wake-ups on",
    "enqueue tx x4 producers, wake-ups off",
    FLOOR,
    "enqueue batch 5000",
    "dispatch no-op, 32 slots",
    "dispatch transactional, 32 slots",
    "latency idle queue",
    "latency steady 1000/s",
    SUSTAINED_TUNED,
    SUSTAINED_DEFAULT,
];

/// The sustained dispatch row with the table's tuned autovacuum settings.
pub const SUSTAINED_TUNED: &str = "dispatch sustained 60 s, 4 pools, tuned autovacuum";
/// The sustained dispatch row with the server's default autovacuum settings.
pub const SUSTAINED_DEFAULT: &str = "dispatch sustained 60 s, 4 pools, default autovacuum";

/// The durable-commit floor of the enqueue rows (their "× raw" column is
/// the ratio to it, round by round).
pub const FLOOR: &str = "floor: bare INSERT tx x4 producers";

/// The runs of the `events-enqueue` workload: the enqueue rows of `events`
/// and their floor, interleaved in each round.
pub const ENQUEUE_RUNS: &[&str] = &[
    "enqueue tx x4 producers, wake-ups on",
    "enqueue tx x4 producers, wake-ups off",
    FLOOR,
];

/// The runs of the `events-dispatch` workload: the sustained dispatch rows
/// of `events`, tuned and default autovacuum.
pub const DISPATCH_RUNS: &[&str] = &[SUSTAINED_TUNED, SUSTAINED_DEFAULT];

/// The run of the `events-soak` workload.
pub const SOAK_RUNS: &[&str] = &["soak 1000/s"];
/// The run of the `events-snapshot` workload.
pub const SNAPSHOT_RUNS: &[&str] = &["held snapshot 500/s"];

/// Metrics of the long modes and the sustained dispatch runs.
pub const LONG_METRICS: &[(&str, &str, bool)] = &[
    ("rate", "handled/s", true),
    ("sent_rate", "published/s", true),
    ("window_min", "slowest 10 s window/s", true),
    ("window_max", "fastest 10 s window/s", true),
    ("first_window", "first window/s", true),
    ("last_window", "last window/s", true),
    ("claim_p99_us", "claim p99 µs", false),
    ("p99_us", "publish-to-handler p99 µs", false),
    ("dead_tuples_max", "dead tuples max", false),
    ("backlog_max", "backlog max", false),
    ("backlog_end", "backlog at end", false),
];

/// The environment variable that carries `--duration SECS` to the child.
pub const DURATION_VAR: &str = "PGORM_BENCH_EVENTS_DURATION";

/// A server whose commits are durable (`fsync`, `synchronous_commit` and
/// `full_page_writes` on: later `-c` settings win over the testkit's).
pub fn durable_server() -> pgorm_testkit::TestServer {
    let options = pgorm_testkit::ServerOptions::default()
        .setting("fsync", "on")
        .setting("synchronous_commit", "on")
        .setting("full_page_writes", "on")
        .setting("shared_buffers", "256MB")
        .setting("max_wal_size", "2GB");
    pgorm_testkit::TestServer::spawn_with(options).expect("a durable server")
}

/// Metrics shown: (key, label, higher is better).
pub const METRICS: &[(&str, &str, bool)] = &[
    ("rate", "events/s", true),
    ("p50_us", "p50 µs", false),
    ("p99_us", "p99 µs", false),
    ("window_min", "slowest 10 s window/s", true),
    ("last_window", "last 10 s window/s", true),
    ("claim_p99_us", "claim p99 µs", false),
    ("dead_tuples_max", "dead tuples max", false),
];

const ENQUEUE_FOR: Duration = Duration::from_secs(3);
const DISPATCH_TOTAL: usize = 40_000;
const LATENCY_SAMPLES: usize = 500;

/// Runs one measurement.
pub async fn run(run: &str, url: &str) -> Results {
    let client = PgClient::connect(url).await.expect("client");
    for setting in ["fsync", "synchronous_commit"] {
        let row = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .expect("SHOW");
        let value: String = row.get(0);
        assert_eq!(value, "on", "the events workload needs {setting}=on");
    }
    let schema = format!("bench_events_{}", std::process::id());
    let events = Events::new(EventsConfig::new().schema(&schema)).expect("config");
    events.migrate(&client).await.expect("migrate");
    let results = match run {
        "enqueue tx x4 producers, wake-ups on" => enqueue(url, &client, &events, true).await,
        "enqueue tx x4 producers, wake-ups off" => enqueue(url, &client, &events, false).await,
        FLOOR => enqueue_floor(url, &client, &schema).await,
        "enqueue batch 5000" => enqueue_batch(&client, &events).await,
        "dispatch no-op, 32 slots" => dispatch(&client, &events, false).await,
        "dispatch transactional, 32 slots" => dispatch(&client, &events, true).await,
        "latency idle queue" => latency(&client, &events).await,
        "latency steady 1000/s" => {
            long(url, &client, &events, 1000, Duration::from_secs(10), false).await
        }
        SUSTAINED_TUNED => sustained(url, &client, &events).await,
        SUSTAINED_DEFAULT => {
            client
                .execute(
                    &format!(
                        "ALTER TABLE \"{schema}\".events RESET (fillfactor, \
                         autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, \
                         autovacuum_vacuum_insert_scale_factor, \
                         autovacuum_vacuum_insert_threshold, autovacuum_analyze_scale_factor, \
                         autovacuum_vacuum_cost_delay)"
                    ),
                    &[],
                )
                .await
                .expect("reset the table's autovacuum settings");
            sustained(url, &client, &events).await
        }
        "soak 1000/s" => long(url, &client, &events, 1000, duration(), false).await,
        "held snapshot 500/s" => long(url, &client, &events, 500, duration(), true).await,
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

/// Four producers, each on a connection of its own, each publishing one
/// event per transaction.
async fn enqueue(url: &str, client: &PgClient, events: &Events, wakeups: bool) -> Results {
    set_wakeups(client, events, wakeups).await;
    four_producers(url, Write::Event(events.clone())).await
}

/// The durable-commit floor for the enqueue runs, on the same server and
/// at the same moment: four producers, each on a connection of its own,
/// each committing one single-row INSERT (a bigint identity and a small
/// jsonb, no index but the primary key, no trigger) per transaction, as
/// pgbench's simplest custom script would.
async fn enqueue_floor(url: &str, client: &PgClient, schema: &str) -> Results {
    client
        .execute(
            &format!(
                "CREATE TABLE \"{schema}\".floor (\
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL)"
            ),
            &[],
        )
        .await
        .expect("create the floor table");
    let insert = format!("INSERT INTO \"{schema}\".floor (payload) VALUES ($1::text::jsonb)");
    four_producers(url, Write::Floor(insert)).await
}

/// What each transaction of [`four_producers`] writes.
#[derive(Clone)]
enum Write {
    /// One event, published.
    Event(Events),
    /// One row, by this INSERT of a jsonb parameter.
    Floor(String),
}

/// Four producers, each on a connection of its own, each committing one
/// `write` per transaction for `ENQUEUE_FOR`; the commit rate.
async fn four_producers(url: &str, write: Write) -> Results {
    let count = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(PgClient::connect(url).await.expect("producer client"));
    }
    let started = Instant::now();
    let producers: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (write, count) = (write.clone(), count.clone());
            tokio::spawn(async move {
                while started.elapsed() < ENQUEUE_FOR {
                    let tx = client.transaction().await.expect("begin");
                    match &write {
                        Write::Event(events) => {
                            let event =
                                NewEvent::new("bench", &serde_json::json!({"n": 1})).unwrap();
                            events.publish(&tx, event).await.expect("publish");
                        }
                        Write::Floor(insert) => {
                            tx.execute(insert, &[&r#"{"n": 1}"#]).await.expect("insert");
                        }
                    }
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

fn duration() -> Duration {
    let seconds = std::env::var(DURATION_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

const PRODUCERS: u64 = 4;

const WINDOW: Duration = Duration::from_secs(10);

/// Claim round trips, from the pool's hook.
#[derive(Clone, Default)]
struct ClaimTimes(Arc<std::sync::Mutex<Vec<f32>>>);

impl EventHooks for ClaimTimes {
    fn on_claim(&self, claim: &Claim) {
        if let Ok(mut times) = self.0.lock() {
            times.push(claim.duration.as_secs_f32() * 1e6);
        }
    }
}

fn p99(values: &[f32]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    sorted.sort_by(f64::total_cmp);
    measure::quantile(&sorted, 0.99)
}

/// Dead tuples and rows of the queue table.
async fn table_state(client: &PgClient, schema: &str) -> (f64, f64) {
    let dead: i64 = client
        .query_one(
            "SELECT COALESCE(max(n_dead_tup), 0) FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname = 'events'",
            &[&schema],
        )
        .await
        .expect("dead tuples")
        .get(0);
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".events"), &[])
        .await
        .expect("backlog")
        .get(0);
    (dead as f64, rows as f64)
}

/// Samples the pool every `WINDOW` until `until` returns true: handled per
/// window, dead tuples and backlog.
struct Windows {
    rates: Vec<f64>,
    dead_max: f64,
    backlog_max: f64,
    backlog_end: f64,
}

/// The events `pools` have handled so far, together.
fn handled(pools: &[Arc<EventWorkers>]) -> u64 {
    pools.iter().map(|pool| pool.stats().processed).sum()
}

async fn sample(
    client: &PgClient,
    schema: &str,
    pools: &[Arc<EventWorkers>],
    length: Duration,
) -> Windows {
    let mut windows = Windows {
        rates: Vec::new(),
        dead_max: 0.0,
        backlog_max: 0.0,
        backlog_end: 0.0,
    };
    let started = Instant::now();
    let mut last = handled(pools);
    let mut last_at = Instant::now();
    while started.elapsed() < length {
        tokio::time::sleep(WINDOW.min(length.saturating_sub(started.elapsed()))).await;
        let processed = handled(pools);
        let now = Instant::now();
        windows
            .rates
            .push((processed - last) as f64 / now.duration_since(last_at).as_secs_f64());
        (last, last_at) = (processed, now);
        let (dead, backlog) = table_state(client, schema).await;
        windows.dead_max = windows.dead_max.max(dead);
        windows.backlog_max = windows.backlog_max.max(backlog);
        windows.backlog_end = backlog;
        eprintln!(
            "  t={:>5.0}s rate={:.0}/s dead={dead} backlog={backlog}",
            started.elapsed().as_secs_f64(),
            windows.rates.last().unwrap()
        );
    }
    windows
}

fn window_results(results: &mut Results, windows: &Windows) {
    // The first window includes the start-up; the last may be short.
    let steady: Vec<f64> = if windows.rates.len() > 3 {
        windows.rates[1..windows.rates.len() - 1].to_vec()
    } else {
        windows.rates.clone()
    };
    let min = steady.iter().copied().fold(f64::INFINITY, f64::min);
    let max = steady.iter().copied().fold(0.0, f64::max);
    results.insert("window_min".into(), min);
    results.insert("window_max".into(), max);
    results.insert("first_window".into(), *steady.first().unwrap_or(&f64::NAN));
    results.insert("last_window".into(), *steady.last().unwrap_or(&f64::NAN));
    results.insert("dead_tuples_max".into(), windows.dead_max);
    results.insert("backlog_max".into(), windows.backlog_max);
    results.insert("backlog_end".into(), windows.backlog_end);
}

/// Publishes at `per_second` (one event per transaction, on a connection of
/// its own) for `length`, the payload carrying its send time; the pool
/// records publish-to-handler latency and claim round trips. With `hold`, a
/// repeatable-read transaction on another connection keeps a snapshot open
/// for the whole run.
async fn long(
    url: &str,
    client: &PgClient,
    events: &Events,
    per_second: u64,
    length: Duration,
    hold: bool,
) -> Results {
    let schema = events.config().schema_name().to_string();
    let holder = if hold {
        let holder = PgClient::connect(url).await.expect("holder client");
        let tx = holder.transaction().await.expect("begin");
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", &[])
            .await
            .expect("repeatable read");
        tx.query_one("SELECT count(*) FROM pg_class", &[])
            .await
            .expect("take the snapshot");
        Some((holder, tx))
    } else {
        None
    };
    let base = Instant::now();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f32>::new()));
    let seen = latencies.clone();
    let router = Router::new().on("bench", move |event| {
        let seen = seen.clone();
        async move {
            let sent: u64 = event.payload["t"].as_u64().unwrap_or_default();
            let now = base.elapsed().as_micros() as u64;
            if let Ok(mut seen) = seen.lock() {
                seen.push(now.saturating_sub(sent) as f32);
            }
            Ok(())
        }
    });
    let claims = ClaimTimes::default();
    let config = WorkerConfig::new()
        .concurrency(32)
        .max_batch(100)
        .hooks(claims.clone());
    let workers = EventWorkers::start(client.clone(), events.clone(), router, config)
        .await
        .expect("workers");
    // Four producers on connections of their own, each at a quarter of the
    // rate: one connection cannot commit 1,000 durable transactions a
    // second on a loaded 2-core machine.
    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        let producer_client = PgClient::connect(url).await.expect("producer client");
        let producer_events = events.clone();
        producers.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < length {
                let due =
                    (started.elapsed().as_secs_f64() * per_second as f64 / PRODUCERS as f64) as u64;
                if sent >= due {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    continue;
                }
                let t = base.elapsed().as_micros() as u64;
                let tx = producer_client.transaction().await.expect("begin");
                let event = NewEvent::new("bench", &serde_json::json!({ "t": t })).unwrap();
                producer_events.publish(&tx, event).await.expect("publish");
                tx.commit().await.expect("commit");
                sent += 1;
            }
            sent
        }));
    }
    let workers = Arc::new(workers);
    let windows = sample(client, &schema, std::slice::from_ref(&workers), length).await;
    let mut sent = 0;
    for producer in producers {
        sent += producer.await.expect("producer");
    }
    let handled = workers.stats().processed;
    let workers = Arc::into_inner(workers).expect("only the sampler held the pool");
    workers.shutdown().await.expect("shutdown");
    if let Some((_holder, tx)) = holder {
        tx.commit().await.expect("end the held snapshot");
    }
    let mut results = rate(handled, length);
    results.insert("sent_rate".into(), sent as f64 / length.as_secs_f64());
    window_results(&mut results, &windows);
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_by(f32::total_cmp);
    let latencies: Vec<f64> = latencies.into_iter().map(f64::from).collect();
    results.insert("p50_us".into(), measure::quantile(&latencies, 0.5));
    results.insert("p99_us".into(), measure::quantile(&latencies, 0.99));
    results.insert("claim_p99_us".into(), p99(&claims.0.lock().unwrap()));
    results
}

/// The sustained dispatch runs' "4 workers": four pools, as four processes
/// would run them, each with its own connections.
const SUSTAINED_POOLS: usize = 4;
/// Handler slots per pool in the sustained runs: a busy pool's claim takes
/// up to this many events and carries as many completions per commit.
const SUSTAINED_SLOTS: usize = 64;

/// Dispatch by [`SUSTAINED_POOLS`] pools for 60 s, with the backlog kept
/// topped up by a batch producer (on a connection of its own): the
/// sustained rate, window by window. The producer tells the backlog from
/// its own count and the pools' processed counters (a `count(*)` over the
/// queue every 20 ms cost the server about a third of a core, more as dead
/// rows piled up).
async fn sustained(url: &str, client: &PgClient, events: &Events) -> Results {
    const LENGTH: Duration = Duration::from_secs(60);
    const INITIAL: u64 = 50_000;
    let schema = events.config().schema_name().to_string();
    fill(events, client, INITIAL as usize).await;
    let claims = ClaimTimes::default();
    let mut pools = Vec::new();
    for _ in 0..SUSTAINED_POOLS {
        let router = Router::new().on("bench", |_event| async { Ok(()) });
        let config = WorkerConfig::new()
            .concurrency(SUSTAINED_SLOTS)
            .max_batch(100)
            .hooks(claims.clone());
        let pool_client = PgClient::connect(url).await.expect("pool client");
        pools.push(Arc::new(
            EventWorkers::start(pool_client, events.clone(), router, config)
                .await
                .expect("workers"),
        ));
    }
    let producer_client = PgClient::connect(url).await.expect("producer client");
    let producer_events = events.clone();
    let producer_pools = pools.clone();
    let producer = tokio::spawn(async move {
        let started = Instant::now();
        let mut published = INITIAL;
        while started.elapsed() < LENGTH {
            let depth = published.saturating_sub(handled(&producer_pools));
            if depth < 40_000 {
                fill(&producer_events, &producer_client, 10_000).await;
                published += 10_000;
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let started = Instant::now();
    let windows = sample(client, &schema, &pools, LENGTH).await;
    let elapsed = started.elapsed();
    producer.await.expect("producer");
    let processed = handled(&pools);
    for pool in pools {
        let pool = Arc::into_inner(pool).expect("the producer is done with the pool");
        pool.shutdown().await.expect("shutdown");
    }
    let mut results = rate(processed, elapsed);
    window_results(&mut results, &windows);
    results.insert("claim_p99_us".into(), p99(&claims.0.lock().unwrap()));
    results
}
