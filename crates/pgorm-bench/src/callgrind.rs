//! Instructions per notification under `valgrind --tool=callgrind`: figures
//! that do not move with the machine's load, for differences of a few
//! percent that the timed runs cannot show.
//!
//! `pgorm-bench callgrind [--small N] [--large N]` runs each peer twice in a
//! child under callgrind, on the same backlog: the child connects and
//! listens, then, while its runtime is idle, a publisher thread commits the
//! notifications (1000 per transaction, 16-byte payloads); only then does
//! the child read them all, as fast as it can. The figure is the child's
//! main thread (the consumer, with every task of its runtime) counted by
//! callgrind, as (instructions with the large backlog - with the small one)
//! / (large - small): connecting, listening and exiting cancel out.

use std::process::Command;
use std::time::Duration;

use pgorm::listen::QueuePolicy;

use crate::peers::{self, Consumer, LISTENER, LISTENER_BATCH, RAW, SQLX};

/// The runs measured, as table rows.
const RUNS: &[&str] = &[
    RAW,
    LISTENER,
    LISTENER_BATCH,
    "pgorm PgNotifyHub x1",
    "pgorm PgNotifyHub x100",
    "pgorm PgNotifyHub x100 next_ref",
    "pgorm PgNotifyHub x100 next_batch",
    SQLX,
];

const SMALL: u64 = 1_000;
const LARGE: u64 = 11_000;

/// The parent: runs every peer under callgrind and prints the table.
pub fn parent(args: &[String]) {
    let (mut small, mut large) = (SMALL, LARGE);
    // `--only NAME` (repeatable): just the peers whose name contains NAME,
    // and the raw loop for the ratio.
    let mut only: Vec<String> = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = || -> u64 {
            iter.clone()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a count")
        };
        match arg.as_str() {
            "--small" => small = value(),
            "--large" => large = value(),
            "--only" => only.push(iter.clone().next().expect("a peer name").clone()),
            _ => continue,
        }
        iter.next();
    }
    assert!(large > small, "--large must exceed --small");
    let (url, _server) = pgorm_testkit::database_url_or_spawn().expect("a database");
    let exe = std::env::current_exe().expect("own path");
    // PGORM_BENCH_CALLGRIND_DIR keeps callgrind's files there, for
    // callgrind_annotate.
    let keep = std::env::var_os("PGORM_BENCH_CALLGRIND_DIR").map(std::path::PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("pgorm-callgrind-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("a directory for callgrind's files");

    println!("## callgrind: instructions per notification\n");
    println!(
        "Backlog of {large} (minus {small}) notifications, read after they were all committed; \
         consumer thread only; `valgrind --tool=callgrind`.\n"
    );
    println!("| peer | instructions / notification | × raw | dropped |");
    println!("|---|---|---|---|");
    let mut raw = None;
    let wanted =
        |run: &str| run == RAW || only.is_empty() || only.iter().any(|o| run.contains(o.as_str()));
    for run in RUNS.iter().filter(|run| wanted(run)) {
        eprintln!("callgrind: {run}");
        let mut figures = Vec::new();
        let mut dropped = 0;
        for count in [small, large] {
            match measure_once(&exe, &dir, run, count, &url) {
                Ok((instructions, lost)) => {
                    figures.push(instructions);
                    dropped += lost;
                }
                Err(why) => eprintln!("{run} ({count}) failed: {why}"),
            }
        }
        let [at_small, at_large] = figures[..] else {
            println!("| {run} | – | – | – |");
            continue;
        };
        let per = (at_large as f64 - at_small as f64) / (large - small) as f64;
        if *run == RAW {
            raw = Some(per);
        }
        let ratio = raw.map_or("–".into(), |raw| format!("{:.2}", per / raw));
        println!("| {run} | {per:.0} | {ratio} | {dropped} |");
    }
    println!();
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs one child under callgrind; returns the instructions of its main
/// thread and how many notifications it saw dropped.
fn measure_once(
    exe: &std::path::Path,
    dir: &std::path::Path,
    run: &str,
    count: u64,
    url: &str,
) -> Result<(u64, u64), String> {
    let out = dir.join(format!("{}-{count}", run.replace(' ', "_")));
    let _ = std::fs::remove_file(format!("{}-01", out.display()));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--separate-threads=yes")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["backlog", run, &count.to_string(), url])
        .output()
        .map_err(|error| format!("cannot run valgrind: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(dropped) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("DROPPED "))
        .and_then(|n| n.trim().parse().ok())
    else {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    };
    // With --separate-threads, thread 1 (the main thread) gets "-01".
    let main_thread = format!("{}-01", out.display());
    let text = std::fs::read_to_string(&main_thread)
        .map_err(|error| format!("cannot read {main_thread}: {error}"))?;
    let instructions = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {main_thread}"))?;
    Ok((instructions, dropped))
}

/// The child: connects `run`, has `count` notifications committed while it
/// does not read, then reads them all. Prints `DROPPED n`.
pub fn child(run: &str, count: &str, url: &str) {
    let count: u64 = count.parse().expect("a count");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let channel = format!("bench_callgrind_{}", std::process::id());
    let hub = peers::hub_run(run);
    let mut consumer = None;
    let mut subscribers = None;
    runtime.block_on(async {
        match hub {
            Some((n, _)) => subscribers = Some(peers::hub_with_subscribers(url, &channel, n).await),
            None => {
                consumer = Some(
                    Consumer::connect(
                        run,
                        url,
                        &channel,
                        "bench_callgrind",
                        QueuePolicy::DropOldest,
                    )
                    .await,
                );
            }
        }
        // Let the driver settle (LISTEN acknowledged, health checks idle).
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    // The runtime is not driven here: everything waits in the server and
    // the socket until the reads below.
    publish(url, &channel, count);
    let dropped = runtime.block_on(async {
        if let Some(mut consumer) = consumer {
            return consumer.count(count).await.1;
        }
        let (_hub, subscriptions) = subscribers.expect("a hub");
        let (_, read) = hub.expect("a hub run");
        let tasks: Vec<_> = subscriptions
            .into_iter()
            .map(|subscription| tokio::spawn(peers::drain_subscription(subscription, count, read)))
            .collect();
        let mut dropped = 0;
        for task in tasks {
            dropped += task.await.expect("a subscriber");
        }
        dropped
    });
    println!("DROPPED {dropped}");
}

/// Commits `count` notifications on `channel`, 1000 per transaction, from a
/// thread of its own, and waits until they are all committed.
fn publish(url: &str, channel: &str, count: u64) {
    let (url, channel) = (url.to_string(), channel.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("publisher connect");
            tokio::spawn(connection);
            crate::publish_bulk(&client, &channel, count as i64, 1_000).await;
        });
    })
    .join()
    .expect("the publisher");
}
