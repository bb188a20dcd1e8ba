//! The `relay` workload: pgorm-events' relay to NATS JetStream. Each run
//! starts a throwaway nats-server (or uses `NATS_URL`), a schema of its own,
//! and the relay on a runtime of its own (one thread).
//!
//! - `relay backlog 100k`: 100,000 relay-lane events committed, then the
//!   relay started; events per second until every one is acknowledged by
//!   the stream and marked relayed. Baseline in the same run: the same
//!   payloads published to a stream straight from async-nats, pipelined in
//!   batches of the same size (no database).
//! - `relay latency at 1,000/s`: one event per transaction at 1,000/s for
//!   5 s; commit (the commit's return) to the message's delivery by an
//!   ordered JetStream consumer (so it was stored), p50 and p99.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, context::Publish, stream};
use futures_util::StreamExt;
use pgorm::{GenericClient, PgClient};
use pgorm_events::relay::{store_rules, Relay, RelayConfig};
use pgorm_events::{Events, EventsConfig, NewEvent};

use crate::measure;
use crate::Results;

/// The runs of the workload, as table rows.
pub const RUNS: &[&str] = &["relay backlog 100k", "relay latency at 1,000/s"];

/// Metrics shown: (key, label, higher is better).
pub const METRICS: &[(&str, &str, bool)] = &[
    ("rate", "events/s to acked stream", true),
    ("baseline_rate", "JetStream alone events/s", true),
    ("ratio", "× JetStream alone", true),
    ("p50_us", "commit→stream p50 µs", false),
    ("p99_us", "commit→stream p99 µs", false),
    ("load1", "load avg (1 min)", false),
];

const BACKLOG: usize = 100_000;
const BATCH: usize = 1000;
const LATENCY_FOR: Duration = Duration::from_secs(5);

/// Runs one measurement.
pub async fn run(run: &str, url: &str) -> Results {
    let (nats_url, _nats) = match std::env::var("NATS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = pgorm_testkit::NatsServer::spawn().expect("nats-server");
            (server.url(), Some(server))
        }
    };
    let client = PgClient::connect(url).await.expect("client");
    let schema = format!("bench_relay_{}", std::process::id());
    let stream = format!("BENCH_RELAY_{}", std::process::id());
    let events = Events::new(EventsConfig::new().schema(&schema)).expect("config");
    events.migrate(&client).await.expect("migrate");
    let config = RelayConfig::new(nats_url.clone())
        .stream(stream.clone())
        .subject_prefix(format!("bench{}", std::process::id()))
        .rule("bench.*")
        .batch_size(BATCH)
        .poll_interval(Duration::from_millis(2));
    let nats = async_nats::connect(nats_url.as_str()).await.expect("nats");
    let js = jetstream::new(nats);
    let mut results = match run {
        "relay backlog 100k" => backlog(url, &client, &events, config, &js).await,
        "relay latency at 1,000/s" => latency(url, &client, &events, config, &stream, &js).await,
        other => panic!("unknown relay run {other}"),
    };
    let _ = js.delete_stream(&stream).await;
    client
        .execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), &[])
        .await
        .expect("drop the schema");
    results.insert("load1".into(), load_average());
    results
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn payload(n: usize) -> serde_json::Value {
    serde_json::json!({"order": n, "amount": 1234, "currency": "EUR"})
}

/// Runs the relay on a runtime of its own thread, as a deployment would.
struct Background {
    relay: Arc<Relay>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Background {
    async fn start(url: &str, events: &Events, config: RelayConfig) -> Background {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("relay runtime");
        let (url, events) = (url.to_owned(), events.clone());
        let relay = runtime
            .spawn(async move {
                let client = PgClient::connect(&url).await.expect("relay client");
                Relay::start(client, events, config).await.expect("relay")
            })
            .await
            .expect("relay task");
        Background {
            relay: Arc::new(relay),
            runtime: Some(runtime),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn backlog(
    url: &str,
    client: &PgClient,
    events: &Events,
    config: RelayConfig,
    js: &jetstream::Context,
) -> Results {
    // Baseline: the same payloads straight to a stream of their own.
    let base_stream = format!("BENCH_BASE_{}", std::process::id());
    let base_subject = format!("base{}", std::process::id());
    js.get_or_create_stream(stream::Config {
        name: base_stream.clone(),
        subjects: vec![format!("{base_subject}.>")],
        duplicate_window: Duration::from_secs(120),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("baseline stream");
    let bodies: Vec<Vec<u8>> = (0..BACKLOG)
        .map(|n| serde_json::to_vec(&payload(n)).expect("json"))
        .collect();
    let started = Instant::now();
    for (chunk_no, chunk) in bodies.chunks(BATCH).enumerate() {
        let mut acks = Vec::with_capacity(chunk.len());
        for (i, body) in chunk.iter().enumerate() {
            let message = Publish::build()
                .payload(body.clone().into())
                .message_id(format!("{}", chunk_no * BATCH + i));
            acks.push(
                js.send_publish(format!("{base_subject}.bench.created"), message)
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("ack");
        }
    }
    let baseline = BACKLOG as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream(&base_stream).await;

    store_rules(client, events, &["bench.*".to_owned()])
        .await
        .expect("rules");
    for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(5000) {
        let batch = chunk
            .iter()
            .map(|n| NewEvent::new("bench.created", &payload(*n)).expect("event"))
            .collect();
        events.publish_batch(client, batch).await.expect("publish");
    }
    let started = Instant::now();
    let relay = Background::start(url, events, config).await;
    while relay.relay.stats().relayed < BACKLOG as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = BACKLOG as f64 / started.elapsed().as_secs_f64();
    Results::from([
        ("rate".to_string(), rate),
        ("baseline_rate".to_string(), baseline),
        ("ratio".to_string(), rate / baseline),
    ])
}

async fn latency(
    url: &str,
    client: &PgClient,
    events: &Events,
    config: RelayConfig,
    stream_name: &str,
    js: &jetstream::Context,
) -> Results {
    let relay = Background::start(url, events, config).await;
    while !relay.relay.stats().active {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stream = js.get_stream(stream_name).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let arrived: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let reader = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let at = Instant::now();
                let id: i64 = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Pgorm-Event-Id"))
                    .and_then(|v| v.as_str().parse().ok())
                    .expect("event id header");
                arrived.lock().unwrap().insert(id, at);
            }
        })
    };
    let total = (LATENCY_FOR.as_millis()) as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    for n in 0..total {
        ticker.tick().await;
        let tx = client.transaction().await.expect("begin");
        let id = events
            .publish(
                &tx,
                NewEvent::new("bench.created", &payload(n)).expect("event"),
            )
            .await
            .expect("publish")
            .id()
            .expect("inserted");
        tx.commit().await.expect("commit");
        committed.lock().unwrap().insert(id, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    drop(relay);
    let arrived = arrived.lock().unwrap().clone();
    let committed = committed.lock().unwrap().clone();
    assert_eq!(arrived.len(), total, "every event reached the stream");
    // A message can arrive before its commit's return was recorded: 0.
    let mut samples: Vec<f64> = committed
        .iter()
        .map(|(id, at)| arrived[id].saturating_duration_since(*at).as_secs_f64() * 1e6)
        .collect();
    samples.sort_by(f64::total_cmp);
    Results::from([
        ("p50_us".to_string(), measure::quantile(&samples, 0.50)),
        ("p99_us".to_string(), measure::quantile(&samples, 0.99)),
    ])
}
