//! pgorm's LISTEN/NOTIFY benchmark.
//!
//! `cargo run --release --manifest-path crates/pgorm-bench/Cargo.toml -- [--rounds N] [WORKLOAD…]`
//! (workloads: `throughput`, `latency`, `burst`, `reconnect`, `events`, `changes`, `relay`,
//! and the long `events-soak` and `events-snapshot`, `--duration SECS`; `relay` is not in the default set:
//! it needs `nats-server`, see `relay.rs`; `events-enqueue` runs only the enqueue rows of `events`
//! beside their durable-commit floor, `events-dispatch` only its two sustained dispatch rows)
//!
//! `… -- callgrind [--small N] [--large N]` (or `scripts/callgrind`) prints
//! instructions per notification of each throughput peer under
//! `valgrind --tool=callgrind` instead (see `callgrind.rs`).
//!
//! Runs every peer on the same server and publisher, interleaved within each
//! round, each measurement in a child process of its own (so peak memory is
//! that run's), and prints markdown tables: medians over the rounds with min
//! and max, and ratios to the raw tokio-postgres loop of the same round.
//! Uses `DATABASE_URL` if set, else a throwaway server from pgorm-testkit.
//!
//! The throughput workload also runs two peers over TLS (rustls): the raw
//! loop and pgorm's `PgListener`, with the connector `pgorm::tls` provides;
//! their ratios are to the raw TLS loop of the same round. With the
//! throwaway server they use its certificate authority; with `DATABASE_URL`,
//! the CA file named by `PGSSLROOTCERT`, and they are skipped (with a
//! printed line) when there is none or the server does not accept TLS.

mod callgrind;
mod changes;
mod events;
mod measure;
mod peers;
mod relay;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use peers::{Consumer, Received, HUB, LISTENER, LISTENER_BATCH, LISTENER_TLS, RAW, RAW_TLS, SQLX};
use pgorm::listen::QueuePolicy;

const THROUGHPUT_TOTAL: i64 = 200_000;
const THROUGHPUT_TX: i64 = 1_000;
const LATENCY_TOTAL: usize = 2_000;
const BURST_TOTAL: i64 = 1_000_000;
const BURST_TX: i64 = 10_000;
const BURST_STALL: Duration = Duration::from_secs(5);
const RECONNECT_TOTAL: usize = 300;
const RECONNECT_CADENCE: Duration = Duration::from_millis(10);
const RECONNECT_KILL_AT: usize = 100;

/// One measurement's results, by metric name.
type Results = BTreeMap<String, f64>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("callgrind") => return callgrind::parent(&args[1..]),
        Some("backlog") => return callgrind::child(&args[1], &args[2], &args[3]),
        _ => {}
    }
    if args.first().map(String::as_str) == Some("child") {
        let results = child(&args[1], &args[2], &args[3]);
        let line: Vec<String> = results.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("RESULT {}", line.join(" "));
        return;
    }
    parent(&args);
}

/// The peers of each workload; `peer/variant` names a configuration. The
/// TLS peers run only when `tls` is true.
fn runs_of(workload: &str, tls: bool) -> Vec<&'static str> {
    match workload {
        "throughput" if tls => {
            let mut runs = runs_of(workload, false);
            runs.extend([RAW_TLS, LISTENER_TLS]);
            runs
        }
        "throughput" => vec![
            RAW,
            LISTENER,
            LISTENER_BATCH,
            "pgorm PgNotifyHub x1",
            "pgorm PgNotifyHub x100",
            "pgorm PgNotifyHub x100 next_ref",
            "pgorm PgNotifyHub x100 next_batch",
            SQLX,
            "publisher alone",
        ],
        "latency" => vec![RAW, LISTENER, "pgorm PgNotifyHub x1", SQLX],
        "burst" => vec![
            RAW,
            "pgorm PgListener DropOldest",
            "pgorm PgListener DropNewest",
            "pgorm PgListener BlockProducer",
            SQLX,
        ],
        "reconnect" => vec![LISTENER, "pgorm PgNotifyHub x1", SQLX],
        "events" => events::RUNS.to_vec(),
        "changes" => changes::RUNS.to_vec(),
        "events-soak" => events::SOAK_RUNS.to_vec(),
        "events-enqueue" => events::ENQUEUE_RUNS.to_vec(),
        "events-dispatch" => events::DISPATCH_RUNS.to_vec(),
        "events-snapshot" => events::SNAPSHOT_RUNS.to_vec(),
        "relay" => relay::RUNS.to_vec(),
        other => panic!("unknown workload {other}"),
    }
}

fn parent(args: &[String]) {
    let mut rounds = 3;
    let mut workloads = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = iter
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            "--duration" => {
                let seconds: u64 = iter
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--duration SECS");
                std::env::set_var(events::DURATION_VAR, seconds.to_string());
            }
            workload => workloads.push(workload.to_string()),
        }
    }
    if workloads.is_empty() {
        workloads = [
            "throughput",
            "latency",
            "burst",
            "reconnect",
            "events",
            "changes",
        ]
        .map(String::from)
        .to_vec();
    }
    let (url, server) = pgorm_testkit::database_url_or_spawn().expect("a database");
    // The events workloads need durable commits; the testkit's server has
    // them off.
    let durable = (server.is_some() && workloads.iter().any(|w| w.starts_with("events")))
        .then(events::durable_server);
    let exe = std::env::current_exe().expect("own path");

    println!("# pgorm LISTEN/NOTIFY benchmark\n");
    println!("{}\n", machine_description(&url));
    println!("Rounds: {rounds}. Each figure: median (min–max) over the rounds; ratio: median over rounds of (peer / raw loop of the same round; for the TLS rows, the raw TLS loop of the same round).\n");
    let tls = if workloads.iter().any(|w| w == "throughput") {
        match tls_setup(&url, server.as_ref()) {
            Ok(tls) => Some(tls),
            Err(why) => {
                println!("TLS peers skipped: {why}.\n");
                None
            }
        }
    } else {
        None
    };

    for workload in &workloads {
        let runs = runs_of(workload, tls.is_some());
        // results[run][round]
        let mut results: BTreeMap<&str, Vec<Results>> = BTreeMap::new();
        for round in 0..rounds {
            for run in &runs {
                eprintln!("{workload}: round {} of {rounds}: {run}", round + 1);
                let mut command = Command::new(&exe);
                let url = match &durable {
                    Some(server) if workload.starts_with("events") => server.url(),
                    _ => url.clone(),
                };
                command.args(["child", workload, run, &url]);
                if let Some((tls_url, ca_pem)) = &tls {
                    command
                        .env(peers::TLS_URL_VAR, tls_url)
                        .env(peers::TLS_CA_VAR, ca_pem);
                }
                let output = command.output().expect("run a child");
                let stdout = String::from_utf8_lossy(&output.stdout);
                let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
                    eprintln!("{run} failed: {}", String::from_utf8_lossy(&output.stderr));
                    continue;
                };
                let parsed: Results = line
                    .split_whitespace()
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
                    .collect();
                results.entry(run).or_default().push(parsed);
            }
        }
        print_table(workload, &runs, &results);
    }
}

/// The TLS URL and CA certificate (PEM) for the TLS peers, checked with one
/// TLS connection; or why there are none.
fn tls_setup(
    url: &str,
    server: Option<&pgorm_testkit::TestServer>,
) -> Result<(String, String), String> {
    let (tls_url, ca_pem) = match server {
        // The server's certificate names `localhost`, as in the tests.
        Some(server) => (
            with_sslmode_require(&url.replace("127.0.0.1", "localhost")),
            server.ca_certificate_pem().to_string(),
        ),
        None => {
            let path = std::env::var("PGSSLROOTCERT").map_err(|_| {
                "DATABASE_URL is set and PGSSLROOTCERT names no CA certificate file".to_string()
            })?;
            let pem = std::fs::read_to_string(&path)
                .map_err(|error| format!("cannot read PGSSLROOTCERT ({path}): {error}"))?;
            (with_sslmode_require(url), pem)
        }
    };
    let connector = pgorm::tls::rustls_connector_with_pem_roots(ca_pem.as_bytes())
        .map_err(|error| format!("unusable CA certificate: {error}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(async {
            let (client, connection) = tokio_postgres::connect(&tls_url, connector).await?;
            tokio::spawn(connection);
            client.simple_query("SELECT 1").await
        })
        .map_err(|error| {
            // tokio-postgres puts the reason (e.g. "server does not support
            // TLS") in the source.
            let reason = std::error::Error::source(&error)
                .map_or_else(String::new, |source| format!(": {source}"));
            format!("no TLS connection to the server: {error}{reason}")
        })?;
    Ok((tls_url, ca_pem))
}

/// `url` with `sslmode=require` in place of any `sslmode` it has.
fn with_sslmode_require(url: &str) -> String {
    if !url.contains("://") {
        // key=value form: the last setting wins.
        return format!("{url} sslmode=require");
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslmode="))
        .collect();
    params.push("sslmode=require");
    format!("{base}?{}", params.join("&"))
}

fn machine_description(url: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let version = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(connection);
        let row = client.query_one("SHOW server_version", &[]).await.ok()?;
        Some(row.get::<_, String>(0))
    });
    format!(
        "Machine: {cpu}, {cores} cores. PostgreSQL {} on loopback. Client: tokio current-thread runtime, release build.",
        version.unwrap_or_else(|| "?".into())
    )
}

/// Metrics shown per workload: (key, label, higher is better).
fn metrics_of(workload: &str) -> Vec<(&'static str, &'static str, bool)> {
    match workload {
        "throughput" => vec![
            ("rate", "notifications/s", true),
            ("cpu_per_100k", "client CPU s / 100k", false),
            ("publish_rate", "publisher notifications/s", true),
            ("dropped", "dropped", false),
        ],
        "latency" => vec![
            ("p50_us", "p50 µs", false),
            ("p99_us", "p99 µs", false),
            ("p999_us", "p99.9 µs", false),
            ("max_us", "max µs", false),
        ],
        "burst" => vec![
            ("peak_rss_mib", "peak RSS MiB", false),
            ("received", "received", true),
            ("delivered", "delivered", true),
            ("dropped", "dropped", false),
            ("lost", "unaccounted", false),
            ("drain_rate", "drain notifications/s", true),
        ],
        "reconnect" => vec![
            ("reconnect_ms", "first notification again, ms", false),
            ("missed", "missed of 300", false),
            ("marker_ms", "Reconnected marker, ms", false),
            ("connect_ms", "one plain connect, ms", false),
        ],
        "events" | "events-dispatch" => events::METRICS.to_vec(),
        "changes" => changes::METRICS.to_vec(),
        "events-soak" | "events-snapshot" => events::LONG_METRICS.to_vec(),
        "events-enqueue" => events::METRICS[..1].to_vec(),
        "relay" => relay::METRICS.to_vec(),
        _ => Vec::new(),
    }
}

fn print_table(workload: &str, runs: &[&str], results: &BTreeMap<&str, Vec<Results>>) {
    let metrics = metrics_of(workload);
    println!("## {workload}\n");
    let mut header = vec!["peer".to_string()];
    let base = if workload.starts_with("events") {
        "× floor"
    } else {
        "× raw"
    };
    for (_, label, _) in &metrics {
        header.push(label.to_string());
        header.push(base.to_string());
    }
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for run in runs {
        let Some(rounds) = results.get(run) else {
            continue;
        };
        // The events enqueue rows are compared with the durable-commit
        // floor of the same round.
        let raw = if workload.starts_with("events") {
            results
                .get(events::FLOOR)
                .filter(|_| run.starts_with("enqueue tx"))
        } else {
            results.get(if run.ends_with(" TLS") { RAW_TLS } else { RAW })
        };
        let mut row = vec![run.to_string()];
        for (key, _, _) in &metrics {
            let values: Vec<f64> = rounds
                .iter()
                .map(|r| r.get(*key).copied().unwrap_or(f64::NAN))
                .collect();
            let (median, min, max) = measure::summary(&values);
            row.push(format_value(median, min, max));
            let ratio = raw.map(|raw| {
                let ratios: Vec<f64> = rounds
                    .iter()
                    .zip(raw)
                    .map(|(r, base)| {
                        r.get(*key).copied().unwrap_or(f64::NAN)
                            / base.get(*key).copied().unwrap_or(f64::NAN)
                    })
                    .filter(|v| v.is_finite())
                    .collect();
                measure::summary(&ratios).0
            });
            row.push(match ratio {
                Some(r) if r.is_finite() => format!("{r:.2}"),
                _ => "–".into(),
            });
        }
        println!("| {} |", row.join(" | "));
    }
    println!();
}

fn format_value(median: f64, min: f64, max: f64) -> String {
    if median.is_nan() {
        return "–".into();
    }
    let one = |v: f64| {
        if v.abs() >= 1000.0 {
            format!("{:.0}", v)
        } else if v.abs() >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.3}")
        }
    };
    if (max - min).abs() < f64::EPSILON {
        one(median)
    } else {
        format!("{} ({}–{})", one(median), one(min), one(max))
    }
}

// ---- one measurement, in a child process -----------------------------------

fn child(workload: &str, run: &str, url: &str) -> Results {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        match workload {
            "throughput" => throughput(run, url).await,
            "latency" => latency(run, url).await,
            "burst" => burst(run, url).await,
            "reconnect" => reconnect(run, url).await,
            "changes" => changes::run(run, url).await,
            w if w.starts_with("events") => events::run(run, url).await,
            "relay" => relay::run(run, url).await,
            other => panic!("unknown workload {other}"),
        }
    })
}

/// A unique channel per measurement, so a straggler of one run cannot reach
/// the next.
fn channel(workload: &str) -> String {
    format!("bench_{workload}_{}", std::process::id())
}

fn peer_and_policy(run: &str) -> (&'static str, QueuePolicy) {
    match run {
        RAW_TLS => (RAW_TLS, QueuePolicy::DropOldest),
        LISTENER_TLS => (LISTENER_TLS, QueuePolicy::DropOldest),
        r if r.starts_with("pgorm PgNotifyHub") => (HUB, QueuePolicy::DropOldest),
        "pgorm PgListener DropNewest" => (LISTENER, QueuePolicy::DropNewest),
        "pgorm PgListener BlockProducer" => (LISTENER, QueuePolicy::BlockProducer),
        LISTENER_BATCH => (LISTENER_BATCH, QueuePolicy::DropOldest),
        r if r.starts_with("pgorm PgListener") => (LISTENER, QueuePolicy::DropOldest),
        RAW => (RAW, QueuePolicy::DropOldest),
        SQLX => (SQLX, QueuePolicy::DropOldest),
        other => panic!("unknown run {other}"),
    }
}

/// Runs `publish` on a thread of its own (its own runtime and connection),
/// once `start` is released; returns its elapsed time.
fn publisher<F, Fut>(
    url: &str,
    publish: F,
) -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Duration>,
)
where
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (start, started) = std::sync::mpsc::channel::<()>();
    let url = url.to_string();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("publisher connect");
            tokio::spawn(connection);
            started.recv().expect("start signal");
            let t0 = Instant::now();
            publish(client).await;
            t0.elapsed()
        })
    });
    (start, handle)
}

async fn publish_bulk(client: &tokio_postgres::Client, channel: &str, total: i64, per_tx: i64) {
    let mut first = 0;
    while first < total {
        let last = (first + per_tx).min(total) - 1;
        client
            .execute(
                "SELECT pg_notify($1, lpad(n::text, 16, '0')) FROM generate_series($2::int8, $3::int8) AS n",
                &[&channel, &first, &last],
            )
            .await
            .expect("publish");
        first = last + 1;
    }
}

async fn throughput(run: &str, url: &str) -> Results {
    let channel = channel("throughput");
    let total = THROUGHPUT_TOTAL;
    let ch = channel.clone();
    let (start, publisher) = publisher(url, move |client| async move {
        publish_bulk(&client, &ch, total, THROUGHPUT_TX).await;
    });
    let mut results = Results::new();
    if run == "publisher alone" {
        start.send(()).unwrap();
        let elapsed = publisher.join().unwrap();
        results.insert("publish_rate".into(), total as f64 / elapsed.as_secs_f64());
        return results;
    }
    let (elapsed, cpu, dropped) = if let Some((subscribers, read)) = peers::hub_run(run) {
        // "x100" reads one shared notification at a time, "x100 next_ref"
        // one lent notification at a time, "x100 next_batch" whole shared
        // batches.
        let (_hub, subscriptions) = peers::hub_with_subscribers(url, &channel, subscribers).await;
        let cpu0 = measure::thread_cpu();
        let t0 = Instant::now();
        start.send(()).unwrap();
        let tasks: Vec<_> = subscriptions
            .into_iter()
            .map(|subscription| {
                tokio::spawn(peers::drain_subscription(subscription, total as u64, read))
            })
            .collect();
        let mut dropped = 0;
        for task in tasks {
            dropped += task.await.unwrap();
        }
        (t0.elapsed(), measure::thread_cpu() - cpu0, dropped)
    } else {
        let (peer, policy) = peer_and_policy(run);
        let mut consumer = Consumer::connect(peer, url, &channel, "bench_throughput", policy).await;
        let cpu0 = measure::thread_cpu();
        let t0 = Instant::now();
        start.send(()).unwrap();
        let (_, dropped) = consumer.count(total as u64).await;
        (t0.elapsed(), measure::thread_cpu() - cpu0, dropped)
    };
    let published = publisher.join().unwrap();
    results.insert("rate".into(), total as f64 / elapsed.as_secs_f64());
    results.insert(
        "cpu_per_100k".into(),
        cpu.as_secs_f64() * 100_000.0 / total as f64,
    );
    results.insert(
        "publish_rate".into(),
        total as f64 / published.as_secs_f64(),
    );
    results.insert("dropped".into(), dropped as f64);
    results
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn latency(run: &str, url: &str) -> Results {
    let channel = channel("latency");
    let (peer, policy) = peer_and_policy(run);
    let mut consumer = Consumer::connect(peer, url, &channel, "bench_latency", policy).await;
    let ch = channel.clone();
    let (start, publisher) = publisher(url, move |client| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..LATENCY_TOTAL {
            tick.tick().await;
            let sent = now_nanos().to_string();
            client
                .execute("SELECT pg_notify($1, $2)", &[&ch, &sent])
                .await
                .expect("publish");
        }
    });
    start.send(()).unwrap();
    let mut latencies = Vec::with_capacity(LATENCY_TOTAL);
    while latencies.len() < LATENCY_TOTAL {
        match consumer.next(true).await {
            Some(Received::Notification(Some(payload))) => {
                let sent: u128 = payload.parse().unwrap();
                latencies.push((now_nanos().saturating_sub(sent)) as f64 / 1000.0);
            }
            Some(_) => {}
            None => break,
        }
    }
    publisher.join().unwrap();
    latencies.sort_by(f64::total_cmp);
    let mut results = Results::new();
    results.insert("p50_us".into(), measure::quantile(&latencies, 0.5));
    results.insert("p99_us".into(), measure::quantile(&latencies, 0.99));
    results.insert("p999_us".into(), measure::quantile(&latencies, 0.999));
    results.insert(
        "max_us".into(),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    results
}

async fn burst(run: &str, url: &str) -> Results {
    let channel = channel("burst");
    let (peer, policy) = peer_and_policy(run);
    let mut consumer = Consumer::connect(peer, url, &channel, "bench_burst", policy).await;
    let ch = channel.clone();
    let (start, publisher) = publisher(url, move |client| async move {
        publish_bulk(&client, &ch, BURST_TOTAL, BURST_TX).await;
    });
    start.send(()).unwrap();
    // The consumer stalls for the burst, and until the publisher is done, so
    // that the drain below measures the client alone.
    tokio::time::sleep(BURST_STALL).await;
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publisher.join().unwrap();
    let t0 = Instant::now();
    let (delivered, dropped) = consumer.count(BURST_TOTAL as u64).await;
    let drain = t0.elapsed();
    let received = consumer.pgorm_received().unwrap_or(delivered);
    let mut results = Results::new();
    results.insert("peak_rss_mib".into(), measure::peak_rss_mib());
    results.insert("received".into(), received as f64);
    results.insert("delivered".into(), delivered as f64);
    results.insert("dropped".into(), dropped as f64);
    results.insert(
        "lost".into(),
        (BURST_TOTAL as u64 - delivered - dropped) as f64,
    );
    results.insert("drain_rate".into(), delivered as f64 / drain.as_secs_f64());
    results
}

async fn reconnect(run: &str, url: &str) -> Results {
    let channel = channel("reconnect");
    let application_name = format!("bench_reconnect_{}", std::process::id());
    let (peer, policy) = peer_and_policy(run);
    let mut consumer = Consumer::connect(peer, url, &channel, &application_name, policy).await;
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let killed = killed_at.clone();
    let ch = channel.clone();
    let (start, publisher) = publisher(url, move |client| async move {
        let mut tick = tokio::time::interval(RECONNECT_CADENCE);
        for seq in 0..RECONNECT_TOTAL {
            tick.tick().await;
            if seq == RECONNECT_KILL_AT {
                client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                        &[&application_name],
                    )
                    .await
                    .expect("terminate");
                *killed.lock().unwrap() = Some(Instant::now());
            }
            client
                .execute("SELECT pg_notify($1, $2)", &[&ch, &seq.to_string()])
                .await
                .expect("publish");
        }
    });
    start.send(()).unwrap();
    let mut seen = vec![false; RECONNECT_TOTAL];
    let mut back_after = None;
    let mut marker_after = None;
    let deadline =
        Instant::now() + RECONNECT_CADENCE * RECONNECT_TOTAL as u32 + Duration::from_secs(3);
    while let Ok(Some(received)) =
        tokio::time::timeout_at(deadline.into(), consumer.next(true)).await
    {
        if let Received::Reconnected = received {
            marker_after = killed_at.lock().unwrap().map(|killed| killed.elapsed());
        }
        if let Received::Notification(Some(payload)) = received {
            let seq: usize = payload.parse().unwrap();
            seen[seq] = true;
            if seq >= RECONNECT_KILL_AT && back_after.is_none() {
                let killed = killed_at
                    .lock()
                    .unwrap()
                    .expect("killed before it was sent");
                back_after = Some(killed.elapsed());
            }
            if seq == RECONNECT_TOTAL - 1 {
                break;
            }
        }
    }
    publisher.join().unwrap();
    let mut results = Results::new();
    results.insert(
        "reconnect_ms".into(),
        back_after.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
    );
    results.insert("missed".into(), seen.iter().filter(|s| !**s).count() as f64);
    results.insert(
        "marker_ms".into(),
        marker_after.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
    );
    // What one new connection costs on this server (TCP, startup, SCRAM).
    let t0 = Instant::now();
    let fresh = tokio_postgres::connect(url, tokio_postgres::NoTls).await;
    results.insert("connect_ms".into(), t0.elapsed().as_secs_f64() * 1000.0);
    drop(fresh);
    results
}
